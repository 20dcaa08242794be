"""Stage 3 entry point: distil the student from the soft labels, train the hard-label baseline,
check the quality gate, export.

The student learns the teacher's posterior predictive over the whole transfer set (training
inputs, their perturbed copies, uniform points, unlabeled rows) and, through a second head, the
teacher's mutual information, so one deterministic pass returns both.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as tfk

from distill import data as data_lib
from distill import metrics, schema
from distill.errors import BdkError, atomic_dir, read_json, write_json
from distill.training import fit, minibatches
from student.config import StudentConfig
from student.export import StudentModule
from student.losses import distillation_loss, epistemic_loss, hard_cross_entropy
from student.model import build_student
from student.tflite import export_tflite


class GateFailed(BdkError):
    """The student is worse calibrated than the teacher by more than the configured margin."""


def _validator(model, x_val: np.ndarray, y_val: np.ndarray):
    def validate() -> dict[str, float]:
        probs = tf.nn.softmax(model(x_val, training=False)["logits"]).numpy()
        return {"val_nll": metrics.nll(probs, y_val), "val_accuracy": metrics.accuracy(probs, y_val)}

    return validate


def _train_distilled(cfg: StudentConfig, ds: data_lib.Dataset, x, teacher_probs, labels, mi_target, progress: bool):
    model = build_student(ds.num_features, ds.num_classes, cfg.hidden)
    optimizer = tfk.optimizers.Adam(cfg.learning_rate)
    w_epi = tf.constant(cfg.epistemic_weight, tf.float32)

    @tf.function
    def step(xb, qb, yb, mb):
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            soft = distillation_loss(qb, yb, out["logits"], cfg.temperature, cfg.alpha)
            epi = epistemic_loss(mb, out["epistemic"])
            loss = soft + w_epi * epi
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return soft, epi

    def train_epoch(rng):
        softs, epis = [], []
        for idx in minibatches(len(x), cfg.batch_size, rng):
            soft, epi = step(x[idx], teacher_probs[idx], labels[idx], mi_target[idx])
            softs.append(float(soft)), epis.append(float(epi))
        return {"distill_loss": float(np.mean(softs)), "epistemic_loss": float(np.mean(epis))}

    result = fit(model, train_epoch, _validator(model, ds.scaled("val"), ds["val"].y), "val_nll",
                 cfg.epochs, cfg.patience, cfg.seed, "student", progress)
    return model, result


def _train_baseline(cfg: StudentConfig, ds: data_lib.Dataset, progress: bool):
    """The same architecture on the train split's hard labels only: what you get without a teacher."""
    model = build_student(ds.num_features, ds.num_classes, cfg.hidden, name="baseline")
    optimizer = tfk.optimizers.Adam(cfg.learning_rate)
    x, y = ds.scaled("train"), ds["train"].y

    variables = [v for v in model.trainable_variables if "epistemic" not in v.name]  # no head to train

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = hard_cross_entropy(yb, model(xb, training=True)["logits"])
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def train_epoch(rng):
        losses = [float(step(x[idx], y[idx])) for idx in minibatches(len(x), cfg.baseline_batch_size, rng)]
        return {"train_nll": float(np.mean(losses))}

    result = fit(model, train_epoch, _validator(model, ds.scaled("val"), ds["val"].y), "val_nll",
                 cfg.baseline_epochs, cfg.patience, cfg.seed, "baseline", progress)
    return model, result


def check_gate(cfg: StudentConfig, student: dict, teacher: dict, split: str = "val") -> list[str]:
    """Reasons the student fails the gate (empty when it passes)."""
    failures = []
    for name, margin in (("nll", cfg.gate_nll_margin), ("ece", cfg.gate_ece_margin)):
        s, t = student[f"{split}/{name}"], teacher[f"{split}/{name}"]
        if s > t + margin:
            failures.append(f"{split} {name.upper()} {s:.4f} > teacher {t:.4f} + margin {margin}")
    return failures


def distil_student(cfg: StudentConfig, run: Path, progress: bool = True) -> dict:
    """Train student and baseline, gate, export into RUN/student atomically. Returns the summary.

    Raises GateFailed (after writing RUN/student with the student under `rejected/`) when the
    student's validation NLL or ECE is worse than the teacher's by more than the margins.
    """
    from distill.transfer import read_soft_labels, soft_labels_digest

    run = Path(run)
    ds = data_lib.load_from_run(run)
    if not (schema.teacher_dir(run) / "metrics.json").exists():
        raise BdkError(f"{run} has no teacher; run `bdk teacher --out {run}` first")
    soft, manifest = read_soft_labels(run)
    tfk.utils.set_random_seed(cfg.seed)

    x = ds.scaler.transform(soft[ds.feature_names].to_numpy(np.float32))  # [N, F]
    teacher_probs = np.stack(soft["probs"].to_numpy()).astype(np.float32)  # [N, C]
    labels = soft["label"].to_numpy(np.int64)  # [N], -1 where none
    mi = soft["mutual_information"].to_numpy(np.float32)  # [N]
    mi_scale = float(mi.std()) or 1.0  # the head learns MI / mi_scale; the export multiplies back
    mi_target = (mi / mi_scale).astype(np.float32)

    t0 = time.perf_counter()
    model, result = _train_distilled(cfg, ds, x, teacher_probs, labels, mi_target, progress)
    student_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline, baseline_result = _train_baseline(cfg, ds, progress)
    baseline_seconds = time.perf_counter() - t0

    student_module = StudentModule(model, ds.scaler.minimum, ds.scaler.scale, mi_scale)
    baseline_module = StudentModule(baseline, ds.scaler.minimum, ds.scaler.scale, 0.0)  # no epistemic estimate
    val = {}
    for name, module in (("student", student_module), ("baseline", baseline_module)):
        probs = module.serve(tf.constant(ds["val"].x))["probs"].numpy()
        val[name] = metrics.classification_metrics(probs, ds["val"].y, "val")
    teacher_metrics = read_json(schema.teacher_dir(run) / "metrics.json")
    failures = check_gate(cfg, val["student"], teacher_metrics)

    summary = {
        "rows": len(soft), "rows_per_source": soft["source"].value_counts().to_dict(),
        "epochs_run": len(result.history), "best_epoch": result.best_epoch, "train_seconds": student_seconds,
        "baseline_epochs_run": len(baseline_result.history), "baseline_train_seconds": baseline_seconds,
        "mi_scale": mi_scale, "gate": {"passed": not failures, "failures": failures, "split": "val",
                                       "teacher": {k: teacher_metrics[k] for k in ("val/nll", "val/ece")}},
        **{f"student/{k}": v for k, v in val["student"].items()},
        **{f"baseline/{k}": v for k, v in val["baseline"].items()},
    }
    # A passing student replaces RUN/student whole; a failing one goes to RUN/student/rejected only,
    # so a failed retrain never unpublishes the student that is already deployed.
    target = schema.student_dir(run) / "rejected" if failures else schema.student_dir(run)
    with atomic_dir(target, overwrite=True) as tmp:
        write_json(tmp / "config.json", {"student": asdict(cfg), "soft_labels_manifest": soft_labels_digest(run),
                                         "teacher_fingerprint": manifest.get("teacher_fingerprint"), "mi_scale": mi_scale})
        result.history.to_csv(tmp / "history.csv", index=False)
        baseline_result.history.to_csv(tmp / "baseline_history.csv", index=False)
        student_module.save(tmp / "export" / schema.EXPORT_VERSION)
        baseline_module.save(tmp / "baseline" / "export" / schema.EXPORT_VERSION)
        if not failures:
            summary["tflite_bytes"] = export_tflite(tmp / "export" / schema.EXPORT_VERSION, tmp / "student.tflite")
        write_json(tmp / "metrics.json", summary)
    if failures:
        raise GateFailed("student failed the quality gate (" + "; ".join(failures) + f"); it was saved under {target} "
                         "and not published: retrain with more epochs or a larger --hidden, or raise the margins")
    return summary


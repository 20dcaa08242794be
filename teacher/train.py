"""Stage 1 entry point: train the teacher, evaluate it by Monte Carlo, export it.

The default family is the Flipout BNN (Bayes by Backprop); a deep ensemble and MC dropout sit
behind the same export signature, so the soft-label job and the student run unchanged on each.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as tfk

from distill import data as data_lib
from distill import metrics, schema
from distill.errors import atomic_dir, write_json
from distill.training import fit, minibatches
from teacher.export import ensemble_module, flipout_module, mc_dropout_module
from teacher.config import TeacherConfig
from teacher.model import build_flipout, build_mlp


def training_device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return "/GPU:0" if gpus else "/CPU:0"


def _prediction_frame(split: data_lib.Split, summary: dict[str, np.ndarray], class_names: list[str]) -> pd.DataFrame:
    df = pd.DataFrame({"id": split.ids, "true_class": [class_names[i] for i in split.y],
                       "predicted_class": [class_names[i] for i in summary["probs"].argmax(-1)]})
    for c, name in enumerate(class_names):
        df[f"prob_{name}"] = summary["probs"][:, c]
    for c, name in enumerate(class_names):
        df[f"variance_{name}"] = summary["variance"][:, c]
    for key in ("entropy", "expected_entropy", "mutual_information"):
        df[key] = summary[key]
    return df


def _fit_member(cfg: TeacherConfig, model, module, ds: data_lib.Dataset, val_samples: int, progress: bool, desc: str,
                seed: int):
    """Minibatch training on NLL + sum(model.losses) (the scaled KL for Flipout, L2 otherwise),
    early-stopped on the validation NLL of the module's Monte Carlo predictive."""
    x_train, y_train = ds.scaled("train"), ds["train"].y
    x_val, y_val = ds.scaled("val"), ds["val"].y
    n = len(y_train)
    optimizer = tfk.optimizers.Adam(cfg.learning_rate)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)  # [batch, C], one weight draw / dropout mask
            nll = tf.reduce_mean(tfk.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            kl = tf.add_n(model.losses) if model.losses else tf.constant(0.0)  # kl_weight * KL / N_train
            loss = nll + kl
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return nll, kl

    def train_epoch(rng):
        nlls, kls, sizes = [], [], []
        for idx in minibatches(n, cfg.batch_size, rng):
            nll, kl = step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
            nlls.append(float(nll)), kls.append(float(kl)), sizes.append(len(idx))
        train_nll, kl = np.average(nlls, weights=sizes), float(np.mean(kls))
        return {"train_nll": train_nll, "kl": kl, "elbo": -(train_nll + kl)}

    def validate():
        s = {k: v.numpy() for k, v in module.predictive_scaled(tf.constant(x_val), val_samples).items()}
        return {"val_nll": metrics.nll(s["probs"], y_val), "val_accuracy": metrics.accuracy(s["probs"], y_val),
                "val_entropy": float(s["entropy"].mean()), "val_mutual_information": float(s["mutual_information"].mean())}

    return fit(model, train_epoch, validate, "val_nll", cfg.epochs, cfg.patience, seed, desc, progress)


def build_teacher(cfg: TeacherConfig, ds: data_lib.Dataset, progress: bool = True):
    """Train the configured family; returns (Monte Carlo module, history, best epoch)."""
    args = (ds.scaler.minimum, ds.scaler.scale, ds.num_classes, cfg.serving_samples)
    if cfg.kind == "ensemble":
        members, histories, best = [], [], []
        for m in range(cfg.members):
            tfk.utils.set_random_seed(cfg.seed + m)  # independent initialisation and batch order
            model = build_mlp(ds.num_features, ds.num_classes, cfg.hidden, 0.0, cfg.weight_decay, name=f"member_{m}")
            result = _fit_member(cfg, model, ensemble_module([model], *args), ds, 1, progress, f"member {m + 1}/{cfg.members}",
                                 cfg.seed + m)
            members.append(model), best.append(result.best_epoch)
            histories.append(result.history.assign(member=m))
        return ensemble_module(members, *args), pd.concat(histories, ignore_index=True), best
    if cfg.kind == "mc-dropout":
        model = build_mlp(ds.num_features, ds.num_classes, cfg.hidden, cfg.dropout, cfg.weight_decay, name="mc_dropout_teacher")
        module = mc_dropout_module(model, *args)
    else:
        model = build_flipout(ds.num_features, ds.num_classes, len(ds["train"]), cfg.hidden, cfg.kl_weight,
                              cfg.posterior, cfg.prior)
        module = flipout_module(model, *args)
    result = _fit_member(cfg, model, module, ds, cfg.val_samples, progress, f"teacher ({cfg.kind})", cfg.seed)
    return module, result.history, result.best_epoch


def train_teacher(cfg: TeacherConfig, ds: data_lib.Dataset, run: Path, progress: bool = True) -> dict:
    """Train, evaluate and export; write RUN/teacher atomically. Returns the metrics summary."""
    tfk.utils.set_random_seed(cfg.seed)
    device = training_device()
    n = len(ds["train"])
    with tf.device(device):
        t0 = time.perf_counter()
        module, history, best_epoch = build_teacher(cfg, ds, progress)
        train_seconds = time.perf_counter() - t0
        summaries = {}
        for split in data_lib.SPLITS:
            out = module.predictive_scaled(tf.constant(ds.scaled(split)), cfg.eval_samples)
            summaries[split] = {k: v.numpy() for k, v in out.items()}

    summary: dict = {"kind": cfg.kind, "device": device, "epochs_run": len(history), "best_epoch": best_epoch,
                     "train_seconds": train_seconds, "eval_samples": cfg.eval_samples}
    for split in ("val", "test"):
        summary.update(metrics.classification_metrics(summaries[split]["probs"], ds[split].y, split))
        summary[f"{split}/mean_entropy"] = float(summaries[split]["entropy"].mean())
        summary[f"{split}/mean_mutual_information"] = float(summaries[split]["mutual_information"].mean())
    all_probs = np.concatenate([summaries[s]["probs"] for s in data_lib.SPLITS])
    all_mi = np.concatenate([summaries[s]["mutual_information"] for s in data_lib.SPLITS])
    a, b, share = metrics.most_uncertain_pair(all_probs, all_mi, ds.class_names)
    summary["most_uncertain_pair"] = [a, b]
    summary["most_uncertain_pair_share"] = share

    teacher_dir = schema.teacher_dir(run)
    with atomic_dir(teacher_dir, overwrite=True) as tmp:
        write_json(tmp / "config.json", {"teacher": asdict(cfg), "n_train": n, "num_features": ds.num_features,
                                         "num_classes": ds.num_classes, "device": device})
        history.to_csv(tmp / "history.csv", index=False)
        for split in ("val", "test"):
            _prediction_frame(ds[split], summaries[split], ds.class_names).to_csv(tmp / f"{split}_predictions.csv", index=False)
        tf.train.Checkpoint(models=module.models).write(str(tmp / "weights" / "ckpt"))
        module.save(tmp / "export" / schema.EXPORT_VERSION)
        write_json(tmp / "metrics.json", summary)
    return summary

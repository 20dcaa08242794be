"""Stage 3 entry point: distil the student from the soft labels, train the hard-label baseline,
check the quality gate, export.

The student learns the teacher's posterior predictive over the whole transfer set (training
inputs, perturbed copies, interpolations, the widened box, the far shell, unlabeled rows) by the
task's cross-entropy from the teacher's predictive to the student's distribution, and the teacher's
epistemic uncertainty through a second head (student.uncertainty): for classes by default the epistemic share of the
teacher's entropy, or a Dirichlet's precision over its class probabilities (student.dirichlet), or the teacher's score
itself (or its log or square root).
Early stopping (and the optional width/depth search) use the same loss on a held-out slice of the
transfer set, so the student is chosen by how well it reproduces the teacher where it will be queried.
"""
from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as tfk

from distill import data as data_lib
from distill import schema, tasks
from distill.features import encoding_spec
from distill.errors import BdkError, atomic_dir, read_json, write_csv, write_json
from distill.validate import check_finite_metrics
from distill.training import CHUNK_ROWS, epochs_for_steps, fit, host_tensor, in_chunks, scaled_batch, steps_per_epoch
from student.config import StudentConfig
from student.export import StudentModule
from student.model import build_sequence_student, build_student
from student.rows import InMemoryRows, TransferRows
from student.uncertainty import HEADS
from student.tflite import TFLITE_INPUT, export_tflite


class GateFailed(BdkError):
    """The student is worse calibrated than the teacher by more than the configured margin."""


@dataclass(frozen=True)
class Schedule:
    """A training budget sized to its rows: batch, epochs (cap), patience (epochs), the first epoch early stopping may
    end, and the cosine-decayed rate."""
    batch_size: int
    epochs: int
    patience: int
    learning_rate: float
    stop_from: int = 0

    @classmethod
    def for_rows(cls, n: int, cfg: StudentConfig, learning_rate: float, base_batch: int | None = None,
                 rows_per_step: int | None = None, max_epochs: int | None = None,
                 min_epochs_rows: int | None = None) -> "Schedule":
        """At least cfg.steps steps and cfg.min_epochs epochs (or the epochs that see `min_epochs_rows` rows, if
        fewer), at most `max_epochs` (cfg.epochs); patience cfg.patience_steps in steps (at least 3 epochs); early
        stopping may end training from cfg.stop_from of the epochs on."""
        batch = scaled_batch(base_batch or cfg.batch_size, n, rows_per_step or cfg.rows_per_step)
        per_epoch = steps_per_epoch(n, batch)
        patient = min(cfg.min_epochs, -(-min_epochs_rows // max(n, 1))) if min_epochs_rows else cfg.min_epochs
        epochs = min(max_epochs or cfg.epochs, max(patient, epochs_for_steps(n, batch, cfg.steps)))
        return cls(batch, epochs, max(3, -(-cfg.patience_steps // per_epoch)), learning_rate,
                   int(np.ceil(cfg.stop_from * epochs)))

    def optimizer(self, per_epoch: int):
        """Adam whose rate follows a cosine from `learning_rate` to 5% of it over the whole budget (`per_epoch` steps
        an epoch)."""
        total = self.epochs * per_epoch
        return tfk.optimizers.Adam(tfk.optimizers.schedules.CosineDecay(self.learning_rate, total, alpha=0.05))

    def describe(self, n: int) -> str:
        return f"{self.epochs} epochs of {steps_per_epoch(n, self.batch_size)} steps at batch {self.batch_size}"


def _fit(cfg: StudentConfig, task: tasks.Task, model, loss_fn, rows, ds: data_lib.Dataset,
         held_out: tuple | None, schedule: Schedule, desc: str, progress: bool, variables=None):
    """Minibatch training of `loss_fn(out, *batch columns)` (a batch mean) over `rows` (student.rows: TransferRows or
    InMemoryRows of (x, *columns)), early-stopped on its value over the held-out rows `held_out` = (x, *columns) when
    given, else on the validation rows' NLL of their true labels."""
    optimizer = schedule.optimizer(rows.steps_per_epoch(schedule.batch_size))
    batch_size = schedule.batch_size
    variables = variables or model.trainable_variables
    x_val, y_val = ds.scaled("val"), ds.target("val")

    def step(xb, *batch):
        with tf.GradientTape() as tape:
            loss = loss_fn(model(xb, training=True), *batch)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    held_out_loss = tf.function(lambda xb, *batch: loss_fn(model(xb, training=False), *batch), autograph=False)
    # one graph call per chunk (an eager Keras call costs ~8 ms here); chunks, because a pass over 160k validation rows
    # at once left ~0.2 GB of buffers behind (a million-row table), and a pass over 16k rows did not
    val_outputs = tf.function(lambda x: task.point_outputs(task.draw_params(model(x, training=False)["head"])),
                              input_signature=[tf.TensorSpec([None, *x_val.shape[1:]], tf.float32)], autograph=False)

    run_epoch = rows.epoch_function(step, batch_size, variables, optimizer)
    held_chunks = [tuple(host_tensor(c[i:i + CHUNK_ROWS]) for c in held_out)
                   for i in range(0, len(held_out[0]), CHUNK_ROWS)] if held_out is not None else []

    def train_epoch(rng):
        return {"train_loss": float(run_epoch(rng)[:, 0].mean())}

    def validate():
        pred = in_chunks(val_outputs, x_val)  # normalised units
        logs = {f"val_{k.split('/')[1]}": v for k, v in task.metrics(y_val, pred, "val").items()}
        if held_out is not None:  # the batch-mean loss of each chunk, weighted by its rows
            logs["held_out_loss"] = float(sum(float(held_out_loss(*c)) * len(c[0]) for c in held_chunks) / len(held_out[0]))
        return logs

    monitor = "held_out_loss" if held_out is not None else "val_nll"
    return fit(model, train_epoch, validate, monitor, schedule.epochs, schedule.patience, cfg.seed, desc, progress,
               stop_from=schedule.stop_from)


def student_parameters(num_features: int, units: int, hidden: tuple[int, ...]) -> int:
    """Parameters of build_student's network: dense layers, the head and the one-unit epistemic head."""
    widths = [num_features, *hidden]
    return sum((a + 1) * b for a, b in zip(widths, widths[1:])) + (widths[-1] + 1) * (units + 1)


def dense_flops(widths) -> int:
    """Multiply-adds per row of a chain of dense layers of these widths (input first, output last), times 2."""
    widths = list(widths)
    return 2 * sum(a * b for a, b in zip(widths, widths[1:]))


def student_flops(num_features: int, units: int, hidden: tuple[int, ...], epistemic: bool = True) -> int:
    """FLOPs per row of build_student's network: hidden layers, the head and (`epistemic`) the one-unit epistemic
    head. Without it, the network that reproduces the predictive: the teacher's widths cost exactly one draw."""
    return dense_flops([num_features, *hidden]) + dense_flops([hidden[-1], units + int(epistemic)])


def teacher_draw_flops(hidden, num_features: int, units: int) -> int | None:
    """FLOPs per row of ONE weight draw of a dense teacher of these hidden widths, None without widths."""
    return dense_flops([num_features, *hidden, units]) if hidden else None


def _best(result) -> float:
    return float(result.history["held_out_loss"].iloc[result.best_epoch - 1])


def check_gate(cfg: StudentConfig, student: dict, teacher: dict, split: str = "val") -> list[str]:
    """Reasons the student fails the gate (empty when it passes)."""
    failures = []
    for name, margin in (("nll", cfg.gate_nll_margin), ("ece", cfg.gate_ece_margin)):
        key = f"{split}/{name}"
        if key in student and key in teacher and student[key] > teacher[key] + margin:
            failures.append(f"{split} {name.upper()} {student[key]:.4f} > teacher {teacher[key]:.4f} + margin {margin}")
    return failures


@dataclass
class _Trained:
    """One network's training: the model, its fit and wall time (and the student's width search and schedule)."""
    model: tfk.Model
    result: object  # distill.training.FitResult
    seconds: float
    schedule: Schedule
    search: dict = field(default_factory=dict)  # widths -> best held-out loss (the student's --hidden-search)


def distil_student(cfg: StudentConfig, run: Path, progress: bool = True) -> dict:
    """Train student and baseline, gate, export into RUN/student atomically. Returns the summary.

    Raises GateFailed (after writing RUN/student with the student under `rejected/`) when the gate is
    on and the student's validation NLL (or, for classes, ECE) is worse than the teacher's by more than
    the margins.
    """
    from distill.transfer import soft_label_shards

    run = Path(run)
    ds = data_lib.load_from_run(run, ("val", "test"))  # the baseline reads the train split when it trains
    task = tasks.get(ds.task)
    if not (schema.teacher_dir(run) / "metrics.json").exists():
        raise BdkError(f"{run} has no teacher; run `bdk teacher --out {run}` first")
    teacher_hidden = read_json(schema.teacher_dir(run) / "config.json").get("teacher", {}).get("hidden")
    cfg = cfg.resolved(ds.task, ds.inputs.kind, teacher_hidden)
    shards, manifest, _, _ = soft_label_shards(run)
    tfk.utils.set_random_seed(cfg.seed)
    units = task.head_units(ds.num_classes)
    dense = ds.inputs.dense_features  # [F] for a dense student; None: networks whose cost is not counted
    draw_flops = dense and teacher_draw_flops(teacher_hidden, dense, units)

    with _scratch(run) as scratch:
        rows = _stream_rows(cfg, run, ds, task, shards, manifest, scratch)
        student, cfg = _train_student(cfg, ds, task, rows, draw_flops, progress)
    notes = [student.result.cap_note("the student", student.schedule.describe(rows.fit_rows))]
    n_held = rows.release_held_out()
    baseline, n_train = _train_baseline(cfg, run, ds, task, progress)  # after the student: the same random stream
    notes.append(baseline.result.cap_note("the baseline", baseline.schedule.describe(n_train)))
    notes = [n for n in notes if n]
    for note in notes:
        print(note, file=sys.stderr)

    modules = _modules(cfg, ds, task, student.model, baseline.model, rows.epistemic_shift, rows.epistemic_scale,
                       input_bounds(run, ds, _transfer_config(run)))
    val, test_pred = _score(modules, ds, task)
    teacher_metrics = read_json(schema.teacher_dir(run) / "metrics.json")
    check_finite_metrics(val["student"], "student")  # a NaN student is never published, gate on or off
    failures = check_gate(cfg, val["student"], teacher_metrics) if cfg.gate else []
    summary = {
        "task": ds.task, "rows": rows.fit_rows + n_held, "rows_per_source": manifest["rows_per_source"],
        "epochs_run": len(student.result.history), "best_epoch": student.result.best_epoch,
        "train_seconds": student.seconds, "schedule": asdict(student.schedule),
        "stopped_by": "early stopping" if student.result.stopped_early else "budget",
        "improving_at_cap": student.result.improving_at_cap,
        "baseline_improving_at_cap": baseline.result.improving_at_cap,
        "warnings": notes, "parameters": dense and student_parameters(dense, units, cfg.hidden),
        "flops_per_row": dense and student_flops(dense, units, cfg.hidden),
        "teacher_draw_flops_per_row": draw_flops,
        "monitor": cfg.monitor, "held_out_rows": n_held, "hidden": list(cfg.hidden),
        **({"hidden_search": student.search} if student.search else {}), "uncertainty": cfg.uncertainty,
        "epistemic_shift": rows.epistemic_shift, "baseline_epochs_run": len(baseline.result.history),
        "baseline_train_seconds": baseline.seconds, "epistemic_scale": rows.epistemic_scale,
        "gate": {"on": cfg.gate, "passed": not failures, "failures": failures, "split": "val",
                 "teacher": {k: teacher_metrics[k] for k in ("val/nll", "val/ece") if k in teacher_metrics}},
        **{f"student/{k}": v for k, v in val["student"].items()},
        **{f"baseline/{k}": v for k, v in val["baseline"].items()},
    }
    _publish(cfg, run, ds, manifest, student, baseline, modules, test_pred, summary, failures)
    return summary


def _scratch(run: Path) -> tempfile.TemporaryDirectory:
    """The student's bucket files under RUN/.student-rows-*, removed on exit; a killed student's are removed first
    (this stage holds the run's student lock)."""
    for stale in run.glob(".student-rows-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=".student-rows-", dir=run)


def _stream_rows(cfg: StudentConfig, run: Path, ds, task, shards, manifest, scratch: str) -> TransferRows:
    """The soft labels shard by shard into bucket files (student.rows: no array of the whole transfer set in memory):
    the fitted rows and the held-out slice, each (x [n, F] normalised, targets [n, K] normalised, labels [n]
    (classes: -1 where none), score [n])."""
    from distill.transfer import encoded_inputs, feature_fields, shard_arrays

    inputs = [f.name for f in feature_fields(ds.feature_names, ds.feature_spec)]  # raw columns of a table that encodes

    def row_arrays(table):
        outputs = shard_arrays(table, task, ds.num_classes)
        x = ds.normalise(encoded_inputs(table.select(inputs).to_pandas(), ds))  # [n, *input_shape]
        targets = task.soft_targets(outputs, ds.target_shift, ds.target_scale)  # [n, K]
        score = HEADS[cfg.uncertainty].scores(outputs, task, ds.num_classes)  # [n] what the epistemic head regresses
        return x, targets, table.column("label").to_numpy(zero_copy_only=False), score

    rows = TransferRows.write(shards, row_arrays, int(manifest.get("rows") or 0),
                              cfg.holdout if cfg.monitor == "transfer" else None, Path(scratch),
                              ds.input_shape,
                              task.soft_target_width(ds.num_classes), task.label_dtype(),
                              center_scores=HEADS[cfg.uncertainty].center_scores, seed=cfg.seed)
    if not rows.fit_rows:
        raise BdkError(f"the soft labels of {run} have no rows; rerun `bdk soft-labels --run {run}` with a transfer set")
    return rows


def _network(cfg: StudentConfig, ds, task, hidden, **kwargs) -> tfk.Model:
    """The student's network (or the baseline's: the same architecture) for these hidden widths and the inputs."""
    return NETWORKS[ds.inputs.kind](cfg, ds.input_shape[-1], task.head_units(ds.num_classes), hidden, **kwargs)


NETWORKS = {  # per kind of input (distill.inputs): (cfg, the last input axis F or C, head units, hidden) -> model
    "table": lambda cfg, f, units, hidden, **kw: build_student(f, units, hidden,
                                                             epistemic_body_gradient=cfg.epistemic_body_gradient, **kw),
    "sequence": lambda cfg, c, units, hidden, **kw: build_sequence_student(c, units, hidden, cfg.sequence_net, **kw),
}


def _train_student(cfg: StudentConfig, ds, task, rows: TransferRows, draw_flops, progress: bool
                   ) -> tuple[_Trained, StudentConfig]:
    """The student at cfg.hidden, then (cfg.hidden_search, with a held-out slice) every other width under the FLOPs
    budget, kept when its held-out transfer loss is lower. Returns the best and the config with its widths."""
    w_epi = tf.constant(cfg.epistemic_weight, tf.float32)
    held_out = rows.held_out if rows.held_out and len(rows.held_out[0]) else None

    def student_loss(out, q, y, e):
        return (task.distill_loss(q, out["head"], y, cfg.temperature, cfg.alpha)
                + w_epi * tf.reduce_mean(tf.square(e - out["epistemic"])))

    schedule = Schedule.for_rows(rows.fit_rows, cfg, cfg.learning_rate, min_epochs_rows=cfg.min_epochs_rows)

    def train(hidden):
        tfk.utils.set_random_seed(cfg.seed)
        model = _network(cfg, ds, task, hidden, epistemic_activation=HEADS[cfg.uncertainty].activation)
        return model, _fit(cfg, task, model, student_loss, rows, ds, held_out, schedule,
                           f"student {','.join(map(str, hidden))}", progress)

    t0 = time.perf_counter()
    search = {}
    model, result = train(cfg.hidden)
    if cfg.hidden_search and held_out is not None:  # widths/depths compared on the held-out transfer loss
        units = task.head_units(ds.num_classes)
        budget = cfg.max_flops_share * draw_flops if draw_flops else np.inf
        search[",".join(map(str, cfg.hidden))] = _best(result)
        for hidden in cfg.hidden_search:
            if tuple(hidden) == tuple(cfg.hidden) or student_flops(ds.num_features, units, hidden, epistemic=False) > budget:
                continue
            candidate = train(tuple(hidden))
            search[",".join(map(str, hidden))] = _best(candidate[1])
            if _best(candidate[1]) < _best(result):
                (model, result), cfg = candidate, replace(cfg, hidden=tuple(hidden))
    return _Trained(model, result, time.perf_counter() - t0, schedule, search), cfg


def _train_baseline(cfg: StudentConfig, run: Path, ds, task, progress: bool) -> tuple[_Trained, int]:
    """The same architecture on the train split's hard labels only: what you get without a teacher. Returns it and
    the train split's rows."""
    gc.collect()  # first, the student's training tensors (its last block, validation rows): graph reference cycles
    baseline = _network(cfg, ds, task, cfg.hidden, name="baseline")
    rows = InMemoryRows(_train_rows(run))
    # its own recipe: early stopping on the validation NLL of the labels it fits, from any epoch (cfg.stop_from is the
    # student's; a hard-label network does overfit)
    schedule = replace(Schedule.for_rows(rows.fit_rows, cfg, cfg.baseline_learning_rate, cfg.baseline_batch_size,
                                         rows_per_step=200, max_epochs=cfg.baseline_epochs), stop_from=0)
    t0 = time.perf_counter()
    result = _fit(cfg, task, baseline, lambda out, y: -tf.reduce_mean(task.log_likelihood(y, out["head"])),
                  rows, ds, None, schedule, "baseline", progress,
                  variables=[v for v in baseline.trainable_variables if "epistemic" not in v.name])
    return _Trained(baseline, result, time.perf_counter() - t0, schedule), rows.fit_rows


def _train_rows(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The train split's normalised inputs [n, *input_shape] and targets [n]: the rows read from the run are
    normalised in place (one copy of the split in memory, aligned: the training tensor shares it)."""
    train = data_lib.load_from_run(run, ("train",))
    x = train.raw("train")
    return train.scaler.transform(x, out=x), train.target("train")


def _transfer_config(run: Path) -> dict:
    """The TransferConfig the run's soft labels were made with (soft_labels/config.json), as a dict ({} if none)."""
    path = schema.soft_labels_dir(run) / "config.json"
    if not path.exists():
        return {}
    return read_json(path).get("soft_labels", {}).get("transfer") or {}


def input_bounds(run: Path, ds, transfer: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Tables whose transfer set has a far shell: the normalised box it reached, (low [F], high [F]) = the train box
    widened by `shell_outer` box widths on each side (features constant in training are left unbounded). The student's
    export clamps its inputs to it (StudentModule): beyond it the student never saw the teacher, and its ReLU network
    extrapolates linearly (the Iris student a hundred box widths out: entropy 0.003, far-away AUROC 0.37; the teacher's
    draws still disagree there). Inside it nothing changes. None: sequences, or no shell."""
    if not ds.inputs.dense_features or not transfer.get("shell"):
        return None
    lo, hi = data_lib.train_box(run, ds)  # [F] each
    width = hi - lo
    reach = np.where(width > 0, float(transfer["shell_outer"]) * width, np.finfo(np.float32).max / 4)
    return lo - reach, hi + reach


def _modules(cfg: StudentConfig, ds, task, student: tfk.Model, baseline: tfk.Model, epistemic_shift: float,
             epistemic_scale: float, bounds: tuple | None = None) -> dict[str, StudentModule]:
    """The student and baseline SavedModel modules (raw features in; the baseline has no epistemic estimate; the
    student's inputs clamped to `bounds`, input_bounds)."""
    units_args = (ds.scaler.shift, ds.scaler.scale, ds.target_shift, ds.target_scale)
    shape = ds.inputs.signature_shape  # sequences of any length
    return {"student": StudentModule(task, student, *units_args, epistemic_scale=epistemic_scale,
                                     epistemic_shift=epistemic_shift, uncertainty=cfg.uncertainty, input_shape=shape,
                                     feature_spec=ds.feature_spec, input_bounds=bounds),
            "baseline": StudentModule(task, baseline, *units_args, epistemic_scale=0.0, input_shape=shape,
                                      feature_spec=ds.feature_spec)}


def _score(modules: dict[str, StudentModule], ds, task) -> tuple[dict, dict]:
    """Validation and test metrics of each module (the gate reads val), and the student's test outputs."""
    val, test_pred = {}, None
    for name, module in modules.items():
        val[name] = {}
        for split in ("val", "test"):
            pred = in_chunks(module.serve, ds.raw(split))  # a million rows' activations at once: ~0.4 GB
            val[name].update(task.metrics(ds[split].y, pred, split))
            if name == "student" and split == "test":
                test_pred = pred
    return val, test_pred


def _publish(cfg: StudentConfig, run: Path, ds, manifest: dict, student: _Trained, baseline: _Trained,
             modules: dict[str, StudentModule], test_pred: dict, summary: dict, failures: list[str]) -> None:
    """Write RUN/student whole (a passing student) or RUN/student/rejected (a failing one, then GateFailed), so a
    failed retrain never unpublishes the student that is already deployed."""
    from distill.transfer import soft_labels_digest

    target = schema.student_dir(run) / "rejected" if failures else schema.student_dir(run)
    with atomic_dir(target, overwrite=True) as tmp:
        write_json(tmp / "config.json", {"student": asdict(cfg), "task": ds.task, "soft_labels_manifest": soft_labels_digest(run),
                                         "teacher_fingerprint": manifest.get("teacher_fingerprint"),
                                         "epistemic_scale": summary["epistemic_scale"]})
        student.result.history.to_csv(tmp / "history.csv", index=False)
        write_csv(schema.prediction_frame(ds, "test", test_pred), tmp / "test_predictions.csv")
        baseline.result.history.to_csv(tmp / "baseline_history.csv", index=False)
        modules["student"].save(tmp / "export" / schema.EXPORT_VERSION)
        modules["baseline"].save(tmp / "baseline" / "export" / schema.EXPORT_VERSION)
        # A recurrent student of any sequence length has dynamic TensorList ops that TFLite's builtins cannot lower.
        recurrent = any(isinstance(layer, tfk.layers.RNN) for layer in student.model.layers)
        if recurrent and cfg.tflite:
            summary["tflite"] = "skipped: the GRU student takes sequences of any length, which TFLite cannot lower"
        if not failures and cfg.tflite and not recurrent:
            summary["tflite_bytes"] = export_tflite(tmp / "export" / schema.EXPORT_VERSION, tmp / "student.tflite")
            if encoding_spec(ds.feature_spec) is not None:
                summary["tflite_input"] = TFLITE_INPUT
        write_json(tmp / "metrics.json", summary)
    if failures:
        raise GateFailed("student failed the quality gate (" + "; ".join(failures) + f"); it was saved under {target} "
                         "and not published: retrain with more epochs or a larger --hidden, or raise the margins")

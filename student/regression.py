"""The regression student: one deterministic pass for a mean and a variance, distilled from the
teacher's Monte Carlo predictive (Bayesian dark knowledge, Korattikara et al. 2015, regression case).

The student outputs a mean and a log-variance and minimises the expected Gaussian NLL under the
teacher's predictive N(mu_t, var_t) on the transfer set (the soft labels of the Beam job). Its
variance therefore learns the teacher's total variance, epistemic part included, input by input.
The export takes raw features and answers in the target's units: `features` -> `mean`, `variance`.
"""
from __future__ import annotations

import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as tfk

from distill import metrics, schema
from distill.errors import atomic_dir, write_json
from distill.training import fit, minibatches
from distill.uci import RegressionDataset
from student.regression_config import RegressionStudentConfig
from teacher.export import Untracked


def gaussian_distillation_loss(teacher_mean: tf.Tensor, teacher_variance: tf.Tensor, student_mean: tf.Tensor,
                               student_log_variance: tf.Tensor) -> tf.Tensor:
    """Batch mean of 0.5 * [log s2 + (var_t + (mu_t - mu_s)^2) / s2], s2 = exp(student_log_variance).

    This is E_{y ~ N(mu_t, var_t)}[-log N(y; mu_s, s2)] without its constant 0.5 log(2 pi): the
    cross-entropy from the teacher's (moment-matched) predictive to the student's Gaussian, the
    regression counterpart of the classifier's soft cross-entropy. Minimised at mu_s = mu_t, s2 = var_t.
    """
    inverse = tf.exp(-student_log_variance)  # 1 / s2
    return tf.reduce_mean(0.5 * (student_log_variance + (teacher_variance + tf.square(teacher_mean - student_mean)) * inverse))


def build_regression_student(num_features: int, hidden: tuple[int, ...] = (50,), name: str = "regression_student") -> tfk.Model:
    """Normalised features [B, F] -> {"mean": [B], "log_variance": [B]} (normalised target units)."""
    x = inputs = tfk.Input(shape=(num_features,), name="features")
    for i, units in enumerate(hidden):
        x = tfk.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
    out = tfk.layers.Dense(2, name="head")(x)  # [B, 2]
    mean = tfk.layers.Lambda(lambda o: o[:, 0], name="mean")(out)
    log_variance = tfk.layers.Lambda(lambda o: o[:, 1], name="log_variance")(out)
    return tfk.Model(inputs, {"mean": mean, "log_variance": log_variance}, name=name)


class RegressionStudentModule(tf.Module):
    """Raw features [B, F] -> mean, variance [B] in the target's units; deterministic."""

    def __init__(self, model, x_mean, x_std, y_mean: float, y_std: float):
        super().__init__(name="regression_student")
        self._keras = Untracked(model)  # see teacher.export.Untracked: save the variables, skip Keras tracing
        self.model_variables = list(model.variables)
        self.x_mean = tf.constant(np.asarray(x_mean, np.float32))
        self.x_std = tf.constant(np.asarray(x_std, np.float32))
        self.y_mean = tf.constant(float(y_mean), tf.float32)
        self.y_std = tf.constant(float(y_std), tf.float32)
        f = int(self.x_mean.shape[0])
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None, f], tf.float32, name="features")])

    def _serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self._keras.value((features - self.x_mean) / self.x_std, training=False)
        return {"mean": out["mean"] * self.y_std + self.y_mean,
                "variance": tf.exp(out["log_variance"]) * tf.square(self.y_std)}

    def save(self, path: Path) -> Path:
        tf.saved_model.save(self, str(path), signatures={"serving_default": self.serve.get_concrete_function()})
        return Path(path)


def _soft_targets(ds: RegressionDataset, soft: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft-label rows -> normalised inputs [N, F], teacher means [N] and variances [N] (normalised units)."""
    x = ds.x_norm.transform(soft[ds.feature_names].to_numpy(np.float32))
    mean = ((soft["mean"].to_numpy(np.float64) - ds.y_mean) / ds.y_std).astype(np.float32)
    variance = (soft["variance"].to_numpy(np.float64) / ds.y_std ** 2).astype(np.float32)
    return x, mean, variance


def teacher_on_validation(ds: RegressionDataset, run: Path, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher export's predictive on the validation inputs (not in the transfer set), normalised
    units: what the student's early stopping compares it with."""
    export = tf.saved_model.load(str(schema.teacher_export(run)))
    out = export.signatures["predictive"](features=tf.constant(ds["val"].x), num_samples=tf.constant(num_samples, tf.int32))
    mean = ((out["mean"].numpy().astype(np.float64) - ds.y_mean) / ds.y_std).astype(np.float32)
    return mean, (out["variance"].numpy() / ds.y_std ** 2).astype(np.float32)


def distil_regression_student(cfg: RegressionStudentConfig, ds: RegressionDataset, run: Path, progress: bool = True) -> dict:
    """Distil from RUN/soft_labels (the Beam job's output); evaluate on the test split; write
    RUN/student atomically. Returns the metrics.

    Early stopping watches `cfg.monitor`: "teacher" (default) is the distillation loss against the
    teacher's predictive on the validation inputs, which are not in the transfer set: how well the
    student reproduces the teacher away from the rows it was fitted on. "labels" is the Gaussian NLL
    of the validation slice's true targets; with ~50 validation rows it picks noisy stopping epochs
    (on Boston its validation score beat the teacher's while its test score fell 0.08 nats behind).
    """
    from distill.transfer import read_soft_labels

    soft, manifest = read_soft_labels(run)
    x, teacher_mean, teacher_variance = _soft_targets(ds, soft)
    x_val, y_val = tf.constant(ds.x("val")), ds.y("val")
    val_mean, val_variance = teacher_on_validation(ds, run, int(manifest["num_samples"]))
    tfk.utils.set_random_seed(cfg.seed)
    model = build_regression_student(ds.num_features, cfg.hidden)
    optimizer = tfk.optimizers.Adam(cfg.learning_rate)

    @tf.function
    def step(xb, mb, vb):
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            loss = gaussian_distillation_loss(mb, vb, out["mean"], out["log_variance"])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    def train_epoch(rng):
        losses = [float(step(x[idx], teacher_mean[idx], teacher_variance[idx]))
                  for idx in minibatches(len(x), cfg.batch_size, rng)]
        return {"distill_loss": float(np.mean(losses))}

    def validate():
        out = model(x_val, training=False)
        ll = metrics.gaussian_log_likelihood(y_val, out["mean"].numpy(), np.exp(out["log_variance"].numpy()))
        distill_loss = gaussian_distillation_loss(val_mean, val_variance, out["mean"], out["log_variance"])
        return {"val_nll": float(-ll.mean()), "val_distill_loss": float(distill_loss)}

    monitor = {"teacher": "val_distill_loss", "labels": "val_nll"}[cfg.monitor]
    t0 = time.perf_counter()
    result = fit(model, train_epoch, validate, monitor, cfg.epochs, cfg.patience, cfg.seed, "student", progress)
    seconds = time.perf_counter() - t0
    module = RegressionStudentModule(model, ds.x_norm.mean, ds.x_norm.std, ds.y_mean, ds.y_std)
    summary = {"rows": len(soft), "rows_per_source": soft["source"].value_counts().to_dict(),
               "epochs_run": len(result.history), "best_epoch": result.best_epoch, "train_seconds": seconds}
    predictions = {split: {k: v.numpy() for k, v in module.serve(tf.constant(ds[split].x)).items()} for split in ("val", "test")}
    for split, out in predictions.items():
        summary.update(metrics.regression_metrics(ds[split].y, out["mean"], out["variance"], split))
    test = predictions["test"]
    with atomic_dir(schema.student_dir(run), overwrite=True) as tmp:
        write_json(tmp / "config.json", {"student": asdict(cfg), "soft_labels_fingerprint": manifest.get("teacher_fingerprint"),
                                         "loss": "0.5 * [log s2 + (var_t + (mu_t - mu_s)^2) / s2], normalised units"})
        result.history.to_csv(tmp / "history.csv", index=False)
        pd.DataFrame({"id": ds["test"].ids, "y": ds["test"].y, **test}).to_csv(tmp / "test_predictions.csv", index=False)
        module.save(tmp / "export" / schema.EXPORT_VERSION)
        write_json(tmp / "metrics.json", summary)
    return summary


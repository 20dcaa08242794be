"""The regression teacher: a Flipout BNN with a Gaussian likelihood (Bayes by Backprop) and its export.

Training happens in the normalised space (inputs and target z-scored on the training part); the
export takes raw float32 features and answers in the target's original units, with the same
conventions as the classifier's export (teacher/export.py):

- `serving_default(features)`: 10 weight draws -> `mean`, `variance` (total), `epistemic_variance`.
- `predictive(features, num_samples)`: the same with S draws: what the Beam soft-label job calls.
- `sample(features, num_samples)`: `mean_samples`, `variance_samples` [S, batch], each draw's
  Gaussian (for the mixture log-likelihood).

Draws are independent weight samples: a loop of S whole-batch forward passes, as in the classifier.
"""
from __future__ import annotations

import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as tfk

from distill import metrics, schema
from distill.errors import atomic_dir, write_json
from distill.training import fit, minibatches
from distill.uci import RegressionDataset
from teacher.export import SERVING_SAMPLES, Untracked, save_monte_carlo, summarize_regression
from teacher.model import scaled_kl
from teacher.regression_config import RegressionTeacherConfig

tfd = tfp.distributions
MIN_VARIANCE = 1e-6  # floor of the heteroscedastic head's variance (normalised units)


# ---------------------------------------------------------------- the network (pure builders)


class HomoscedasticVariance(tfk.layers.Layer):
    """One learned noise variance for every input: [B] means in, [B] variances out (a point estimate,
    as in PBP and MC dropout's tuned precision, not a posterior over the noise)."""

    def __init__(self, init_std: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.init_std = float(init_std)

    def build(self, input_shape):
        self.log_variance = self.add_weight(name="log_variance", shape=(),
                                            initializer=tfk.initializers.Constant(2.0 * math.log(self.init_std)))

    def call(self, mean):
        return tf.zeros_like(mean) + tf.exp(self.log_variance)

    def get_config(self):
        return {**super().get_config(), "init_std": self.init_std}


def normal_prior(scale: float):
    """N(0, scale^2) on every kernel weight (TFP's default prior is scale 1)."""

    def prior_fn(dtype, shape, name, trainable, add_variable_fn):
        del name, trainable, add_variable_fn
        dist = tfd.Normal(loc=tf.zeros(shape, dtype), scale=tf.cast(scale, dtype))
        return tfd.Independent(dist, reinterpreted_batch_ndims=len(shape))

    return prior_fn


def build_regression_flipout(
    num_features: int,
    n_train: int,
    hidden: tuple[int, ...] = (50,),
    noise: str = "homoscedastic",
    noise_init: float = 0.5,
    prior_scale: float = 1.0,
    posterior_scale_init: float = -6.0,
    kl_weight: float = 1.0,
) -> tfk.Model:
    """Normalised features [B, F] -> {"mean": [B], "variance": [B]} in normalised target units.

    Every call draws fresh weights (Flipout). Kernels have mean-field normal posteriors whose
    untransformed scales start at `posterior_scale_init`; biases are point estimates (TFP's default).
    """
    layer_args = dict(
        kernel_posterior_fn=tfp.layers.default_mean_field_normal_fn(
            untransformed_scale_initializer=tfk.initializers.RandomNormal(mean=posterior_scale_init, stddev=0.1)),
        kernel_prior_fn=normal_prior(prior_scale),
        kernel_divergence_fn=scaled_kl(n_train, kl_weight),
    )
    x = inputs = tfk.Input(shape=(num_features,), name="features")
    for i, units in enumerate(hidden):
        x = tfp.layers.DenseFlipout(units, activation="relu", name=f"flipout_{i}", **layer_args)(x)
    if noise == "homoscedastic":
        mean = tfk.layers.Reshape((), name="mean")(tfp.layers.DenseFlipout(1, name="mean_head", **layer_args)(x))  # [B]
        variance = HomoscedasticVariance(noise_init, name="noise")(mean)  # [B]
    else:  # heteroscedastic: a second output of the Bayesian last layer, softplus-positive
        out = tfp.layers.DenseFlipout(2, name="head", **layer_args)(x)  # [B, 2]
        offset = math.log(math.expm1(noise_init ** 2))  # softplus(offset) = noise_init^2 at a zero output
        mean = tfk.layers.Lambda(lambda o: o[:, 0], name="mean")(out)
        variance = tfk.layers.Lambda(lambda o: tf.nn.softplus(o[:, 1] + offset) + MIN_VARIANCE, name="variance")(out)
    return tfk.Model(inputs, {"mean": mean, "variance": variance}, name="flipout_regression_teacher")


def gaussian_nll(y: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of -log N(y; mean, variance): the likelihood term of the ELBO per example."""
    return tf.reduce_mean(0.5 * (math.log(2.0 * math.pi) + tf.math.log(variance) + tf.square(y - mean) / variance))


# ---------------------------------------------------------------- the export


class RegressionMonteCarloModule(tf.Module):
    """Raw features -> Monte Carlo predictive in original target units (see the module docstring)."""

    def __init__(self, model, x_mean, x_std, y_mean: float, y_std: float, serving_samples: int = SERVING_SAMPLES):
        super().__init__(name="monte_carlo_regression_teacher")
        self._keras = Untracked(model)  # track variables, not the Keras model (teacher.export.Untracked)
        self.model_variables = list(model.variables)
        self.x_mean = tf.constant(np.asarray(x_mean, np.float32))
        self.x_std = tf.constant(np.asarray(x_std, np.float32))
        self.y_mean = tf.constant(float(y_mean), tf.float32)
        self.y_std = tf.constant(float(y_std), tf.float32)
        f = int(self.x_mean.shape[0])
        feats = tf.TensorSpec([None, f], tf.float32, name="features")
        count = tf.TensorSpec([], tf.int32, name="num_samples")
        self.serve = tf.function(lambda features: self._predictive(features, serving_samples), input_signature=[feats])
        self.predictive = tf.function(self._predictive, input_signature=[feats, count])
        self.sample = tf.function(self._sample, input_signature=[feats, count])
        # Training-time validation: normalised inputs and outputs; one trace for any batch.
        self.predictive_normalised = tf.function(lambda x, num_samples: summarize_regression(*self.draws(x, num_samples)),
                                                 input_signature=[tf.TensorSpec([None, f], tf.float32), count])

    @property
    def model(self):
        return self._keras.value

    def draws(self, x: tf.Tensor, num_samples) -> tuple[tf.Tensor, tf.Tensor]:
        """S independent weight draws -> (mean_samples, variance_samples), each [S, B], normalised units."""
        means = tf.TensorArray(tf.float32, size=num_samples, element_shape=tf.TensorShape([None]))
        variances = tf.TensorArray(tf.float32, size=num_samples, element_shape=tf.TensorShape([None]))
        for i in tf.range(num_samples):
            out = self._keras.value(x)
            means = means.write(i, out["mean"])
            variances = variances.write(i, out["variance"])
        return means.stack(), variances.stack()

    def _draws_original(self, features, num_samples):
        mean_n, variance_n = self.draws((features - self.x_mean) / self.x_std, num_samples)
        return mean_n * self.y_std + self.y_mean, variance_n * tf.square(self.y_std)  # [S, B] each

    def _predictive(self, features, num_samples):
        return summarize_regression(*self._draws_original(features, num_samples))

    def _sample(self, features, num_samples):
        mean_samples, variance_samples = self._draws_original(features, num_samples)
        return {"mean_samples": mean_samples, "variance_samples": variance_samples}

    def save(self, path: Path) -> Path:
        return save_monte_carlo(self, path)


# ---------------------------------------------------------------- training


def evaluate_samples(y: np.ndarray, mean_samples: np.ndarray, variance_samples: np.ndarray, split: str) -> dict[str, float]:
    """Test metrics of S Gaussian draws in original units: the Gaussian of the predictive's moments
    (what the export returns and the student learns) and the mixture of the draws."""
    s = metrics.regression_summary(mean_samples, variance_samples)
    return {**metrics.regression_metrics(y, s["mean"], s["variance"], split),
            f"{split}/log_likelihood_mixture": float(metrics.mixture_log_likelihood(y, mean_samples, variance_samples).mean()),
            f"{split}/mean_epistemic_share": float((s["epistemic_variance"] / s["variance"]).mean())}


def fit_regression_teacher(cfg: RegressionTeacherConfig, ds: RegressionDataset, progress: bool = True):
    """Minibatch ELBO (Gaussian NLL + kl_weight * KL / N_train), early-stopped on the validation
    slice's NLL of the Monte Carlo predictive. Returns (module, fit result)."""
    tfk.utils.set_random_seed(cfg.seed)
    x_train, y_train = ds.x("train"), ds.y("train")
    x_val, y_val = tf.constant(ds.x("val")), ds.y("val")
    n = len(y_train)
    model = build_regression_flipout(ds.num_features, n, cfg.hidden, cfg.noise, cfg.noise_init, cfg.prior_scale,
                                     cfg.posterior_scale_init, cfg.kl_weight)
    module = RegressionMonteCarloModule(model, ds.x_norm.mean, ds.x_norm.std, ds.y_mean, ds.y_std, cfg.serving_samples)
    optimizer = tfk.optimizers.Adam(cfg.learning_rate)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)  # one weight draw
            nll = gaussian_nll(y, out["mean"], out["variance"])
            kl = tf.add_n(model.losses)  # kl_weight * KL / N_train
            loss = nll + kl
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return nll, kl, tf.reduce_mean(out["variance"])

    def train_epoch(rng):
        nlls, kls, variances, sizes = [], [], [], []
        for idx in minibatches(n, cfg.batch_size, rng):
            nll, kl, variance = step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
            nlls.append(float(nll)), kls.append(float(kl)), variances.append(float(variance)), sizes.append(len(idx))
        train_nll, kl = float(np.average(nlls, weights=sizes)), float(np.mean(kls))
        return {"train_nll": train_nll, "kl": kl, "elbo": -(train_nll + kl),
                "noise_std": float(np.sqrt(np.average(variances, weights=sizes)))}

    def validate():
        s = {k: v.numpy() for k, v in module.predictive_normalised(x_val, cfg.val_samples).items()}
        ll = metrics.gaussian_log_likelihood(y_val, s["mean"], s["variance"])
        return {"val_nll": float(-ll.mean()), "val_rmse": metrics.rmse(y_val, s["mean"]) * ds.y_std}

    result = fit(model, train_epoch, validate, "val_nll", cfg.epochs, cfg.patience, cfg.seed, "teacher", progress)
    return module, result


def prediction_frame(ds: RegressionDataset, split: str, summary: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({"id": ds[split].ids, "y": ds[split].y, **{k: np.asarray(v) for k, v in summary.items()}})


def train_regression_teacher(cfg: RegressionTeacherConfig, ds: RegressionDataset, run: Path, progress: bool = True) -> dict:
    """Train, evaluate on the test split, export; write RUN/teacher atomically. Returns the metrics."""
    t0 = time.perf_counter()
    module, result = fit_regression_teacher(cfg, ds, progress)
    train_seconds = time.perf_counter() - t0
    summary = {"epochs_run": len(result.history), "best_epoch": result.best_epoch, "train_seconds": train_seconds,
               "n_train": len(ds["train"]), "eval_samples": cfg.eval_samples,
               "noise_std": float(result.history["noise_std"].iloc[result.best_epoch - 1] * ds.y_std)}
    draws = {}
    for split in ("val", "test"):
        draws[split] = {k: v.numpy() for k, v in module.sample(tf.constant(ds[split].x), cfg.eval_samples).items()}  # [S, B]
        summary.update(evaluate_samples(ds[split].y, draws[split]["mean_samples"], draws[split]["variance_samples"], split))
    with atomic_dir(schema.teacher_dir(run), overwrite=True) as tmp:
        write_json(tmp / "config.json", {"teacher": asdict(cfg), "n_train": len(ds["train"]), "num_features": ds.num_features,
                                         "target": ds.target_name})
        result.history.to_csv(tmp / "history.csv", index=False)
        prediction_frame(ds, "test", metrics.regression_summary(draws["test"]["mean_samples"], draws["test"]["variance_samples"])
                         ).to_csv(tmp / "test_predictions.csv", index=False)
        tf.train.Checkpoint(model=module.model).write(str(tmp / "weights" / "ckpt"))
        module.save(tmp / "export" / schema.EXPORT_VERSION)
        write_json(tmp / "metrics.json", summary)
    return summary

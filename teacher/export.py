"""The Monte Carlo SavedModel: raw features in, posterior predictive out.

The module bakes in the train split's min-max scaling and wraps a `draw(x_scaled, i) -> logits`
function that uses fresh weights on every call (Flipout samples its perturbation per call; an
ensemble would pick member i). Draws run in a `tf.while_loop`, one whole-batch forward pass per
draw, so S draws are S independent weight samples at the cost of S batched matmuls.

Signatures (all take `features` float32 [batch, F] of raw features):
- `serving_default`: the serving setting, `SERVING_SAMPLES` draws -> probs, variance, entropy,
  expected_entropy, mutual_information.
- `predictive`: the same with `num_samples` (int32 scalar) draws: what the Beam job calls.
- `sample`: `num_samples` draws -> probs_samples [S, batch, C], each draw's softmax.
The scalar `num_samples` keeps the last two out of TF Serving's row format; clients of the row
format use `serving_default`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

SERVING_SAMPLES = 10


class Untracked:
    """Holds an object out of sight of TensorFlow's object tracking (and so of SavedModel)."""

    def __init__(self, value):
        self.value = value


def summarize(probs_samples: tf.Tensor) -> dict[str, tf.Tensor]:
    """[S, B, C] draws -> mean, variance and the entropy decomposition (mirrors metrics.predictive_summary)."""
    probs = tf.reduce_mean(probs_samples, axis=0)  # [B, C]
    variance = tf.math.reduce_variance(probs_samples, axis=0)  # [B, C]
    log = lambda p: tf.math.log(tf.clip_by_value(p, 1e-12, 1.0))  # noqa: E731
    entropy = -tf.reduce_sum(probs * log(probs), axis=-1)  # [B]
    expected_entropy = tf.reduce_mean(-tf.reduce_sum(probs_samples * log(probs_samples), axis=-1), axis=0)  # [B]
    return {
        "probs": probs,
        "variance": variance,
        "entropy": entropy,
        "expected_entropy": expected_entropy,
        "mutual_information": tf.maximum(entropy - expected_entropy, 0.0),
    }


def summarize_regression(mean_samples: tf.Tensor, variance_samples: tf.Tensor) -> dict[str, tf.Tensor]:
    """[S, B] Gaussian draws -> the mixture's mean and variance split into its epistemic part
    (variance of the draws' means) and the rest (mean aleatoric variance); mirrors metrics.regression_summary."""
    epistemic = tf.math.reduce_variance(mean_samples, axis=0)  # [B]
    return {"mean": tf.reduce_mean(mean_samples, axis=0), "variance": epistemic + tf.reduce_mean(variance_samples, axis=0),
            "epistemic_variance": epistemic}


class MonteCarloModule(tf.Module):
    def __init__(
        self,
        draw: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        models: list,
        minimum: np.ndarray,
        scale: np.ndarray,
        num_classes: int,
        serving_samples: int = SERVING_SAMPLES,
    ):
        super().__init__(name="monte_carlo_teacher")
        self._keras = Untracked(list(models))
        # Track the variables, not the Keras models: tracking a Keras model makes tf.saved_model.save
        # trace every layer's call for Keras' own serialisation, which costs seconds and is never used.
        self.model_variables = [v for m in models for v in m.variables]
        self._draw = draw
        self.minimum = tf.constant(np.asarray(minimum, np.float32))
        self.scale = tf.constant(np.asarray(scale, np.float32))
        self.num_classes = num_classes
        self.serving_samples = serving_samples
        f = int(self.minimum.shape[0])
        feats = tf.TensorSpec([None, f], tf.float32, name="features")
        count = tf.TensorSpec([], tf.int32, name="num_samples")
        self.serve = tf.function(lambda features: summarize(self.draws(self.preprocess(features), serving_samples)),
                                 input_signature=[feats])
        self.predictive = tf.function(lambda features, num_samples: summarize(self.draws(self.preprocess(features), num_samples)),
                                      input_signature=[feats, count])
        self.sample = tf.function(lambda features, num_samples: {"probs_samples": self.draws(self.preprocess(features), num_samples)},
                                  input_signature=[feats, count])
        # For training-time validation and evaluation: already-scaled inputs; one trace for any batch.
        self.predictive_scaled = tf.function(lambda x, num_samples: summarize(self.draws(x, num_samples)),
                                             input_signature=[tf.TensorSpec([None, f], tf.float32), count])

    @property
    def models(self) -> list:
        return self._keras.value

    def preprocess(self, features: tf.Tensor) -> tf.Tensor:
        return (features - self.minimum) / self.scale

    def draws(self, x: tf.Tensor, num_samples) -> tf.Tensor:
        """S draws -> probs_samples [S, B, C]."""
        ta = tf.TensorArray(tf.float32, size=num_samples, element_shape=tf.TensorShape([None, self.num_classes]))
        for i in tf.range(num_samples):
            ta = ta.write(i, tf.nn.softmax(self._draw(x, i), axis=-1))
        return ta.stack()

    def save(self, path: Path) -> Path:
        return save_monte_carlo(self, path)


def save_monte_carlo(module: tf.Module, path: Path) -> Path:
    """The three signatures every Monte Carlo teacher export has (classifier or regressor)."""
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serve.get_concrete_function(),
        "predictive": module.predictive.get_concrete_function(),
        "sample": module.sample.get_concrete_function(),
    })
    return Path(path)


def flipout_module(model, minimum, scale, num_classes: int, serving_samples: int = SERVING_SAMPLES) -> MonteCarloModule:
    return MonteCarloModule(lambda x, i: model(x), [model], minimum, scale, num_classes, serving_samples)


def mc_dropout_module(model, minimum, scale, num_classes: int, serving_samples: int = SERVING_SAMPLES) -> MonteCarloModule:
    """Dropout kept on at inference (Gal & Ghahramani 2016): each draw is a fresh dropout mask."""
    return MonteCarloModule(lambda x, i: model(x, training=True), [model], minimum, scale, num_classes, serving_samples)


def ensemble_module(models: list, minimum, scale, num_classes: int, serving_samples: int = SERVING_SAMPLES) -> MonteCarloModule:
    """Draw i is member i mod M: with S a multiple of M the predictive is the exact ensemble mean."""
    branches = len(models)

    def draw(x, i):
        return tf.switch_case(tf.math.floormod(i, branches), [lambda m=m: m(x, training=False) for m in models])

    return MonteCarloModule(draw, list(models), minimum, scale, num_classes, serving_samples)

"""The student SavedModel: raw features -> probs, entropy, epistemic; deterministic, one pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from teacher.export import Untracked


class StudentModule(tf.Module):
    def __init__(self, model, minimum: np.ndarray, scale: np.ndarray, epistemic_scale: float = 1.0):
        super().__init__(name="student")
        self._keras = Untracked(model)  # see teacher.export.Untracked: save the variables, skip Keras tracing
        self.model_variables = list(model.variables)
        self.minimum = tf.constant(np.asarray(minimum, np.float32))
        self.scale = tf.constant(np.asarray(scale, np.float32))
        self.epistemic_scale = tf.constant(float(epistemic_scale), tf.float32)
        f = int(self.minimum.shape[0])
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None, f], tf.float32, name="features")])

    def _serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self._keras.value((features - self.minimum) / self.scale, training=False)
        probs = tf.nn.softmax(out["logits"], axis=-1)  # [B, C]
        entropy = -tf.reduce_sum(probs * tf.math.log(tf.clip_by_value(probs, 1e-12, 1.0)), axis=-1)  # [B]
        return {"probs": probs, "entropy": entropy, "epistemic": out["epistemic"] * self.epistemic_scale}

    def save(self, path: Path) -> Path:
        tf.saved_model.save(self, str(path), signatures={"serving_default": self.serve.get_concrete_function()})
        return Path(path)

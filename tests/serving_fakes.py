"""Deterministic stand-ins for the student export, with known outputs (tests of the real student sit beside them).

Same interface as the student: serving_default(features float32 [B, F]) -> probs [B, C],
entropy [B], epistemic [B]; plus a one-output signature to exercise TF Serving's bare-value responses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_FEATURES, NUM_CLASSES = 4, 3


def linear_weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(NUM_FEATURES, NUM_CLASSES)).astype(np.float32),  # [F, C]
            rng.normal(size=(NUM_CLASSES,)).astype(np.float32))  # [C]


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake student computes, in numpy (float64)."""
    w, b = linear_weights()
    logits = np.asarray(x, np.float64) @ w + b  # [B, C]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(axis=1)
    epistemic = np.log1p(np.exp(0.1 * np.asarray(x, np.float64).sum(axis=1)))  # softplus, [B]
    return {"probs": probs, "entropy": entropy, "epistemic": epistemic}


def save_linear_student(base: Path, version: int = 1) -> Path:
    """Export the fake student to base/<version>; return the version folder."""
    import tensorflow as tf

    w, b = linear_weights()

    class LinearStudent(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(w)
            self.b = tf.Variable(b)

        def _outputs(self, features):
            probs = tf.nn.softmax(features @ self.w + self.b, axis=-1)  # [B, C]
            entropy = -tf.reduce_sum(probs * tf.math.log(tf.clip_by_value(probs, 1e-12, 1.0)), axis=-1)  # [B]
            epistemic = tf.nn.softplus(0.1 * tf.reduce_sum(features, axis=-1))  # [B]
            return {"probs": probs, "entropy": entropy, "epistemic": epistemic}

        @tf.function(input_signature=[tf.TensorSpec([None, NUM_FEATURES], tf.float32, name="features")])
        def serve(self, features):
            return self._outputs(features)

        @tf.function(input_signature=[tf.TensorSpec([None, NUM_FEATURES], tf.float32, name="features")])
        def probs_only(self, features):
            return {"probs": self._outputs(features)["probs"]}

    m = LinearStudent()
    out = Path(base) / str(version)
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.serve, "probs_only": m.probs_only})
    return out

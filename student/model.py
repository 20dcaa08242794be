"""The compact deterministic student (pure builder)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as tfk


def build_student(num_features: int, units: int, hidden: tuple[int, ...] = (32,), name: str = "student",
                  epistemic_activation: str = "softplus", epistemic_body_gradient: float = 1.0) -> tfk.Model:
    """Normalised features [batch, F] -> {"head": [batch, units], "epistemic": [batch]}.

    `head` is the task's head (distill.tasks: logits, or a Gaussian's mean and raw variance), the
    same type as the teacher's. The epistemic head reads the same hidden features: with softplus it
    predicts a non-negative score (the teacher's epistemic share, its score, or its square root; normalised); linear,
    a centred one (the Dirichlet student's log-precision, student.dirichlet, or the log of the score).
    """
    x = inputs = tfk.Input(shape=(num_features,), name="features")
    for i, width in enumerate(hidden):
        x = tfk.layers.Dense(width, activation="relu", name=f"hidden_{i}")(x)
    return tfk.Model(inputs, _heads(x, units, epistemic_activation, epistemic_body_gradient), name=name)


class GradientScale(tfk.layers.Layer):
    """The identity, whose gradient is scaled by `scale` in training (g h + (1 - g) stop_gradient(h)); at inference
    (the exports) it is the identity alone: no op on the batch."""

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, h, training=None):
        # a Python training flag picks one branch when traced (no op at inference); a tensor one becomes a switch
        return tfk.backend.in_train_phase(lambda: self.scale * h + (1.0 - self.scale) * tf.stop_gradient(h),
                                          lambda: h, training=training)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def _heads(x, units: int, epistemic_activation: str, epistemic_body_gradient: float = 1.0) -> dict:
    """The task's head and the one-unit epistemic head on features x [batch, H]. `epistemic_body_gradient` scales
    the epistemic loss's gradient into the hidden layers (the forward pass is unchanged): 1 shares them fully, 0
    trains the epistemic head alone, so that the hidden layers serve the predictive only."""
    g = float(epistemic_body_gradient)
    features = x if g == 1.0 else GradientScale(g, name="epistemic_gradient_scale")(x)
    epistemic = tfk.layers.Dense(1, activation=epistemic_activation, name="epistemic")(features)
    return {"head": tfk.layers.Dense(units, name="head")(x),
            "epistemic": tfk.layers.Reshape((), name="epistemic_flat")(epistemic)}


SEQUENCE_NETS = ("conv", "gru")


def build_sequence_student(num_channels: int, units: int, hidden: tuple[int, ...] = (32, 32, 32), net: str = "conv",
                           name: str = "student", epistemic_activation: str = "softplus") -> tfk.Model:
    """Normalised sequences [batch, time, C] (any length) -> the same heads as `build_student`.

    "conv": causal 1-D convolutions (kernel 5, dilation doubling per layer: 1, 2, 4, ...), then the last step's
    features beside their mean over time; one pass with no loop over time, what makes it cheap to serve.
    "gru": one deterministic GRU of hidden[0] units, its last state.
    """
    x = inputs = tfk.Input(shape=(None, num_channels), name="features")
    if net == "gru":
        x = tfk.layers.GRU(hidden[0], name="gru")(x)  # [batch, H]
    else:
        for i, width in enumerate(hidden):
            x = tfk.layers.Conv1D(width, 5, padding="causal", dilation_rate=2 ** i, activation="relu", name=f"conv_{i}")(x)
        last = tfk.layers.Lambda(lambda h: h[:, -1], name="last_step")(x)  # [batch, H]
        x = tfk.layers.Concatenate(name="summary")([last, tfk.layers.GlobalAveragePooling1D(name="mean_over_time")(x)])
    return tfk.Model(inputs, _heads(x, units, epistemic_activation), name=name)

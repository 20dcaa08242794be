"""The compact deterministic student (pure builder)."""
from __future__ import annotations

import tf_keras as tfk


def build_student(num_features: int, units: int, hidden: tuple[int, ...] = (32,), name: str = "student",
                  epistemic_activation: str = "softplus") -> tfk.Model:
    """Normalised features [batch, F] -> {"head": [batch, units], "epistemic": [batch]}.

    `head` is the task's head (distill.tasks: logits, or a Gaussian's mean and raw variance), the
    same type as the teacher's. The epistemic head reads the same hidden features: with softplus it
    predicts the teacher's (normalised, non-negative) epistemic score; linear, the Dirichlet student's
    log-precision (student.dirichlet).
    """
    x = inputs = tfk.Input(shape=(num_features,), name="features")
    for i, width in enumerate(hidden):
        x = tfk.layers.Dense(width, activation="relu", name=f"hidden_{i}")(x)
    head = tfk.layers.Dense(units, name="head")(x)
    epistemic = tfk.layers.Dense(1, activation=epistemic_activation, name="epistemic")(x)
    epistemic = tfk.layers.Reshape((), name="epistemic_flat")(epistemic)
    return tfk.Model(inputs, {"head": head, "epistemic": epistemic}, name=name)

"""The compact deterministic student (pure builder)."""
from __future__ import annotations

import tf_keras as tfk


def build_student(num_features: int, num_classes: int, hidden: tuple[int, ...] = (32,), name: str = "student") -> tfk.Model:
    """features in [0, 1] [batch, F] -> {"logits": [batch, C], "epistemic": [batch]}.

    The epistemic head reads the same hidden features as the class head and predicts the
    teacher's mutual information (normalised; the export undoes the normalisation). Softplus
    keeps it non-negative.
    """
    x = inputs = tfk.Input(shape=(num_features,), name="features")
    for i, units in enumerate(hidden):
        x = tfk.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
    logits = tfk.layers.Dense(num_classes, name="logits")(x)
    epistemic = tfk.layers.Dense(1, activation="softplus", name="epistemic")(x)
    epistemic = tfk.layers.Reshape((), name="epistemic_flat")(epistemic)
    return tfk.Model(inputs, {"logits": logits, "epistemic": epistemic}, name=name)

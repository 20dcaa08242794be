"""Student configuration (no TensorFlow import: the CLI builds it before TensorFlow loads)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudentConfig:
    hidden: tuple[int, ...] = (32,)
    temperature: float = 1.0  # T of Hinton et al.; the soft loss is scaled by T^2
    alpha: float = 0.0  # weight of the hard-label loss on rows that have a true label
    epistemic_weight: float = 1.0  # weight of the epistemic head's loss (MSE to the teacher's MI, normalised)
    learning_rate: float = 3e-3  # Adam
    epochs: int = 300
    batch_size: int = 64
    patience: int = 40  # epochs without a better validation NLL (true labels)
    baseline_epochs: int = 300  # the hard-label baseline, same architecture, train split only
    baseline_batch_size: int = 16
    gate_nll_margin: float = 0.05  # student val NLL may exceed the teacher's by at most this
    gate_ece_margin: float = 0.05  # and val ECE by at most this
    seed: int = 0

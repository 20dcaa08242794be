"""Regression student configuration (no TensorFlow import: the CLI builds it before TensorFlow loads)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegressionStudentConfig:
    """A deterministic MLP with a mean and a log-variance output, distilled from the teacher's predictive."""

    hidden: tuple[int, ...] = (100,)  # 50 (the teacher's) matched the teacher less closely on Boston's validation slices
    learning_rate: float = 3e-3  # Adam
    epochs: int = 300
    batch_size: int = 128
    patience: int = 40  # epochs without a better monitored validation value
    monitor: str = "teacher"  # early stopping: distillation loss vs the teacher on validation inputs | "labels": their NLL
    seed: int = 0

    def __post_init__(self):
        from distill.errors import BdkError

        if not self.hidden or min(self.hidden) < 1:
            raise BdkError(f"hidden layer sizes must be positive, got {self.hidden}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise BdkError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.monitor not in ("teacher", "labels"):
            raise BdkError(f"monitor must be 'teacher' or 'labels', got {self.monitor!r}")
        if not self.learning_rate > 0:
            raise BdkError(f"learning_rate must be > 0, got {self.learning_rate}")

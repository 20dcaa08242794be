"""Student configuration (no TensorFlow import: the CLI builds it before TensorFlow loads).

One config for every task; fields left at None take the task's recipe (`TASK_DEFAULTS`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from distill.errors import BdkError

# Classification: one layer of 32 on Iris; regression: 100 units matched the teacher more closely than
# the teacher's 50 on Boston's validation slices.
TASK_DEFAULTS = {"classification": dict(hidden=(32,), batch_size=64), "regression": dict(hidden=(100,), batch_size=128)}
MONITORS = ("teacher", "labels")


@dataclass(frozen=True)
class StudentConfig:
    hidden: tuple[int, ...] | None = None
    temperature: float = 1.0  # classes: T of Hinton et al.; the soft loss is scaled by T^2
    alpha: float = 0.0  # classes: weight of the hard-label loss on rows that have a true label
    epistemic_weight: float = 1.0  # weight of the epistemic head's loss (MSE to the teacher's epistemic score, normalised)
    learning_rate: float = 3e-3  # Adam
    epochs: int = 300
    batch_size: int | None = None
    patience: int = 40  # epochs without a better monitored validation value
    # Early stopping: "teacher" = the distillation loss against the teacher's predictive on the validation inputs
    # (not in the transfer set: how well the student reproduces the teacher away from the rows it was fitted on);
    # "labels" = the NLL of the validation rows' true labels.
    monitor: str = "teacher"
    baseline_epochs: int = 300  # the hard-label baseline, same architecture, train split only
    baseline_batch_size: int = 16
    gate: bool = True  # refuse to publish a student worse calibrated than its teacher (studies compare, so turn it off)
    gate_nll_margin: float = 0.05  # student val NLL may exceed the teacher's by at most this
    gate_ece_margin: float = 0.05  # and (classes) val ECE by at most this
    seed: int = 0

    def __post_init__(self):
        if self.hidden is not None and (not self.hidden or min(self.hidden) < 1):
            raise BdkError(f"hidden layer sizes must be positive, got {self.hidden}")
        for name in ("epochs", "patience", "baseline_epochs", "baseline_batch_size"):
            if getattr(self, name) < 1:
                raise BdkError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.monitor not in MONITORS:
            raise BdkError(f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if not self.learning_rate > 0:
            raise BdkError(f"learning_rate must be > 0, got {self.learning_rate}")

    def resolved(self, task: str) -> "StudentConfig":
        defaults = TASK_DEFAULTS[task]
        return replace(self, **{f.name: defaults[f.name] for f in fields(self)
                                if getattr(self, f.name) is None and f.name in defaults})

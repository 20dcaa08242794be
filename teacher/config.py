"""Teacher configuration (no TensorFlow import: the CLI builds it before TensorFlow loads).

One config for every task: fields left at None take the task's recipe (`TASK_DEFAULTS`) when the
stage knows the task (`resolved`), and the resolved config is what RUN/teacher/config.json records.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from distill.errors import BdkError

KINDS = ("flipout", "ensemble", "mc-dropout")

# Recipes per task, chosen on validation data: classification on Iris (64-64, Adam 1e-3), regression on the
# validation slices of Boston and Concrete (one layer of 50 as in the UCI literature, Adam 3e-3, a tight
# posterior start softplus(-6) ~ 2.5e-3).
TASK_DEFAULTS = {
    "classification": dict(hidden=(64, 64), posterior_scale_init=-3.0, learning_rate=1e-3, epochs=150, batch_size=16,
                           patience=30),
    "regression": dict(hidden=(50,), posterior_scale_init=-6.0, learning_rate=3e-3, epochs=1000, batch_size=32,
                       patience=100),
}


@dataclass(frozen=True)
class TeacherConfig:
    kind: str = "flipout"  # flipout (Bayes by Backprop) | ensemble (deep ensemble) | mc-dropout
    hidden: tuple[int, ...] | None = None
    prior_scale: float = 1.0  # flipout: N(0, prior_scale^2) prior on every kernel weight
    posterior_scale_init: float | None = None  # flipout: initial untransformed posterior scale (softplus of it)
    kl_weight: float = 1.0  # flipout: multiplies KL / N_train in the ELBO
    members: int = 5  # ensemble: M independently initialised deterministic nets
    dropout: float = 0.1  # mc-dropout: rate, kept on at inference
    weight_decay: float = 1e-4  # ensemble, mc-dropout: L2 on kernels (MC dropout's KL approximation)
    learning_rate: float | None = None  # Adam
    epochs: int | None = None
    batch_size: int | None = None
    patience: int | None = None  # epochs without a better validation NLL
    val_samples: int = 20  # draws for the per-epoch validation predictive (fixed seed: the same draws every epoch)
    eval_samples: int = 100  # draws for the final evaluation
    serving_samples: int = 10  # draws baked into serving_default
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BdkError(f"unknown teacher kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        for name in ("prior_scale", "learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise BdkError(f"{name} must be > 0, got {value}")
        if self.kl_weight < 0:
            raise BdkError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if not 0.0 <= self.dropout < 1.0:
            raise BdkError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("epochs", "batch_size", "patience", "members"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BdkError(f"{name} must be >= 1, got {value}")
        for name in ("val_samples", "eval_samples", "serving_samples"):
            if getattr(self, name) < 2:
                raise BdkError(f"{name} must be >= 2 (a variance needs two draws), got {getattr(self, name)}")
        if self.hidden is not None and (not self.hidden or min(self.hidden) < 1):
            raise BdkError(f"hidden layer sizes must be positive, got {self.hidden}")

    def resolved(self, task: str) -> "TeacherConfig":
        """The task's recipe in every field left at None."""
        defaults = TASK_DEFAULTS[task]
        return replace(self, **{f.name: defaults[f.name] for f in fields(self)
                                if getattr(self, f.name) is None and f.name in defaults})

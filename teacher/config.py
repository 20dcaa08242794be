"""Teacher configuration (no TensorFlow import: the CLI builds it before TensorFlow loads)."""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("flipout", "ensemble", "mc-dropout")


@dataclass(frozen=True)
class TeacherConfig:
    kind: str = "flipout"  # flipout (Bayes by Backprop) | ensemble (deep ensemble) | mc-dropout
    hidden: tuple[int, ...] = (64, 64)
    posterior: str = "mean_field_normal"  # flipout: TFP's default_mean_field_normal_fn
    prior: str = "standard_normal"  # flipout: TFP's default_multivariate_normal_fn, N(0, 1) per weight
    kl_weight: float = 1.0  # flipout: multiplies KL / N_train in the ELBO
    members: int = 5  # ensemble: M independently initialised deterministic nets
    dropout: float = 0.1  # mc-dropout: rate, kept on at inference
    weight_decay: float = 1e-4  # ensemble, mc-dropout: L2 on kernels (MC dropout's KL approximation)
    learning_rate: float = 1e-3  # Adam
    epochs: int = 150
    batch_size: int = 16
    patience: int = 30  # epochs without a better validation NLL
    val_samples: int = 20  # draws for the per-epoch validation predictive
    eval_samples: int = 100  # draws for the final evaluation
    serving_samples: int = 10  # draws baked into serving_default
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            from distill.errors import BdkError
            raise BdkError(f"unknown teacher kind {self.kind!r}; choose one of {', '.join(KINDS)}")

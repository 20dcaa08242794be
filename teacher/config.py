"""Teacher configuration (no TensorFlow import: the CLI builds it before TensorFlow loads)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherConfig:
    hidden: tuple[int, ...] = (64, 64)
    posterior: str = "mean_field_normal"  # TFP's default_mean_field_normal_fn
    prior: str = "standard_normal"  # TFP's default_multivariate_normal_fn: N(0, 1) per weight
    kl_weight: float = 1.0  # multiplies KL / N_train in the ELBO
    learning_rate: float = 1e-3  # Adam
    epochs: int = 150
    batch_size: int = 16
    patience: int = 30  # epochs without a better validation NLL
    val_samples: int = 20  # draws for the per-epoch validation predictive
    eval_samples: int = 100  # draws for the final evaluation
    serving_samples: int = 10  # draws baked into serving_default
    seed: int = 0

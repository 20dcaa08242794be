"""Regression teacher configuration (no TensorFlow import: the CLI builds it before TensorFlow loads)."""
from __future__ import annotations

from dataclasses import dataclass

NOISE_MODELS = ("homoscedastic", "heteroscedastic")


@dataclass(frozen=True)
class RegressionTeacherConfig:
    """Bayes by Backprop with Flipout layers and a Gaussian likelihood, in the normalised space.

    One hidden layer of 50 units, as in the UCI literature (PBP, MC dropout). `noise`: a second
    output of the Bayesian last layer (heteroscedastic, the default: 0.22 nats better on Boston's
    validation slices and 0.13 on Concrete's) or one learned noise variance for all inputs
    (homoscedastic, as PBP and MC dropout). Defaults were chosen on validation slices only.
    """

    hidden: tuple[int, ...] = (50,)
    noise: str = "heteroscedastic"
    noise_init: float = 0.5  # initial noise std, normalised target units
    prior_scale: float = 1.0  # N(0, prior_scale^2) prior on every kernel weight
    posterior_scale_init: float = -6.0  # initial untransformed posterior scale: softplus(-6) ~ 2.5e-3
    kl_weight: float = 1.0  # multiplies KL / N_train in the ELBO
    learning_rate: float = 3e-3  # Adam (chosen on the validation slices of Boston and Concrete)
    epochs: int = 1000
    batch_size: int = 32
    patience: int = 100  # epochs without a better validation NLL
    val_samples: int = 20  # draws for the per-epoch validation predictive
    eval_samples: int = 100  # draws for the final evaluation
    serving_samples: int = 10  # draws baked into serving_default
    seed: int = 0

    def __post_init__(self):
        from distill.errors import BdkError

        if self.noise not in NOISE_MODELS:
            raise BdkError(f"unknown noise model {self.noise!r}; choose one of {', '.join(NOISE_MODELS)}")
        for name in ("noise_init", "prior_scale", "learning_rate"):
            if not getattr(self, name) > 0:
                raise BdkError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.kl_weight < 0:
            raise BdkError(f"kl_weight must be >= 0, got {self.kl_weight}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise BdkError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_samples", "eval_samples", "serving_samples"):
            if getattr(self, name) < 2:
                raise BdkError(f"{name} must be >= 2 (a variance needs two draws), got {getattr(self, name)}")

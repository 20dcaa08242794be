"""How the student says "I don't know": its second head, one object per kind (`StudentConfig.uncertainty`).

- `regressor`: the head regresses the teacher's epistemic score itself (mutual information for classes, the
  epistemic variance for regression), a softplus output.
- `log_regressor`: the head regresses the logarithm of the teacher's epistemic score (floored at LOG_FLOOR), a linear
  output of centred targets, and the export serves its exponential: the squared error weighs a near-data score of
  1e-4 against one of 1e-3 as a far-away 0.1 against 1, so that both regions are ranked.
- `dirichlet` (classes): the head regresses the log-precision of a Dirichlet over the class probabilities
  (student.dirichlet), a linear output of centred targets; the export turns it into the Dirichlet's closed-form
  uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Regressor:
    name: str = "regressor"
    needs_classes: bool = False
    activation: str = "softplus"  # the epistemic head's output
    center_scores: bool = False  # the targets are standardised around their mean (not only scaled)

    def scores(self, outputs: dict[str, np.ndarray], task, num_classes: int) -> np.ndarray:
        """[n] what the head regresses, from the soft labels' columns: the teacher's score, encoded."""
        return self.encode(np.asarray(outputs[task.epistemic_output], np.float64))

    def serve(self, task, head, score, target_shift, target_scale) -> dict:
        """The export's outputs from the head [B, K] and the head's score [B] (in the teacher's units, decoded)."""
        params = task.to_target_units(task.draw_params(head), target_shift, target_scale)
        return {**task.point_outputs(params), "epistemic": self.decode(score)}

    def encode(self, score: np.ndarray) -> np.ndarray:
        """The teacher's epistemic score [n] -> what the head regresses (the score itself here)."""
        return score

    def decode(self, regressed):
        """What the head regressed [B] (a tensor) -> the served epistemic score; inverts `encode`."""
        return regressed


LOG_FLOOR = 1e-6  # log_regressor: scores below this (a teacher sure to the last digits) are regressed as this


@dataclass(frozen=True)
class LogRegressor(Regressor):
    name: str = "log_regressor"
    activation: str = "linear"
    center_scores: bool = True

    def encode(self, score):
        return np.log(np.maximum(score, LOG_FLOOR))

    def decode(self, regressed):
        import tensorflow as tf

        return tf.exp(regressed)


@dataclass(frozen=True)
class SqrtRegressor(Regressor):
    """Between the two: the square root of the teacher's score (softplus output), served squared."""
    name: str = "sqrt_regressor"

    def encode(self, score):
        return np.sqrt(np.maximum(score, 0.0))

    def decode(self, regressed):
        return regressed * regressed


@dataclass(frozen=True)
class Dirichlet(Regressor):
    name: str = "dirichlet"
    needs_classes: bool = True
    activation: str = "linear"
    center_scores: bool = True

    def scores(self, outputs, task, num_classes):
        from distill import tasks
        from student import dirichlet

        smoothed = (1 - tasks.DIRICHLET_SMOOTHING) * outputs["probs"] + tasks.DIRICHLET_SMOOTHING / num_classes
        return np.log(dirichlet.precision_mle(smoothed, outputs["mean_log_probs"]))  # [n] log alpha_0

    def serve(self, task, head, score, target_shift, target_scale):
        from student import dirichlet

        u = dirichlet.uncertainty(head, score)  # the score is the Dirichlet's log-precision
        return {**u, "epistemic": u["mutual_information"]}


HEADS = {h.name: h for h in (Regressor(), LogRegressor(), SqrtRegressor(), Dirichlet())}

"""How the student says "I don't know": its second head, one object per kind (`StudentConfig.uncertainty`).

- `regressor`: the head regresses the teacher's epistemic score itself (mutual information for classes, the
  epistemic variance for regression), a softplus output.
- `log_regressor`: the head regresses the logarithm of the teacher's epistemic score (floored at LOG_FLOOR), a linear
  output of centred targets, and the export serves its exponential: the squared error weighs a near-data score of
  1e-4 against one of 1e-3 as a far-away 0.1 against 1, so that both regions are ranked.
- `ratio`: the head regresses the share of the teacher's total uncertainty that is epistemic (mutual information
  over predictive entropy for classes, epistemic over total variance for regression; in [0, 1]), a softplus output,
  and the export serves that share of the student's own total: the total carries the ranking near the data, where
  the teacher's score spans decades, and the share carries it far away, where the total saturates. The score is at
  most the student's own total, so it relies on the export's input clamp (student.train.input_bounds): a ReLU
  network's entropy falls to ~0 a hundred box widths out.
- `dirichlet` (classes): the head regresses the log-precision of a Dirichlet over the class probabilities
  (student.dirichlet), a linear output of centred targets; the export turns it into the Dirichlet's closed-form
  uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def point_outputs(task, head, target_shift, target_scale) -> dict:
    """The task's outputs of the student's distribution, from its head [B, K], in the target's units."""
    return task.point_outputs(task.to_target_units(task.draw_params(head), target_shift, target_scale))


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
        return {**point_outputs(task, head, target_shift, target_scale), "epistemic": self.decode(score)}

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


RATIO_FLOOR = 1e-12  # ratio: a total below this (a teacher sure to the last digits) counts as this


@dataclass(frozen=True)
class Ratio(Regressor):
    name: str = "ratio"

    def scores(self, outputs, task, num_classes):
        epistemic = np.asarray(outputs[task.epistemic_output], np.float64)
        total = np.asarray(outputs[task.total_output], np.float64)
        return np.clip(epistemic / np.maximum(total, RATIO_FLOOR), 0.0, 1.0)  # [n]

    def serve(self, task, head, score, target_shift, target_scale):
        import tensorflow as tf

        out = point_outputs(task, head, target_shift, target_scale)
        total = out[task.total_output]  # [B] the student's own entropy (classes) or variance (regression)
        epistemic = tf.clip_by_value(score, 0.0, 1.0) * total
        named = {"expected_entropy": total - epistemic, "mutual_information": epistemic} if task.has_classes else {}
        return {**out, **named, "epistemic": epistemic}


HEADS = {h.name: h for h in (Regressor(), LogRegressor(), SqrtRegressor(), Dirichlet(), Ratio())}

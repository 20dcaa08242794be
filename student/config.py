"""Student configuration (no TensorFlow import: the CLI builds it before TensorFlow loads).

One config for every task; fields left at None take the task's recipe (`TASK_DEFAULTS`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from distill import tasks
from distill.errors import BdkError
from student.uncertainty import HEADS

# Tables: the student's widths default to the teacher's (`hidden=None`): the same cost per row as ONE teacher weight
# draw, so at least S_serving times cheaper than the teacher's serving setting, with the capacity to reproduce the
# teacher's function (Stanton et al. 2021: students lag mostly through optimisation, and capacity below the teacher's
# cost it more; at 100k rows the (32, 32) student trailed its (64, 64) teacher by 12 points, README "At scale").
# Classes: Adam's peak rate 1e-2, decayed along a cosine over the budget (student.train.Schedule): on the scaling
# problem at 100k rows (the (64, 64) teacher's soft labels, 90 epochs) the student reached validation NLL 0.285 at
# 1e-2 against 0.316 at 3e-3 (the teacher: 0.289). The 3e-3 of the previous recipe was chosen on the suite with a
# constant rate and a (32, 32) student (bench/sweep_student.py). Regression keeps its 3e-3 (UCI Boston and Concrete).
# The hard-label baseline keeps its own rate.
# Batch on small transfer sets (it grows with the rows): 256 for classes, 128 for regression (the UCI recipe).
# epistemic_body_gradient: classes pass a tenth of the epistemic loss's gradient to the hidden layers (0.1). At 100k rows
# a fully shared body cost 0.13 nats of validation NLL, none (0) cost nothing but tracked the teacher's uncertainty
# poorly on small data (seed 0 far-shell Spearman: breast cancer 0.29, iris 0.72, wine 0.90; at 0.1: 0.66, 0.89, 0.94),
# and 0.1 costs 0.001-0.005 of validation NLL (docs/student.md). With the ratio head 0.03 lost the far shell at 100k rows
# (experiments/epistemic-head/: the body's share), so 0.1 stays. Regression keeps the shared body (1)
# it was validated with on UCI.
# uncertainty: classes regress the epistemic share of the teacher's entropy (student.uncertainty.Ratio). On the suite's
# validation rows and shells (12 Flipout and 12 ensemble teachers) it ranked rows as the teacher's mutual information
# does better than the Dirichlet head: worst Spearman per dataset 0.91-0.99 against 0.66-0.97 for Flipout teachers
# (experiments/epistemic-head/). Sequences keep the Dirichlet head their benchmark was measured with.
TASK_DEFAULTS = {"classification": dict(learning_rate=1e-2, baseline_learning_rate=1e-2, uncertainty="ratio",
                                        batch_size=256, epistemic_body_gradient=0.1),
                 "regression": dict(hidden=(100,), learning_rate=3e-3, baseline_learning_rate=3e-3, uncertainty="regressor",
                                    batch_size=128, epistemic_body_gradient=1.0)}
# Regression keeps its own width, 100 units (two draws of the 50-unit teacher): it matched the teacher more closely
# than 50 on Boston's validation slices, and on the test suite's small regression problem the 50-unit student's
# epistemic head ranked far-away inputs at AUROC 0.65 against 1.00 for 100 units (300 epochs each).
FALLBACK_HIDDEN = (64, 64)  # a teacher that records no dense widths
MONITORS = ("transfer", "labels")
# Sequences (distill.sequences): three causal convolutions of 32 (student.model.build_sequence_student), Adam 1e-2
# for classes (the sequence benchmark's setting; the sweep above covered tabular students only).
SEQUENCE_DEFAULTS = {"classification": dict(hidden=(32, 32, 32), learning_rate=1e-2, uncertainty="dirichlet"),
                     "regression": dict(hidden=(32, 32, 32))}
INPUT_DEFAULTS = {"table": {}, "sequence": SEQUENCE_DEFAULTS}  # per kind of input (distill.inputs), over TASK_DEFAULTS
SEARCHED_INPUTS = ("table",)  # --hidden auto searches dense students only
HIDDEN_SEARCH = ((32,), (64,), (128,), (32, 32), (64, 64), (128, 128), (256, 256))
UNCERTAINTY = tuple(HEADS)  # student.uncertainty


@dataclass(frozen=True)
class StudentConfig:
    hidden: tuple[int, ...] | None = None
    sequence_net: str = "conv"  # sequences: conv (causal 1-D convolutions, one pass) | gru (student.model)
    temperature: float = 1.0  # classes: T of Hinton et al.; the soft loss is scaled by T^2
    alpha: float = 0.0  # classes: weight of the hard-label loss on rows that have a true label
    # Where the epistemic score comes from (student.uncertainty.HEADS): "ratio" (a second head regressing the epistemic
    # share of the teacher's total uncertainty), "dirichlet" (classes only: a Dirichlet's log-precision, from the
    # teacher's draws; student.dirichlet), "regressor" (the teacher's epistemic score itself, by MSE) or its log or
    # square root. Default by task and kind of input.
    uncertainty: str | None = None
    epistemic_weight: float = 1.0  # weight of that loss (the head's MSE on its normalised target)
    # tables: the share of the epistemic loss's gradient that reaches the hidden layers (student.model: 1 shared,
    # 0 the epistemic head alone); by task
    epistemic_body_gradient: float | None = None
    learning_rate: float | None = None  # Adam
    baseline_learning_rate: float | None = None  # Adam, the hard-label baseline
    epochs: int = 300
    # The budget grows with the transfer set: at least `steps` optimiser steps and at least `min_epochs` passes over the
    # rows, at most `epochs` passes; the batch grows from `batch_size` with the rows (distill.training.scaled_batch,
    # one step per `rows_per_step` rows, at most 1024), and Adam's rate decays along a cosine over the whole budget.
    steps: int = 30_000
    min_epochs: int = 90
    # ...or as many passes as see `min_epochs_rows` rows, if fewer (the scaling problem, before the interpolation share:
    # 78 passes over the 513k fitted transfer rows of 100k, 39 over the 1.03M of 1M). At 1M, 90 passes (100k steps,
    # 3.4 min) improved the held-out loss by 3% after the 35th, while the student already stood within 0.01 validation
    # NLL of its teacher. The hard-label baseline keeps its 90 passes: a reference is not shortened.
    min_epochs_rows: int | None = 40_000_000
    batch_size: int | None = None  # on small transfer sets; None: the task's (TASK_DEFAULTS)
    rows_per_step: int = 1000
    patience_steps: int = 10_000  # early stopping: this many optimiser steps (at least 3 epochs) without a better value
    # ...and (the student) only from this share of the budget's epochs on, where the cosine has halved the rate: at the
    # peak rate the held-out loss can stall for the patience and then fall again as the rate decays (the scaling problem
    # at 10k rows with 192,000 interpolations: two of three seeds stopped at epoch 27-28 of 90, validation KL to the
    # teacher 0.029-0.032 against 0.007-0.009 for 200,000 trained through; experiments/interpolation-share)
    stop_from: float = 0.5
    # Early stopping: "transfer" = the student's loss against the teacher on a held-out slice of the transfer set
    # (`holdout` of its rows, by a hash of their ids, never trained on: how well the student reproduces the teacher
    # everywhere it will be queried); "labels" = the NLL of the validation rows' true labels.
    monitor: str = "transfer"
    holdout: float = 0.1
    # Widths/depths to try (`--hidden auto`: HIDDEN_SEARCH), those whose FLOPs per row (without the one-unit epistemic
    # head) are at most `max_flops_share` of one teacher weight draw's; the best loss on the held-out transfer slice wins.
    hidden_search: tuple[tuple[int, ...], ...] = ()
    max_flops_share: float = 1.0
    baseline_epochs: int = 300  # the hard-label baseline, same architecture, train split only
    baseline_batch_size: int = 16  # on small data; grows with the train split (distill.training.scaled_batch)
    tflite: bool = True  # also convert the student to TFLite (studies, which compare and do not deploy, skip it)
    gate: bool = True  # refuse to publish a student worse calibrated than its teacher (studies compare, so turn it off)
    gate_nll_margin: float = 0.05  # student val NLL may exceed the teacher's by at most this
    gate_ece_margin: float = 0.05  # and (classes) val ECE by at most this
    seed: int = 0

    def __post_init__(self):
        if self.hidden is not None and (not self.hidden or min(self.hidden) < 1):
            raise BdkError(f"hidden layer sizes must be positive, got {self.hidden}")
        for name in ("epochs", "steps", "min_epochs", "min_epochs_rows", "batch_size", "rows_per_step", "patience_steps",
                     "baseline_epochs", "baseline_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BdkError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.uncertainty is not None and self.uncertainty not in UNCERTAINTY:
            raise BdkError(f"uncertainty must be one of {', '.join(UNCERTAINTY)}, got {self.uncertainty!r}")
        if not self.max_flops_share > 0:
            raise BdkError(f"max_flops_share must be > 0, got {self.max_flops_share}")
        if not 0.0 <= self.stop_from <= 1.0:
            raise BdkError(f"stop_from must be in [0, 1], got {self.stop_from}")
        if not 0.0 < self.holdout < 0.5:
            raise BdkError(f"holdout must be in (0, 0.5), got {self.holdout}")
        from student.model import SEQUENCE_NETS

        if self.sequence_net not in SEQUENCE_NETS:
            raise BdkError(f"sequence_net must be one of {', '.join(SEQUENCE_NETS)}, got {self.sequence_net!r}")
        if self.monitor not in MONITORS:
            raise BdkError(f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        for name in ("learning_rate", "baseline_learning_rate"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise BdkError(f"{name} must be > 0, got {getattr(self, name)}")

    def resolved(self, task: str, inputs: str = "table", teacher_hidden: tuple[int, ...] | None = None) -> "StudentConfig":
        """Task and input-kind (distill.inputs) defaults filled in; dense students without --hidden take the teacher's
        widths (`teacher_hidden`)."""
        defaults = {**TASK_DEFAULTS[task], **INPUT_DEFAULTS[inputs].get(task, {})}
        if "hidden" not in defaults:
            defaults["hidden"] = tuple(teacher_hidden) if teacher_hidden else FALLBACK_HIDDEN
        if self.hidden_search and inputs not in SEARCHED_INPUTS:
            raise BdkError("--hidden auto searches dense students; for sequences pass the widths (e.g. --hidden 32,32,32)")
        if self.uncertainty is not None and HEADS[self.uncertainty].needs_classes and not tasks.get(task).has_classes:
            raise BdkError("the Dirichlet student needs classes; use uncertainty `regressor` for regression")
        return replace(self, **{f.name: defaults[f.name] for f in fields(self)
                                if getattr(self, f.name) is None and f.name in defaults})

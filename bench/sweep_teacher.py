"""Choose a teacher setting on validation data: train the teacher (no soft labels, no student) for each setting of a
grid on each dataset's seed-0 split, and print its validation NLL, ECE and far-shell AUROC.

The far shell here is the teacher stage's validation shell (`val/far_shell_auroc_*` in the teacher's metrics.json):
the evaluation's construction (uniform in the train box widened 2x, outside the box widened 0.5x) with its own
seed, against the validation rows; test rows are never read.

    .venv/bin/python bench/sweep_teacher.py --grid '{"ncp_weight": [0, 0.1, 1]}' --out experiments/ncp-sweep
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

sys.path.insert(0, str(Path(__file__).parent))
from sweeps import grid_settings, print_summary, run_sweep  # noqa: E402


def score(dataset: str, seed: int, overrides: dict, run: Path) -> dict:
    """Train the teacher into `run` (teacher stage only) and read its validation figures from metrics.json."""
    from distill.data import DataConfig
    from bdk.pipeline import teacher_stage
    from teacher.config import TeacherConfig

    m = teacher_stage(DataConfig(dataset=dataset, seed=seed), TeacherConfig(seed=seed, **overrides), run,
                      overwrite=True, progress=False)
    return {"dataset": dataset, "seed": seed, **overrides, "val_nll": m["val/nll"], "val_ece": m["val/ece"],
            "val_accuracy": m["val/accuracy"], "shell_auroc_mi": m["val/far_shell_auroc_epistemic"],
            "shell_auroc_entropy": m["val/far_shell_auroc_total"], "epochs": m["epochs_run"],
            "best_epoch": m["best_epoch"], "seconds": m["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="iris,wine,breast_cancer,digits")
    p.add_argument("--seeds", default="0")
    p.add_argument("--grid", required=True, help='JSON {field: [values]} of TeacherConfig fields')
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    keys, settings = grid_settings(a.grid)
    jobs = [({"dataset": d, "seed": int(s), **o}, f"{d}-seed{s}", partial(score, d, int(s), o))
            for d in a.datasets.split(",") for s in a.seeds.split(",") for o in settings]
    print_summary(run_sweep(a.out, jobs), keys, ["val_nll", "val_ece", "shell_auroc_mi", "shell_auroc_entropy", "seconds"])


if __name__ == "__main__":
    main()

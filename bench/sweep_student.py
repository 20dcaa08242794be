"""Choose a student setting on validation data: distil a student for each setting of a grid from existing teacher
runs (their data, teacher and soft labels are linked, not recomputed), and print its validation NLL and ECE beside
the teacher's, and the far-shell AUROC of its epistemic output.

The far shell is the teacher stage's validation shell (`distill.transfer.far_uniform` with VALIDATION_SHELL_SEED)
against the validation rows; test rows are never read. The student's seed is the run's data seed, as in the
benchmark.

    .venv/bin/python bench/sweep_student.py --runs 'experiments/benchmark/runs/*/seed*/flipout' \\
        --grid '{"epistemic_weight": [1.0, 0.3]}' --out experiments/student-sweep
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

sys.path.insert(0, str(Path(__file__).parent))
from sweeps import grid_settings, print_summary, run_sweep  # noqa: E402


def score(source: Path, overrides: dict, run: Path) -> dict:
    """Distil the student into `run` (linked to `source`'s data, teacher and soft labels); its validation figures."""
    import numpy as np
    import tensorflow as tf

    from distill import data as data_lib
    from distill import metrics
    from bdk.pipeline import student_stage
    from distill.transfer import FAR_SHELL_INNER, FAR_SHELL_OUTER, FAR_SHELL_ROWS, VALIDATION_SHELL_SEED, far_uniform
    from student.config import StudentConfig

    run.mkdir(parents=True, exist_ok=True)
    for part in ("data", "teacher", "soft_labels"):
        if not (run / part).exists():
            (run / part).symlink_to((source / part).resolve())
    data_cfg = json.loads((source / "data" / "config.json").read_text())
    seed = int(data_cfg.get("seed", 0))
    m = student_stage(StudentConfig(gate=False, tflite=False, seed=seed, **overrides), run, progress=False)
    teacher = json.loads((source / "teacher" / "metrics.json").read_text())
    ds = data_lib.load_from_run(run)
    shell = far_uniform(ds, FAR_SHELL_ROWS, FAR_SHELL_INNER, FAR_SHELL_OUTER, VALIDATION_SHELL_SEED)
    serve = tf.saved_model.load(str(run / "student" / "export" / "1")).signatures["serving_default"]
    epistemic = [serve(features=tf.constant(x, tf.float32))["epistemic"].numpy() for x in (ds.raw("val"), shell)]
    return {"dataset": source.parts[-3], "seed": seed, **{k: json.dumps(v) for k, v in overrides.items()},
            "val_nll": m["student/val/nll"], "teacher_val_nll": teacher["val/nll"],
            "val_nll_gap": m["student/val/nll"] - teacher["val/nll"], "val_ece": m["student/val/ece"],
            "teacher_val_ece": teacher["val/ece"], "shell_auroc_epistemic": metrics.auroc(*epistemic),
            "teacher_shell_auroc": teacher.get("val/far_shell_auroc_epistemic", np.nan),
            "epochs": m["epochs_run"], "seconds": m["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="glob of teacher run folders with soft labels (.../<dataset>/seed<k>/flipout)")
    p.add_argument("--grid", required=True, help="JSON {field: [values]} of StudentConfig fields")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    keys, settings = grid_settings(a.grid)
    sources = sorted(Path(r) for r in glob.glob(a.runs))
    if not sources:
        raise SystemExit(f"no run folders match {a.runs}")
    jobs = []
    for o in settings:
        for source in sources:
            name = "-".join(source.parts[-3:-1])  # <dataset>-seed<k>
            key = f"{name}:{json.dumps(o, sort_keys=True)}"
            jobs.append(({"key": key}, name, lambda run, source=source, o=o, key=key: {"key": key, **score(source, o, run)}))
    print_summary(run_sweep(a.out, jobs), keys, ["val_nll_gap", "val_nll", "teacher_val_nll", "val_ece",
                                                 "shell_auroc_epistemic", "seconds"])


if __name__ == "__main__":
    main()

"""Choose a student or transfer-set setting on validation data: distil a student for each setting of a grid from
existing teacher runs, and print its validation figures beside the teacher's.

Grid fields are `StudentConfig` fields, or soft-label fields: `SoftLabelConfig`'s (`samples`) and `TransferConfig`'s
(`perturbations`, `interpolations`, `shell`, ...). With soft-label fields the soft labels are made again
(`bdk soft-labels`, the teacher fixed); without, the run's data, teacher and soft labels are linked, not recomputed.
The student's seed is the run's data seed, as in the benchmark.

Scores, validation only (test rows are never read): the student's validation NLL and ECE against the teacher's;
KL(teacher || student) and the Spearman correlation of the epistemic scores on the validation rows and on the
teacher stage's validation shell
(`distill.transfer.far_uniform` with VALIDATION_SHELL_SEED, the evaluation's construction with its own seed), the
teacher's predictive there drawn 100 times at a fixed seed (`*_kl`, as the evaluation) and REFERENCE_DRAWS times
(`*_kl_ref`: off the data two 100-draw estimates of the teacher differ by a KL of several hundredths); the far-shell
AUROC of the student's epistemic output.

    .venv/bin/python bench/sweep_student.py --runs 'experiments/benchmark/runs/*/seed*/flipout' \\
        --grid '{"epistemic_weight": [1.0, 0.3]}' --out experiments/student-sweep
    .venv/bin/python bench/sweep_student.py --runs 'experiments/benchmark/runs/digits/seed*/flipout' \\
        --grid '{"interpolations": [2000, 20000]}' --out /tmp/transfer-sweep
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
from pathlib import Path

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

sys.path.insert(0, str(Path(__file__).parent))
from sweeps import grid_settings, print_summary, run_sweep  # noqa: E402

TEACHER_DRAWS, TEACHER_SEED = 100, 20261205  # the teacher's predictive on the scored rows
REFERENCE_DRAWS = 4000  # ...and a nearly exact one, within the evaluation's bounds (bdk.evaluate.reference_draws)
SCORED_ROWS = 20_000  # the first validation rows scored


def benchmark_run(source: Path) -> bool:
    """A run of `bdk benchmark`: .../<dataset>/seed<k>/<kind>."""
    return source.parent.name.startswith("seed")


def dataset_name(source: Path) -> str:
    return source.parts[-3] if benchmark_run(source) else source.name


def split_overrides(overrides: dict) -> tuple[dict, dict, dict]:
    """{field: value} -> (SoftLabelConfig, TransferConfig, StudentConfig fields); an unknown field is an error."""
    from distill.transfer import SoftLabelConfig, TransferConfig
    from student.config import StudentConfig

    names = [{f.name for f in dataclasses.fields(c)} - {"transfer"} for c in (SoftLabelConfig, TransferConfig, StudentConfig)]
    unknown = set(overrides).difference(*names)
    if unknown:
        raise SystemExit(f"not a SoftLabelConfig, TransferConfig or StudentConfig field: {', '.join(sorted(unknown))}")
    shared = {k for k in overrides if sum(k in n for n in names) > 1}  # batch_size, seed: which one is meant?
    if shared:
        raise SystemExit(f"{', '.join(sorted(shared))}: a field of more than one config; not swept here")
    return tuple({k: v for k, v in overrides.items() if k in n} for n in names)


def score(source: Path, overrides: dict, run: Path) -> dict:
    """Distil the student into `run` (from `source`'s data and teacher); its validation figures."""
    import numpy as np
    import tensorflow as tf

    from bdk.evaluate import reference_draws
    from bdk.pipeline import soft_labels_stage, student_stage
    from distill import data as data_lib
    from distill import metrics, tasks
    from distill.transfer import (FAR_SHELL_INNER, FAR_SHELL_OUTER, FAR_SHELL_ROWS, VALIDATION_SHELL_SEED,
                                  SoftLabelConfig, TransferConfig, far_uniform)
    from student.config import StudentConfig

    soft, transfer, student = split_overrides(overrides)
    data_cfg = json.loads((source / "data" / "config.json").read_text())
    seed = int(data_cfg.get("seed", 0))
    run.mkdir(parents=True, exist_ok=True)
    for part in ("data", "teacher") + (() if soft or transfer else ("soft_labels",)):
        if not (run / part).exists():
            (run / part).symlink_to((source / part).resolve())
    if soft or transfer:
        soft_labels_stage(SoftLabelConfig(transfer=TransferConfig(seed=seed, **transfer), **soft), run, progress=False)
    m = student_stage(StudentConfig(gate=False, tflite=False, seed=seed, **student), run, progress=False)
    teacher = json.loads((source / "teacher" / "metrics.json").read_text())
    ds = data_lib.load_from_run(run)
    rows = {"val": ds.raw("val")[:SCORED_ROWS],
            "val_shell": far_uniform(ds, FAR_SHELL_ROWS, FAR_SHELL_INNER, FAR_SHELL_OUTER, VALIDATION_SHELL_SEED)}
    teacher_export = run / "teacher" / "export" / "1"
    predictive = tf.saved_model.load(str(teacher_export)).signatures["predictive_seeded"]
    serve = tf.saved_model.load(str(run / "student" / "export" / "1")).signatures["serving_default"]
    task = tasks.get(ds.task)
    epistemic = task.epistemic_output  # the teacher's epistemic score
    out = {}
    for name, x in rows.items():
        x = tf.constant(np.asarray(x, np.float32))
        s = {k: v.numpy() for k, v in serve(features=x).items()}
        reference = max(TEACHER_DRAWS, reference_draws(REFERENCE_DRAWS, len(x), teacher_export))
        for suffix, draws in (("", TEACHER_DRAWS), ("_ref", reference)):
            t = predictive(features=x, num_samples=tf.constant(draws), seed=tf.constant(TEACHER_SEED, tf.int64))
            t = {k: v.numpy() for k, v in t.items()}
            out[f"{name}_kl{suffix}"] = float(task.divergence(t, s).mean())
            out[f"{name}_spearman{suffix}"] = metrics.spearman(t[epistemic], s["epistemic"])
        out[f"{name}_epistemic"] = s["epistemic"]
    return {"dataset": dataset_name(source), "seed": seed, **{k: json.dumps(v) for k, v in overrides.items()},
            "val_nll": m["student/val/nll"], "teacher_val_nll": teacher["val/nll"],
            "val_nll_gap": m["student/val/nll"] - teacher["val/nll"], "val_ece": m.get("student/val/ece"),
            "teacher_val_ece": teacher.get("val/ece"), "val_accuracy": m.get("student/val/accuracy"),
            "teacher_val_accuracy": teacher.get("val/accuracy"), "baseline_val_accuracy": m.get("baseline/val/accuracy"),
            "baseline_val_nll": m.get("baseline/val/nll"),
            **{k: v for k, v in out.items() if "_kl" in k or "_spearman" in k},
            "shell_auroc_epistemic": metrics.auroc(out["val_epistemic"], out["val_shell_epistemic"]),
            "teacher_shell_auroc": teacher.get("val/far_shell_auroc_epistemic", np.nan),
            "rows": m["rows"], "epochs": m["epochs_run"], "stopped_by": m.get("stopped_by"),
            "seconds": m["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="glob of teacher run folders with soft labels (.../<dataset>/seed<k>/flipout)")
    p.add_argument("--grid", required=True,
                   help="JSON {field: [values]} of StudentConfig, SoftLabelConfig or TransferConfig fields")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    keys, settings = grid_settings(a.grid)
    for o in settings:
        split_overrides(o)  # an unknown field fails before any job runs
    sources = sorted(Path(r) for r in glob.glob(a.runs))
    if not sources:
        raise SystemExit(f"no run folders match {a.runs}")
    jobs = []
    for o in settings:
        for source in sources:
            name = f"{dataset_name(source)}-{source.parent.name}" if benchmark_run(source) else source.name
            key = f"{name}:{json.dumps(o, sort_keys=True)}"
            jobs.append(({"key": key}, name, lambda run, source=source, o=o, key=key: {"key": key, **score(source, o, run)}))
    print_summary(run_sweep(a.out, jobs), keys, ["val_nll_gap", "val_kl", "val_shell_kl", "val_shell_kl_ref", "val_ece",
                                                 "val_shell_spearman_ref", "shell_auroc_epistemic", "seconds"])


if __name__ == "__main__":
    main()

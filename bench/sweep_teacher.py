"""Choose a teacher setting on validation data: train the teacher (no soft labels, no student) for each setting of a
grid on each dataset's seed-0 split, and print its validation NLL, ECE and far-shell AUROC.

The far shell here is a validation shell: the evaluation's construction (uniform in the train box widened 2x,
outside the box widened 0.5x) with its own seed, against the validation rows; test rows are never read.

    .venv/bin/python bench/sweep_teacher.py --grid '{"ncp_weight": [0, 0.1, 1]}' --out experiments/ncp-sweep
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

VALIDATION_SHELL_SEED = 777  # not the evaluation's seed (the run's seed): other shell rows than the test report's


def score(dataset: str, seed: int, overrides: dict) -> dict:
    import tf_keras as tfk

    from distill import data as data_lib
    from distill import metrics, tasks
    from distill.evaluate import EvalConfig, far_uniform
    from teacher.config import TeacherConfig
    from teacher.train import VALIDATION_SEED, build_teacher

    ds = data_lib.load(data_lib.DataConfig(dataset=dataset, seed=seed))
    cfg = TeacherConfig(seed=seed, **overrides).resolved(ds.task, len(ds["train"]))
    tfk.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    module, history, best = build_teacher(cfg, ds, progress=False)
    seconds = time.perf_counter() - t0
    ev = EvalConfig()
    shell = ds.normalise(far_uniform(ds, ev.ood_rows, ev.ood_inner, ev.ood_outer, VALIDATION_SHELL_SEED))
    val = {k: v.numpy() for k, v in module.predictive_normalised(ds.scaled("val"), 100, VALIDATION_SEED).items()}
    away = {k: v.numpy() for k, v in module.predictive_normalised(shell, 100, VALIDATION_SEED).items()}
    task = tasks.get(ds.task)
    m = task.metrics(ds.target("val"), val, "val")
    return {"dataset": dataset, "seed": seed, **overrides, "val_nll": m["val/nll"], "val_ece": m["val/ece"],
            "val_accuracy": m["val/accuracy"],
            "shell_auroc_mi": metrics.auroc(val["mutual_information"], away["mutual_information"]),
            "shell_auroc_entropy": metrics.auroc(val["entropy"], away["entropy"]),
            "val_mi": float(val["mutual_information"].mean()), "shell_mi": float(away["mutual_information"].mean()),
            "epochs": len(history), "best_epoch": best, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="iris,wine,breast_cancer,digits")
    p.add_argument("--seeds", default="0")
    p.add_argument("--grid", required=True, help='JSON {field: [values]} of TeacherConfig fields')
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    grid = json.loads(a.grid)
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    a.out.mkdir(parents=True, exist_ok=True)
    results_file = a.out / "sweep.csv"
    rows = pd.read_csv(results_file).to_dict("records") if results_file.exists() else []

    def done(d, s, o):
        return any(r["dataset"] == d and r["seed"] == s and all(r.get(k) == v for k, v in o.items()) for r in rows)

    from tqdm.auto import tqdm

    jobs = [(d, int(s), o) for d in a.datasets.split(",") for s in a.seeds.split(",") for o in settings]
    for d, s, o in tqdm(jobs, desc="sweep", unit="teacher"):
        if done(d, s, o):
            continue
        rows.append(score(d, s, o))
        pd.DataFrame(rows).to_csv(results_file, index=False)  # resumable
    table = pd.DataFrame(rows)
    keys = list(grid)
    summary = table.groupby(["dataset", *keys])[["val_nll", "val_ece", "shell_auroc_mi", "shell_auroc_entropy", "seconds"]].mean()
    print(summary.round(4).to_string())
    print("\nmean over datasets:")
    print(table.groupby(keys)[["val_nll", "val_ece", "shell_auroc_mi", "shell_auroc_entropy"]].mean().round(4).to_string())


if __name__ == "__main__":
    main()

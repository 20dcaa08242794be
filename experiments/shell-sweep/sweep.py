"""Far-shell points in the transfer set: does a larger `--shell` bring the student closer to its teacher off the
data? Chosen on validation only: KL(teacher || student) on the teacher stage's validation shell (distill.transfer:
far_uniform with VALIDATION_SHELL_SEED, the evaluation's construction with its own seed) and on the validation rows.

    .venv/bin/python experiments/shell-sweep/sweep.py --datasets breast_cancer,digits --seeds 0 \
        --shells 2000,8000,32000 --out /tmp/shell-sweep

One teacher per dataset and seed (`bdk teacher`), copied into each variant's run; then `bdk soft-labels --shell N`
and `bdk student --no-gate`. Appends one JSON line per variant to OUT/results.jsonl (resumable).
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

BDK = str(Path(sys.executable).with_name("bdk"))
TEACHER_DRAWS, TEACHER_SEED = 100, 20261205


def bdk(*args) -> None:
    subprocess.run([BDK, *map(str, args), "--no-progress"], check=True, capture_output=True)


def score(run: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    from distill import data as data_lib
    from distill import metrics
    from distill.transfer import FAR_SHELL_INNER, FAR_SHELL_OUTER, FAR_SHELL_ROWS, VALIDATION_SHELL_SEED, far_uniform

    ds = data_lib.load_from_run(run)
    shell = far_uniform(ds, FAR_SHELL_ROWS, FAR_SHELL_INNER, FAR_SHELL_OUTER, VALIDATION_SHELL_SEED)
    teacher = tf.saved_model.load(str(run / "teacher" / "export" / "1")).signatures["predictive_seeded"]
    student = tf.saved_model.load(str(run / "student" / "export" / "1")).signatures["serving_default"]
    out = {}
    for name, x in (("val", ds.raw("val")), ("val_shell", shell)):
        x = tf.constant(np.asarray(x, np.float32))
        t = teacher(features=x, num_samples=tf.constant(TEACHER_DRAWS), seed=tf.constant(TEACHER_SEED, tf.int64))
        s = student(features=x)
        out[f"{name}_kl"] = float(metrics.kl_divergence(t["probs"].numpy(), s["probs"].numpy()).mean())
    m = json.loads((run / "student" / "metrics.json").read_text())
    return {**out, "val_nll": m["student/val/nll"], "teacher_val_nll": m["gate"]["teacher"]["val/nll"],
            "rows": m["rows"], "epochs": m["epochs_run"], "seconds": m["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default="breast_cancer,digits")
    p.add_argument("--seeds", default="0")
    p.add_argument("--shells", default="2000,8000,32000")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results = a.out / "results.jsonl"
    done = {(r["dataset"], r["seed"], r["shell"]) for r in map(json.loads, results.open())} if results.exists() else set()
    for d in a.datasets.split(","):
        for s in map(int, a.seeds.split(",")):
            base = a.out / f"{d}-seed{s}"
            if not (base / "teacher" / "teacher" / "metrics.json").exists():
                bdk("teacher", "--dataset", d, "--seed", s, "--out", base / "teacher", "--overwrite")
            for n in map(int, a.shells.split(",")):
                if (d, s, n) in done:
                    continue
                run = base / f"shell{n}"
                shutil.rmtree(run, ignore_errors=True)
                run.mkdir(parents=True)
                for part in ("data", "teacher"):
                    shutil.copytree(base / "teacher" / part, run / part)
                bdk("soft-labels", "--run", run, "--shell", n)
                bdk("student", "--run", run, "--no-gate")
                row = {"dataset": d, "seed": s, "shell": n, **score(run)}
                print(json.dumps(row), flush=True)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

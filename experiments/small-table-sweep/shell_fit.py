"""How well a distilled student fits the soft labels it was trained on, per transfer source (a record of the check
behind README "Why the far shell stays above 0.01"; not a test).

    .venv/bin/python experiments/small-table-sweep/shell_fit.py RUN [RUN ...]

RUN is a run folder with soft_labels/ and student/export/ (e.g. a `bench/sweep_student.py` run). For each source
(train, perturbed, interpolated, uniform, shell) it prints the mean KL(soft label || student) over that source's rows
(the 10% held-out slice included), the teacher's mean entropy there, and, on the shell, the top-1 agreement and the
student's mean entropy.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

SOFT_COLUMNS = {"id", "source", "label", "probs", "variance", "entropy", "expected_entropy", "mutual_information",
                "mean_log_probs", "num_samples"}


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.maximum(p, 1e-12))).sum(-1)


def main() -> None:
    import tensorflow as tf

    from distill import metrics

    for run in map(Path, sys.argv[1:]):
        table = pa.concat_tables([pq.read_table(f) for f in sorted((run / "soft_labels").glob("part-*.parquet"))])
        features = [c for c in table.column_names if c not in SOFT_COLUMNS]
        source = np.asarray(table.column("source").to_pylist())
        x = np.stack([table.column(c).to_numpy() for c in features], 1).astype(np.float32)  # [N, F]
        p = np.asarray(table.column("probs").to_pylist(), np.float32)  # [N, C]
        serve = tf.saved_model.load(str(run / "student" / "export" / "1")).signatures["serving_default"]
        parts = []
        for name in ("train", "perturbed", "interpolated", "uniform", "shell"):
            rows = source == name
            if rows.any():
                q = serve(features=tf.constant(x[rows]))["probs"].numpy()
                part = f"{name} KL {metrics.kl_divergence(p[rows], q).mean():.4f} (teacher H {entropy(p[rows]).mean():.2f})"
                if name == "shell":
                    agree = (p[rows].argmax(1) == q.argmax(1)).mean()
                    part += f", top-1 agreement {agree:.3f}, student H {entropy(q).mean():.2f}"
                parts.append(part)
        print(f"{run.name}: " + "; ".join(parts))


if __name__ == "__main__":
    main()

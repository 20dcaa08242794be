"""How well the student's epistemic score ranks test rows, against how well the teacher's own estimate can
(prints figures; not a test).

    .venv/bin/python bench/bench_rank_ceiling.py --run RUN [--rows 20000]

Spearman correlations on the first --rows test rows: two 100-draw estimates of the teacher's mutual information
(seeds 1 and 2: the Monte Carlo ceiling of any comparison with a 100-draw teacher), the student's epistemic score
against each, and against a 1,000-draw estimate.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--rows", type=int, default=20_000)
    a = p.parse_args()
    import tensorflow as tf

    from distill import data as data_lib
    from distill import metrics
    from distill.schema import resolve_export

    ds = data_lib.load_from_run(a.run)
    x = tf.constant(np.asarray(ds.raw("test")[:a.rows], np.float32))  # [rows, F]
    teacher = tf.saved_model.load(str(resolve_export(a.run / "teacher" / "export")[0])).signatures["predictive_seeded"]
    student = tf.saved_model.load(str(resolve_export(a.run / "student" / "export")[0])).signatures["serving_default"]

    def mi(draws, seed):
        return teacher(features=x, num_samples=tf.constant(draws), seed=tf.constant(seed, tf.int64))[
            "mutual_information"].numpy()

    first, second, many = mi(100, 1), mi(100, 2), mi(1000, 3)
    score = student(features=x)["epistemic"].numpy()
    print(f"{a.run}: teacher (100 draws) vs teacher (100 draws, another seed) {metrics.spearman(first, second):.3f}; "
          f"student vs teacher (100) {metrics.spearman(first, score):.3f}; "
          f"student vs teacher (1,000) {metrics.spearman(many, score):.3f}")


if __name__ == "__main__":
    main()

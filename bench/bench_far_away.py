"""How teacher and student flag inputs far beyond the data (prints figures; not a test).

    .venv/bin/python bench/bench_far_away.py --run RUN [--widths 1,2,5,10,100]

Rows at t box widths outside the train box (the centre plus t + 0.5 widths along random directions onto the box's
surface, 2,000 rows per t): the teacher's mutual information (200 draws) and the student's epistemic score there, and
the AUROC of each telling those rows from the test rows. The transfer set's far shell reaches 3 box widths; beyond
it the student's export clamps its inputs (student.train.input_bounds).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--widths", default="1,2,5,10,100")
    a = p.parse_args()
    import tensorflow as tf

    from distill import data as data_lib
    from distill import metrics
    from distill.schema import resolve_export

    student = tf.saved_model.load(str(resolve_export(a.run / "student" / "export")[0])).signatures["serving_default"]
    teacher = tf.saved_model.load(str(resolve_export(a.run / "teacher" / "export")[0])).signatures["predictive_seeded"]
    ds = data_lib.load_from_run(a.run)
    x = ds.raw("train")
    lo, hi = x.min(axis=0), x.max(axis=0)
    directions = np.random.default_rng(0).normal(size=(2000, x.shape[1]))
    directions /= np.abs(directions).max(axis=1, keepdims=True)  # [2000, F] onto the box's surface

    def scores(rows):
        rows = tf.constant(np.asarray(rows, np.float32))
        t = teacher(features=rows, num_samples=tf.constant(200), seed=tf.constant(1, tf.int64))
        return t["mutual_information"].numpy(), student(features=rows)["epistemic"].numpy()

    test_t, test_s = scores(ds.raw("test"))
    print(f"test rows: teacher MI median {np.median(test_t):.3g}, student epistemic median {np.median(test_s):.3g}")
    for t in map(float, a.widths.split(",")):
        far_t, far_s = scores((lo + hi) / 2 + directions * (hi - lo) * (0.5 + t))
        print(f"{t:g} box widths out: teacher MI median {np.median(far_t):.3g}, AUROC {metrics.auroc(test_t, far_t):.3f}"
              f" | student epistemic median {np.median(far_s):.3g}, AUROC {metrics.auroc(test_s, far_s):.3f}")


if __name__ == "__main__":
    main()

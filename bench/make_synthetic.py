"""Synthetic tabular problems at any size (not committed: regenerate them).

    .venv/bin/python bench/make_synthetic.py --rows 1000000 --out /tmp/synthetic-1m.parquet
    .venv/bin/python bench/make_synthetic.py --problem friedman1 --rows 300000 --out /tmp/friedman-300k.parquet

`classification`: scikit-learn's `make_classification` (50 features, 10 classes, seeded). `friedman1`: its
`make_friedman1` regression (10 features, 5 of them used, Gaussian noise of std `--noise`), target in `label`.
Written as Parquet in row-group chunks with the label in column `label`: `bdk run --dataset FILE` reads it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import make_classification


def make(rows: int, features: int = 50, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[rows, features] float32 inputs and [rows] int labels: 20 informative features, 10 redundant,
    2 clusters per class, 1% of labels flipped (the Bayes error of the problem)."""
    x, y = make_classification(n_samples=rows, n_features=features, n_informative=20, n_redundant=10,
                               n_classes=classes, n_clusters_per_class=2, flip_y=0.01, class_sep=1.0,
                               random_state=seed)
    return x.astype(np.float32), y.astype(np.int64)


def make_friedman1(rows: int, noise: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[rows, 10] float32 inputs uniform in [0, 1] and [rows] float32 targets
    10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + N(0, noise^2)."""
    from sklearn.datasets import make_friedman1 as friedman

    x, y = friedman(n_samples=rows, n_features=10, noise=noise, random_state=seed)
    return x.astype(np.float32), y.astype(np.float32)


def write(x: np.ndarray, y: np.ndarray, out: Path, chunk: int = 100_000) -> None:
    label = pa.int64() if np.issubdtype(y.dtype, np.integer) else pa.float32()
    schema = pa.schema([pa.field(f"x{j:02d}", pa.float32()) for j in range(x.shape[1])] + [pa.field("label", label)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, len(x), chunk):
            cols = [pa.array(x[start:start + chunk, j]) for j in range(x.shape[1])] + [pa.array(y[start:start + chunk])]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
    tmp.replace(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=("classification", "friedman1"), default="classification")
    parser.add_argument("--noise", type=float, default=1.0, help="friedman1: the noise std")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.problem == "friedman1":
        x, y = make_friedman1(args.rows, args.noise, args.seed)
    else:
        x, y = make(args.rows, args.features, args.classes, args.seed)
    write(x, y, args.out)
    print(f"{args.out}: {args.rows} rows x {x.shape[1]} features, " + (f"{args.classes} classes" if args.problem ==
          "classification" else f"friedman1 regression, noise {args.noise}"))


if __name__ == "__main__":
    main()

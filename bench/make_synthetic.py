"""A synthetic tabular classification problem at any size (not committed: regenerate it).

    .venv/bin/python bench/make_synthetic.py --rows 1000000 --out /tmp/synthetic-1m.parquet

scikit-learn's `make_classification` (50 features, 10 classes, seeded), written as Parquet in row-group
chunks with the label in column `label`: `bdk run --dataset /tmp/synthetic-1m.parquet` reads it.
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


def write(x: np.ndarray, y: np.ndarray, out: Path, chunk: int = 100_000) -> None:
    schema = pa.schema([pa.field(f"x{j:02d}", pa.float32()) for j in range(x.shape[1])] + [pa.field("label", pa.int64())])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, len(x), chunk):
            cols = [pa.array(x[start:start + chunk, j]) for j in range(x.shape[1])] + [pa.array(y[start:start + chunk])]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
    tmp.replace(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    x, y = make(args.rows, args.features, args.classes, args.seed)
    write(x, y, args.out)
    print(f"{args.out}: {args.rows} rows x {args.features} features, {args.classes} classes")


if __name__ == "__main__":
    main()

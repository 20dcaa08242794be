"""A generated mixed table with categorical interactions (for bench/bench_mixed.py; not committed data).

    .venv/bin/python bench/make_mixed.py --task classification --out /tmp/interactions.csv [--rows 4000 --seed 0]

Columns (as a user would have them: text, integer codes, yes/no, empty cells):
- `id`: 1, 2, ... (picked up as the row id by `bdk`);
- `region`: text, 6 levels with frequencies .25/.25/.2/.15/.1/.05, 2% empty cells;
- `grade`: integer codes 1..5 (categorical by `bdk`'s integer-code rule);
- `x1`: uniform on [-2, 2], 4% empty cells;  `x2`: standard normal;  `z`: standard normal, unrelated to the label;
- `promo`: text yes/no, 1% empty cells;
- the label, from the score
      s = slope[region] * x1 + shift[grade] + tilt[grade] * x2 + 1.0 * [promo = yes and region in {east, islands}]
  classification `band`: ordinal logistic over s with cut points -1 and 1 and scale 0.5 (classes low/mid/high);
  regression `y`: s plus Gaussian noise of std 0.3 (0.6 on the islands).
The slope's sign flips with the region and the x2 slope with the grade, so a model must learn the interactions (no
single monotone effect of x1 or x2). Labels are drawn from the complete inputs; the cells are emptied afterwards
(missing completely at random), so an empty cell costs information.

`oracle` returns the generating distribution per row (from the complete inputs): the NLL floor a model cannot beat
on average (it sees the emptied cells as empty).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

REGIONS = ("north", "south", "east", "west", "centre", "islands")
REGION_P = (0.25, 0.25, 0.2, 0.15, 0.1, 0.05)
SLOPE = {"north": 2.0, "south": -2.0, "east": 0.5, "west": 1.0, "centre": -1.0, "islands": 3.0}
SHIFT = {1: -1.0, 2: -0.5, 3: 0.0, 4: 0.5, 5: 1.0}
TILT = {1: 1.5, 2: 0.5, 3: 0.0, 4: -0.5, 5: -1.5}
CUTS = (-1.0, 1.0)
SCALE = 0.5
CLASSES = ("low", "mid", "high")
NOISE = {r: (0.6 if r == "islands" else 0.3) for r in REGIONS}
LABEL = {"classification": "band", "regression": "y"}


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def generate(task: str = "classification", rows: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """(table, oracle): oracle is {"probs": [n, 3]} (classes in CLASSES order) or {"mean": [n], "std": [n]}, by row."""
    rng = np.random.default_rng(seed)
    region = rng.choice(REGIONS, rows, p=REGION_P)
    grade = rng.integers(1, 6, rows)
    x1 = rng.uniform(-2.0, 2.0, rows)
    x2 = rng.normal(0.0, 1.0, rows)
    z = rng.normal(0.0, 1.0, rows)
    promo = rng.random(rows) < 0.4
    s = (np.array([SLOPE[r] for r in region]) * x1 + np.array([SHIFT[g] for g in grade])
         + np.array([TILT[g] for g in grade]) * x2 + 1.0 * (promo & np.isin(region, ["east", "islands"])))
    if task == "classification":
        above = [_sigmoid((s - c) / SCALE) for c in CUTS]  # P(y > k)
        probs = np.column_stack([1.0 - above[0], above[0] - above[1], above[1]])
        u = rng.random(rows)
        label = np.array(CLASSES, dtype=object)[(u[:, None] > np.cumsum(probs, axis=1)[:, :2]).sum(axis=1)]
        oracle = {"probs": probs}
    elif task == "regression":
        std = np.array([NOISE[r] for r in region])
        label = s + rng.normal(0.0, 1.0, rows) * std
        oracle = {"mean": s, "std": std}
    else:
        raise ValueError(f"task {task!r}: classification or regression")
    df = pd.DataFrame({"id": np.arange(1, rows + 1), "region": region.astype(object), "grade": grade, "x1": x1,
                       "x2": x2, "z": z, "promo": np.where(promo, "yes", "no").astype(object),
                       LABEL[task]: label})
    for col, share in (("region", 0.02), ("x1", 0.04), ("promo", 0.01)):
        df.loc[rng.random(rows) < share, col] = None
    return df, oracle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(LABEL), default="classification")
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    df, _ = generate(a.task, a.rows, a.seed)
    df.to_csv(a.out, index=False)
    print(f"{a.out}: {len(df)} rows, label {LABEL[a.task]!r}")


if __name__ == "__main__":
    main()

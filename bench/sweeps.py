"""The loop both settings sweeps share (sweep_teacher.py, sweep_student.py): a grid of config overrides, one job per
(setting, source), results appended to OUT/sweep.csv after every job, so a stopped sweep resumes where it was."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable

import pandas as pd


def grid_settings(grid: str) -> tuple[list[str], list[dict]]:
    """A JSON {field: [values]} -> (the fields, every combination as {field: value})."""
    fields = json.loads(grid)
    return list(fields), [dict(zip(fields, values)) for values in itertools.product(*fields.values())]


def run_sweep(out: Path, jobs: list[tuple[dict, str, Callable[[Path], dict]]]) -> pd.DataFrame:
    """jobs: (identity, name, score); a job whose identity matches a row of OUT/sweep.csv is not redone, else
    `score(OUT/runs/<name>-<row>)` gives its row (which must contain the identity). Returns every row."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "sweep.csv"
    rows = pd.read_csv(results_file).to_dict("records") if results_file.exists() else []
    for identity, name, score in tqdm(jobs, desc="sweep", unit="run"):
        if any(all(r.get(k) == v for k, v in identity.items()) for r in rows):
            continue
        rows.append(score(out / "runs" / f"{name}-{len(rows)}"))
        pd.DataFrame(rows).to_csv(results_file, index=False)
    return pd.DataFrame(rows)


def print_summary(table: pd.DataFrame, keys: list[str], columns: list[str]) -> None:
    """Means per dataset and setting, then per setting over the datasets."""
    print(table.groupby(["dataset", *keys])[columns].mean().round(4).to_string())
    print("\nmean over datasets:")
    print(table.groupby(keys)[columns].mean().round(4).to_string())

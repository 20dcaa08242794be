"""The bundled Palmer penguins table and bench/make_mixed.py's generated table load with no preprocessing (kinds,
empty cells, splits, the unseen-category bucket). No training: bench/bench_mixed.py measures the runs."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distill import data

ROOT = Path(__file__).resolve().parents[1]
PENGUINS = ROOT / "data" / "penguins.csv"
PENGUINS_SHA256 = "f204db2c753b0937caac3cb35258562c14f073e4bbc76be24b4c51ce22767a93"  # palmerpenguins 0.1.6's file
sys.path.insert(0, str(ROOT / "bench"))


def _kinds(ds: data.Dataset) -> dict[str, str]:
    return {c.name: c.kind for c in ds.feature_spec.columns}


def test_penguins_file_is_the_packaged_one():
    assert hashlib.sha256(PENGUINS.read_bytes()).hexdigest() == PENGUINS_SHA256
    df = data.read_table(str(PENGUINS))
    assert df.shape == (344, 8)
    assert df["sex"].isna().sum() == 11 and df["bill_length_mm"].isna().sum() == 2  # the NA cells, as shipped


def test_penguins_loads_as_a_mixed_table():
    ds = data.load(data.DataConfig(dataset=str(PENGUINS), label_column="species"))
    assert ds.task == "classification" and ds.class_names == ["Adelie", "Chinstrap", "Gentoo"]
    assert _kinds(ds) == {"island": "categorical", "bill_length_mm": "numeric", "bill_depth_mm": "numeric",
                          "flipper_length_mm": "numeric", "body_mass_g": "numeric", "sex": "categorical",
                          "year": "categorical"}
    assert {k: len(s.ids) for k, s in ds.splits.items()} == {"train": 220, "val": 55, "test": 69}
    names = ds.feature_names
    assert "sex=<missing>" in names and "island=<oov>" in names and "year=2008" in names
    row = pd.DataFrame({"island": ["Anvers", "Dream"], "bill_length_mm": [46.5, None], "bill_depth_mm": [17.9, 17.9],
                        "flipper_length_mm": [192, 192], "body_mass_g": [3500, 3500], "sex": [None, "male"],
                        "year": [2007, 2009]})
    x = pd.DataFrame(ds.feature_spec.encode(row), columns=names)
    assert x["island=<oov>"].tolist() == [1.0, 0.0] and x["island=Dream"].tolist() == [0.0, 1.0]
    assert x["sex=<missing>"].tolist() == [1.0, 0.0]
    assert x["bill_length_mm_missing"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("task, label, kind", [("classification", "band", "classification"),
                                               ("regression", "y", "regression")])
def test_generated_interactions_table(tmp_path, task, label, kind):
    import make_mixed

    df, oracle = make_mixed.generate(task, rows=1000, seed=0)
    again, _ = make_mixed.generate(task, rows=1000, seed=0)
    pd.testing.assert_frame_equal(df, again)
    assert df[["region", "x1", "promo"]].isna().any().all()  # empty cells in each of them
    if task == "classification":
        assert np.allclose(oracle["probs"].sum(1), 1.0) and (oracle["probs"] >= 0).all()
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    ds = data.load(data.DataConfig(dataset=str(path), label_column=label))
    assert ds.task == kind
    assert _kinds(ds) == {"region": "categorical", "grade": "categorical", "x1": "numeric", "x2": "numeric",
                          "z": "numeric", "promo": "boolean"}
    assert "region=<missing>" in ds.feature_names and "x1_missing" in ds.feature_names
    assert sorted(int(i) for s in ds.splits.values() for i in s.ids) == list(range(1, 1001))  # the `id` column

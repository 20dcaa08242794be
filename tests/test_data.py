"""Data loading, validation, splitting and scaling."""
import numpy as np
import pandas as pd
import pytest

from distill import data
from distill.errors import BdkError


def test_iris_split_is_stratified_disjoint_and_seeded(iris):
    sizes = {k: len(v) for k, v in iris.splits.items()}
    assert sizes == {"train": 96, "val": 24, "test": 30}
    assert np.bincount(iris["test"].y).tolist() == [10, 10, 10]
    ids = [set(s.ids) for s in iris.splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 150
    again = data.load(data.DataConfig(seed=0))
    other = data.load(data.DataConfig(seed=1))
    assert list(again["test"].ids) == list(iris["test"].ids)
    assert list(other["test"].ids) != list(iris["test"].ids)
    assert iris.class_names == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]


def test_scaler_uses_train_split_only(iris):
    xs = iris.scaled("train")
    assert np.allclose(xs.min(0), 0) and np.allclose(xs.max(0), 1)
    assert np.allclose(iris.scaler.inverse(xs), iris["train"].x, atol=1e-5)
    assert np.allclose(iris.scaler.minimum, iris["train"].x.min(0))
    # min/max came from train alone: at this seed some val/test value lies outside the train range
    held_out = np.concatenate([iris["val"].x, iris["test"].x])
    assert ((held_out < np.array(iris.scaler.minimum) - 1e-6) | (held_out > np.array(iris.scaler.maximum) + 1e-6)).any()


def test_saved_split_round_trips(iris, tmp_path):
    data.save(iris, tmp_path / "data")
    back = data.load_from_run(tmp_path)
    for name in data.SPLITS:
        assert list(back[name].ids) == list(iris[name].ids)
        assert np.allclose(back[name].x, iris[name].x)
        assert (back[name].y == iris[name].y).all()
    assert back.scaler == iris.scaler


def _frame(n_per_class=10, classes=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for k, c in enumerate(classes):
        for _ in range(n_per_class):
            rows.append({"f1": rng.normal(k), "f2": rng.normal(-k), "target": c})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_local_file_with_label_column(tmp_path, suffix):
    path = tmp_path / f"t.{suffix}"
    df = _frame()
    df.to_csv(path, index=False) if suffix == "csv" else df.to_parquet(path)
    ds = data.load(data.DataConfig(dataset=str(path), label_column="target"))
    assert ds.feature_names == ["f1", "f2"] and ds.class_names == ["a", "b", "c"]
    assert sum(len(s) for s in ds.splits.values()) == 30


def _error(tmp_path, df, **cfg) -> str:
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(BdkError) as e:
        data.load(data.DataConfig(dataset=str(path), **cfg))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_have_one_line_errors(tmp_path):
    assert "not found" in _error(tmp_path, _frame(), label_column="nope")
    bad = _frame()
    bad["f2"] = bad["f2"].astype(str)
    bad.loc[3, "f2"] = "abc"
    assert "'f2' is not numeric" in _error(tmp_path, bad, label_column="target")
    assert "at least 2" in _error(tmp_path, _frame(classes=("a",)), label_column="target")
    small = pd.concat([_frame(), _frame(n_per_class=2, classes=("z",))], ignore_index=True)
    assert "'z' has only 2" in _error(tmp_path, small, label_column="target")
    with pytest.raises(BdkError, match="not found"):
        data.load(data.DataConfig(dataset=str(tmp_path / "missing.csv")))


def test_missing_cells_rejected_with_rows_or_dropped(tmp_path):
    df = _frame()
    df.loc[[4, 11], "f1"] = np.nan
    msg = _error(tmp_path, df, label_column="target")
    assert "rows 5, 12" in msg and "--drop-missing" in msg
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "bad.csv"), label_column="target", drop_missing=True))
    assert sum(len(s) for s in ds.splits.values()) == 28


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BdkError, match="network"):
        data.read_table("hf:scikit-learn/iris")


def test_integer_labels_with_two_digits_map_to_their_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(11), 6)  # 0..10: "10" sorts before "2" as text
    df = pd.DataFrame({"f": labels + rng.normal(0, 0.01, len(labels)), "label": labels})
    path = tmp_path / "ints.csv"
    df.to_csv(path, index=False)
    ds = data.load(data.DataConfig(dataset=str(path), test_fraction=0.25, val_fraction=0.25))
    assert ds.class_names == [str(i) for i in range(11)]
    for s in ds.splits.values():  # each row's class is the integer its feature encodes
        assert (np.round(s.x[:, 0]).astype(int) == np.array([int(ds.class_names[k]) for k in s.y])).all()


def test_dropped_rows_keep_the_file_row_numbers_as_ids(tmp_path):
    df = _frame()
    df.loc[0, "f1"] = np.nan
    path = tmp_path / "gap.csv"
    df.to_csv(path, index=False)
    ds = data.load(data.DataConfig(dataset=str(path), label_column="target", drop_missing=True))
    by_id = {i: x for s in ds.splits.values() for i, x in zip(s.ids, s.x)}
    assert "1" not in by_id and set(by_id) == {str(i) for i in range(2, 31)}
    assert np.allclose(by_id["18"], df.loc[17, ["f1", "f2"]].to_numpy(np.float32))

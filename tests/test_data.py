"""Data loading, validation, splitting and scaling; task inference."""
import json

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
    assert iris.task == "classification" and iris.scaler.kind == "standard" and iris.target_scaler is None
    xs = iris.scaled("train")
    assert np.allclose(xs.mean(0), 0, atol=1e-5) and np.allclose(xs.std(0), 1, atol=1e-5)
    assert not np.allclose(iris.scaled("test").mean(0), 0, atol=1e-5)  # fitted on train only
    assert np.allclose(iris.scaler.inverse(xs), iris["train"].x, atol=1e-5)
    x = iris["train"].x.astype(np.float64)
    assert np.allclose(iris.scaler.shift, x.mean(0)) and np.allclose(iris.scaler.scale, x.std(0), atol=1e-6)
    # class labels are their own model units
    assert (iris.target("test") == iris["test"].y).all() and (iris.target_shift, iris.target_scale) == (0.0, 1.0)


def test_saved_split_round_trips(iris, tmp_path):
    data.save(iris, tmp_path / "data")
    back = data.load_from_run(tmp_path)
    for name in data.SPLITS:
        assert list(back[name].ids) == list(iris[name].ids)
        assert np.allclose(back[name].x, iris[name].x)
        assert (back[name].y == iris[name].y).all()
    assert back.scaler == iris.scaler and back.task == "classification" and back.target_scaler is None


def _one_frame(ds) -> pd.DataFrame:
    """splits.parquet's content as the writer before the chunked one built it: one frame of every split."""
    frames = []
    for name, s in ds.splits.items():
        f = pd.DataFrame(s.x, columns=ds.feature_names)
        f.insert(0, "id", s.ids.astype(str))
        f.insert(1, "split", name)
        f["label"] = s.y
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("rows", [7, 1000])
def test_chunked_writer_and_batched_reader_match_the_whole_table(iris, tmp_path, monkeypatch, rows):
    """The piecewise writer stores what one frame of every split stored, and the batched reader (with batches and
    pieces smaller than a split: 7 rows) gives exactly the rows, ids and labels of reading the whole table."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(data, "WRITE_CHUNK_ROWS", rows)
    monkeypatch.setattr(data, "READ_BATCH_ROWS", rows)
    data.save(iris, tmp_path / "data")
    stored = pd.read_parquet(tmp_path / "data" / "splits.parquet")
    pd.testing.assert_frame_equal(stored, _one_frame(iris))
    _one_frame(iris).to_parquet(tmp_path / "one.parquet", index=False)
    assert pq.read_schema(tmp_path / "data" / "splits.parquet").equals(pq.read_schema(tmp_path / "one.parquet"),
                                                                     check_metadata=True)
    back = data.load_from_run(tmp_path)
    for name in data.SPLITS:
        whole = stored[stored["split"] == name]
        np.testing.assert_array_equal(back[name].x, whole[iris.feature_names].to_numpy(np.float32))
        np.testing.assert_array_equal(back[name].ids, whole["id"].to_numpy().astype(str))
        np.testing.assert_array_equal(back[name].y, whole["label"].to_numpy())
        assert back[name].x.dtype == np.float32 and back[name].y.dtype == np.int64
    part = data.load_from_run(tmp_path, ("val", "test"))
    assert set(part.splits) == {"val", "test"}
    part.train_box = data.train_box(tmp_path, part)
    for got, want in zip(part.box(), iris.box()):  # the train box, read batch by batch without the train rows
        np.testing.assert_array_equal(got, want)


def test_regression_dataset_is_z_scored_on_train(tmp_path):
    cfg = data.DataConfig(dataset="boston", test_fraction=0.1, val_fraction=0.1, seed=3)
    ds = data.load(cfg)
    assert ds.task == "regression" and ds.class_names == [] and ds.label_column == "medv"
    assert "medv" not in ds.feature_names and "id" not in ds.feature_names and ds.num_features == 13
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 409, "val": 46, "test": 51} and sum(sizes.values()) == 506  # the UCI 90/10, then 10%
    assert ds["train"].y.dtype == np.float32 and ds["train"].y.min() >= 5 and ds["train"].y.max() <= 50
    ids = [set(s.ids) for s in ds.splits.values()]
    assert len(set.union(*ids)) == 506
    # features and target standardised with the train split's moments
    assert ds.scaler.kind == "standard" and ds.target_scaler.kind == "standard"
    z = ds.scaled("train")
    assert np.allclose(z.mean(0), 0, atol=1e-4) and np.allclose(z.std(0), 1, atol=1e-3)
    t = ds.target("train")
    assert abs(t.mean()) < 1e-4 and abs(t.std() - 1) < 1e-3
    assert ds.target_shift == pytest.approx(float(ds["train"].y.mean()), rel=1e-5)
    assert ds.target_scale == pytest.approx(float(ds["train"].y.std()), rel=1e-4)
    np.testing.assert_allclose(ds.target("test") * ds.target_scale + ds.target_shift, ds["test"].y, rtol=1e-5)
    assert abs(ds.target("test").mean()) > 1e-3  # held-out rows are not re-centred on themselves
    # seeded permutation splits
    assert list(data.load(cfg)["test"].ids) == list(ds["test"].ids)
    assert list(data.load(data.DataConfig(dataset="boston", test_fraction=0.1, val_fraction=0.1, seed=4))["test"].ids) \
        != list(ds["test"].ids)
    # round trip through the run folder, float targets and both normalisers included
    data.save(ds, tmp_path / "data")
    back = data.load_from_run(tmp_path)
    assert back.task == "regression" and back.scaler == ds.scaler and back.target_scaler == ds.target_scaler
    for name in data.SPLITS:
        assert list(back[name].ids) == list(ds[name].ids)
        np.testing.assert_array_equal(back[name].y, ds[name].y)
        assert back[name].y.dtype == np.float32


def test_old_run_folders_still_load(iris, tmp_path):
    """dataset.json written before the task abstraction: min/max scaler, no task (classification)."""
    data.save(iris, tmp_path / "data")
    path = tmp_path / "data" / "dataset.json"
    meta = json.loads(path.read_text())
    lo, hi = iris["train"].x.min(0), iris["train"].x.max(0)
    old = {"source": meta["source"], "label_column": meta["label_column"], "feature_names": meta["feature_names"],
           "class_names": meta["class_names"], "scaler": {"minimum": lo.tolist(), "maximum": hi.tolist()}}
    path.write_text(json.dumps(old))
    back = data.load_from_run(tmp_path)
    assert back.task == "classification" and back.target_scaler is None and back.class_names == iris.class_names
    assert back.scaler.kind == "minmax"
    np.testing.assert_allclose(back.scaled("test"), (iris["test"].x - lo) / (hi - lo), atol=1e-5)
    assert back["test"].y.dtype == np.int64 and (back["test"].y == iris["test"].y).all()
    # the UCI experiment's old z-score normaliser reads as a standard one
    z = data.Normaliser.from_json({"mean": [1.0, 2.0], "std": [2.0, 4.0]})
    assert z.kind == "standard" and np.allclose(z.transform(np.array([[3.0, 6.0]])), [[1.0, 1.0]])


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
    msg = _error(tmp_path, bad, label_column="target")  # mostly numbers, one text cell: a typo, not categories
    assert "'f2' mixes numbers and text" in msg and "'abc' in data row 4" in msg and "--categorical f2" in msg
    assert "at least 2" in _error(tmp_path, _frame(classes=("a",)), label_column="target")
    small = pd.concat([_frame(), _frame(n_per_class=2, classes=("z",))], ignore_index=True)
    assert "'z' has only 2" in _error(tmp_path, small, label_column="target")
    with pytest.raises(BdkError, match="not found"):
        data.load(data.DataConfig(dataset=str(tmp_path / "missing.csv")))


def test_missing_cells_refused_with_rows_dropped_or_imputed(tmp_path):
    df = _frame()
    df.loc[[4, 11], "f1"] = np.nan
    msg = _error(tmp_path, df, label_column="target", missing="refuse")
    assert "rows 5, 12" in msg and "--missing drop" in msg
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "bad.csv"), label_column="target", drop_missing=True))
    assert sum(len(s) for s in ds.splits.values()) == 28 and ds.feature_names == ["f1", "f2"]
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "bad.csv"), label_column="target", missing="drop"))
    assert sum(len(s) for s in ds.splits.values()) == 28
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "bad.csv"), label_column="target"))  # default: impute
    assert sum(len(s) for s in ds.splits.values()) == 30
    if any(str(i) in ds["train"].ids for i in (5, 12)):  # the gap is in train: an indicator feature
        assert ds.feature_names == ["f1", "f1_missing", "f2"]
    with pytest.raises(BdkError, match="contradict"):
        data.DataConfig(drop_missing=True, missing="refuse")
    with pytest.raises(BdkError, match="--missing must be"):
        data.DataConfig(missing="mean")


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


def test_task_is_inferred_from_the_label(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    floats = pd.DataFrame({"x": x, "label": 2 * x + rng.normal(0, 0.1, 200)})  # a float with 200 distinct values
    assert data.infer_task(floats["label"])[0] == "regression"
    strings = pd.DataFrame({"x": x, "label": np.where(x > 0, "up", "down")})
    assert data.infer_task(strings["label"])[0] == "classification"
    few_ints = pd.DataFrame({"x": x, "label": (x > 0).astype(int) + (x > 1)})  # 3 integer values
    assert data.infer_task(few_ints["label"])[0] == "classification"
    for name, df, task in (("floats", floats, "regression"), ("strings", strings, "classification")):
        path = tmp_path / f"{name}.csv"
        df.to_csv(path, index=False)
        ds = data.load(data.DataConfig(dataset=str(path)))
        assert ds.task == task, name
        assert (ds.class_names == []) == (task == "regression")
    # an explicit task wins over the inference; a bad one is a one-line error
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "floats.csv"), task="regression"))
    assert ds.task == "regression"
    with pytest.raises(BdkError, match="unknown task"):
        data.DataConfig(task="ranking")
    with pytest.raises(BdkError, match="not numeric"):
        data.load(data.DataConfig(dataset=str(tmp_path / "strings.csv"), task="regression"))

"""The feature specification (distill/features.py): kinds, missing values, the train-fitted encoding, task inference
on integer targets, and raw tables through the CLI."""
import json

import numpy as np
import pandas as pd
import pytest

from distill import data
from distill.errors import BdkError
from distill.features import MISSING_CATEGORY, OOV, FeatureSpec

CUT_EFFECT = {"Fair": 1.0, "Good": 2.0, "Ideal": 4.0, "Premium": 3.0}


def mixed_frame(rows: int = 3000, seed: int = 0, regression: bool = True) -> pd.DataFrame:
    """A generated mixed table: a 4-level text column `cut` (with empty cells), numeric `carat` (with empty cells),
    numeric `depth`, boolean `flag`; label = f(cut) x carat (+ noise), or its sign around the median as classes."""
    rng = np.random.default_rng(seed)
    cut = rng.choice(list(CUT_EFFECT), rows, p=[0.1, 0.2, 0.4, 0.3])
    carat = rng.uniform(0.2, 2.0, rows)
    y = np.array([CUT_EFFECT[c] for c in cut]) * carat + rng.normal(0, 0.1, rows)
    df = pd.DataFrame({"id": np.arange(1000, 1000 + rows), "carat": carat, "cut": cut.astype(object),
                       "depth": rng.normal(60, 2, rows), "flag": rng.integers(0, 2, rows).astype(bool),
                       "price": y if regression else np.where(y > np.median(y), "high", "low")})
    df.loc[rng.choice(rows, rows // 30, replace=False), "carat"] = np.nan
    df.loc[rng.choice(rows, rows // 60, replace=False), "cut"] = None
    return df


@pytest.fixture(scope="module")
def mixed_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "mixed.csv"
    mixed_frame().to_csv(path, index=False)
    return path


def _load(path, **cfg) -> data.Dataset:
    return data.load(data.DataConfig(dataset=str(path), label_column="price", **cfg))


# ---------------------------------------------------------------- task inference


@pytest.mark.parametrize("distinct, task", [(3, "classification"), (20, "classification"), (21, "regression"),
                                            (577, "regression")])
def test_task_inference_on_integer_targets(distinct, task):
    rng = np.random.default_rng(0)
    labels = pd.Series(rng.permutation(np.resize(np.arange(-86, -86 + distinct), 20_000)))  # whole minutes
    got, why = data.infer_task(labels)
    assert got == task, why
    assert str(distinct) in why
    note = data.task_note(got, why)
    assert "--task" in note and "more than 20 distinct integers" in note


def test_fractional_or_text_labels():
    assert data.infer_task(pd.Series([0.5, 1.5, 0.5, 1.5]))[0] == "regression"  # any fractional value
    assert data.infer_task(pd.Series([0.0, 1.0, 2.0] * 10))[0] == "classification"  # integral floats
    assert data.infer_task(pd.Series(["a", "b"] * 20))[0] == "classification"
    assert data.infer_task(pd.Series([True, False] * 20))[0] == "classification"


def test_minutes_target_is_regression_not_a_577_class_failure():
    """A whole number of minutes with 577 distinct values (a few with one row) is a regression target."""
    rng = np.random.default_rng(1)
    n = 5000
    x = rng.normal(size=n)
    minutes = np.round(60 * x + rng.normal(0, 30, n)).astype(int)
    df = pd.DataFrame({"x": x, "delay": minutes})
    assert df["delay"].nunique() > 100 and (df["delay"].value_counts() == 1).any()
    ds = data.build_dataset(df, data.DataConfig(dataset="delays.csv", label_column="delay"))
    assert ds.task == "regression" and "distinct integer values" in ds.task_note
    with pytest.raises(BdkError, match="has only 1 row"):  # what it was before, now only when asked for
        data.build_dataset(df, data.DataConfig(dataset="delays.csv", label_column="delay", task="classification"))


# ---------------------------------------------------------------- kinds, missing values, encoding


def test_kinds_are_inferred_recorded_and_overridable(mixed_csv, tmp_path):
    ds = _load(mixed_csv)
    spec = ds.feature_spec
    assert {c.name: c.kind for c in spec.columns} == {"carat": "numeric", "cut": "categorical", "depth": "numeric",
                                                      "flag": "boolean"}
    assert ds.task == "regression"
    assert ds.feature_names == ["carat", "carat_missing", "cut=Fair", "cut=Good", "cut=Ideal", "cut=Premium",
                                f"cut={MISSING_CATEGORY}", f"cut={OOV}", "depth", "flag"]
    data.save(ds, tmp_path / "data")
    meta = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert meta["raw_columns"] == ["carat", "cut", "depth", "flag"] and meta["encoded_features"] == ds.feature_names
    assert [c["kind"] for c in meta["feature_spec"]["columns"]] == ["numeric", "categorical", "numeric", "boolean"]
    back = data.load_from_run(tmp_path)
    assert back.feature_spec == spec and back.feature_names == ds.feature_names
    np.testing.assert_array_equal(back["test"].x, ds["test"].x)
    # overrides: depth as categories is refused for too many values; flag as a number is one 0/1 column
    with pytest.raises(BdkError, match="max-categories"):
        _load(mixed_csv, categorical=("depth",))
    forced = _load(mixed_csv, numeric=("flag",), categorical="carat", max_categories=5000)
    kinds = {c.name: c.kind for c in forced.feature_spec.columns}
    assert kinds["flag"] == "numeric" and kinds["carat"] == "categorical"
    with pytest.raises(BdkError, match="not feature columns"):
        _load(mixed_csv, categorical=("nope",))


def test_integer_codes_with_few_values_are_categorical_bundled_tables_are_not():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"code": rng.integers(1, 6, 300), "count": rng.integers(0, 50, 300),
                       "binary": rng.integers(0, 2, 300), "label": rng.normal(size=300)})
    spec = data.build_dataset(df, data.DataConfig(dataset="t.csv")).feature_spec
    assert {c.name: c.kind for c in spec.columns} == {"code": "categorical", "count": "numeric", "binary": "numeric"}
    boston = data.load(data.DataConfig(dataset="boston"))  # rad: 9 integer values, an index: numeric in a bundled table
    assert boston.num_features == 13 and boston.feature_spec.is_identity


def test_encoding_round_trips_and_imputation_matches_train_statistics(mixed_csv):
    ds = _load(mixed_csv)
    spec = ds.feature_spec
    raw = pd.read_csv(mixed_csv).set_index("id")
    train = raw.loc[ds["train"].ids.astype(int)]
    carat = spec.columns[0]
    assert carat.indicator and carat.fill == pytest.approx(float(np.nanmedian(train["carat"])))
    cut = spec.columns[1]
    share = train["cut"].value_counts(dropna=False, normalize=True)
    assert cut.frequencies[cut.vocabulary.index("Ideal")] == pytest.approx(share["Ideal"])
    assert cut.frequencies[-1] == pytest.approx(train["cut"].isna().mean())
    # encoded -> decoded gives the raw values back (missing as missing)
    test = raw.loc[ds["test"].ids.astype(int)].reset_index(drop=True)
    back = spec.decode(ds["test"].x)
    np.testing.assert_allclose(back["carat"], test["carat"].astype(np.float32), rtol=1e-6)  # NaN where empty
    assert list(back["cut"].fillna("?")) == list(test["cut"].fillna("?"))
    assert (back["flag"] == test["flag"].astype(float)).all()
    # the encoded rows: imputed carat = the train median, its indicator set; one-hot blocks sum to 1
    gap = test["carat"].isna().to_numpy()
    assert gap.any() and np.allclose(ds["test"].x[gap, 0], carat.fill) and (ds["test"].x[gap, 1] == 1).all()
    assert (ds["test"].x[:, 2:8].sum(axis=1) == 1).all()
    # JSON round trip
    assert FeatureSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_unseen_and_missing_values_take_their_buckets(mixed_csv):
    spec = _load(mixed_csv).feature_spec
    rows = pd.DataFrame({"carat": [0.5, "", None, "1.25"], "cut": ["Ideal", "Astonishing", "", None],
                         "depth": [60, 61, 62, 63], "flag": ["true", "False", None, 1]})
    x = spec.encode(rows)
    names = spec.encoded_names
    at = {n: i for i, n in enumerate(names)}
    assert x[0, at["cut=Ideal"]] == 1 and x[1, at[f"cut={OOV}"]] == 1  # unseen -> the out-of-vocabulary bucket
    assert x[2, at[f"cut={MISSING_CATEGORY}"]] == 1 and x[3, at[f"cut={MISSING_CATEGORY}"]] == 1
    assert x[1, at["carat"]] == pytest.approx(spec.columns[0].fill) and x[1, at["carat_missing"]] == 1
    assert x[3, at["carat"]] == pytest.approx(1.25) and x[3, at["carat_missing"]] == 0
    assert x[:, at["flag"]].tolist() == [1.0, 0.0, spec.columns[3].fill, 1.0]
    with pytest.raises(BdkError, match="numeric feature column 'carat' has text 'heavy'"):
        spec.encode(rows.assign(carat=["heavy", 1, 2, 3]))
    with pytest.raises(BdkError, match=r"lacks feature column\(s\) \['cut'\]"):
        spec.encode(rows.drop(columns="cut"))


def test_bad_tables_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    base = pd.DataFrame({"a": rng.normal(size=n), "b": rng.choice(["x", "y"], n), "label": rng.normal(size=n)})

    def error(df, **cfg):
        path = tmp_path / "bad.csv"
        df.to_csv(path, index=False)
        with pytest.raises(BdkError) as e:
            data.load(data.DataConfig(dataset=str(path), **cfg))
        assert "\n" not in str(e.value)
        return str(e.value)

    mixed = base.assign(a=base["a"].astype(object))
    mixed.loc[7, "a"] = "n/a?"
    assert "mixes numbers and text" in error(mixed)
    assert "max-categories 10" in error(base.assign(b=[f"v{i}" for i in range(n)]), max_categories=10)
    gaps = base.copy()
    gaps.loc[[3, 9], "label"] = np.nan
    msg = error(gaps)
    assert "label column 'label' has empty" in msg and "rows 4, 10" in msg
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "bad.csv"), missing="drop"))
    assert sum(map(len, ds.splits.values())) == n - 2


# ---------------------------------------------------------------- the transfer set respects kinds


@pytest.mark.parametrize("regression", [True, False])
def test_transfer_set_keeps_categorical_values_in_the_vocabulary(regression):
    from distill.transfer import KEEP_CATEGORY, PERTURBED_UNSEEN, TransferConfig, build_transfer_set, encoded_inputs

    ds = data.build_dataset(mixed_frame(1200, regression=regression),
                            data.DataConfig(dataset="mixed.csv", label_column="price"))
    spec = ds.feature_spec
    raw = build_transfer_set(TransferConfig(perturbations=4, interpolations=400, uniform=400, shell=400), ds)
    assert list(raw.columns[3:]) == spec.raw_columns  # the raw columns, encoded as the student reads them:
    assert set(raw["cut"].dropna()) <= {*spec.columns[1].vocabulary, OOV}
    t = pd.concat([raw[["id", "source", "label"]], pd.DataFrame(encoded_inputs(raw, ds), columns=ds.feature_names)], axis=1)
    x = t[ds.feature_names].to_numpy()
    cut = next(at for c, at in spec.blocks() if c.name == "cut")
    block = x[:, cut]
    assert set(np.unique(block)) <= {0.0, 1.0} and (block.sum(axis=1) == 1).all()  # one-hot everywhere
    oov = block[:, -1] == 1
    source = t["source"].to_numpy()
    assert not oov[~np.isin(source, ["shell", "perturbed"])].any()  # unseen categories: the far shell, and...
    assert oov[source == "shell"].mean() > 0.05
    near = oov[source == "perturbed"].mean()  # ...a share of the perturbed copies, near the data
    assert abs(near - PERTURBED_UNSEEN) < 0.03, near
    flags = x[:, ds.feature_names.index("flag")]
    assert set(np.unique(flags)) <= {0.0, 1.0}
    # perturbed copies keep their origin's category about KEEP_CATEGORY of the time (or draw the same one)
    train = t[t["source"] == "train"].set_index("id")
    pert = t[t["source"] == "perturbed"]
    origin = ("train:" + pert["id"].str.split(":").str[1]).to_numpy()
    same = (train.loc[origin, ds.feature_names].to_numpy()[:, cut].argmax(1) == block[pert.index].argmax(1)).mean()
    assert (1 - PERTURBED_UNSEEN) * KEEP_CATEGORY - 0.05 < same <= 1.0
    # missing indicators: the origin's, with the imputed value where set
    origin_gap = train.loc[origin, "carat_missing"].to_numpy()
    np.testing.assert_array_equal(origin_gap, pert["carat_missing"].to_numpy())
    assert np.allclose(pert.loc[pert["carat_missing"] == 1, "carat"], spec.columns[0].fill)
    # interpolations take one parent's category: one-hot (checked above) and never between two
    assert set(np.unique(t.loc[t["source"] == "interpolated", "cut=Fair"])) <= {0.0, 1.0}


def test_raw_transfer_rows_decode_and_encode_back_exactly(tmp_path):
    """The transfer set stores raw columns: decode(encode(x)) == x on the training rows (numbers to float32), and
    encode(decode(z)) == z bit for bit on every generated row, through the Parquet file too."""
    import pyarrow.parquet as pq

    from distill import tasks
    from distill.transfer import (TransferConfig, build_transfer_set, encoded_inputs, feature_fields, generated_parts,
                                  write_transfer_set)

    df = mixed_frame(1200)
    ds = data.build_dataset(df, data.DataConfig(dataset="mixed.csv", label_column="price"))
    spec, task = ds.feature_spec, tasks.get(ds.task)
    train = df.set_index("id").loc[ds["train"].ids.astype(int)].reset_index(drop=True)
    back = spec.decode(spec.encode(train))
    assert back["cut"].tolist() == [None if pd.isna(v) else v for v in train["cut"]]  # empty cells: None
    assert back["flag"].tolist() == train["flag"].astype(float).tolist()
    np.testing.assert_array_equal(back["carat"], train["carat"].astype(np.float32))  # NaN where empty
    np.testing.assert_array_equal(back["depth"], train["depth"].astype(np.float32))
    cfg = TransferConfig(perturbations=4, interpolations=400, uniform=400, shell=400)
    z = np.concatenate([x for *_, x in generated_parts(cfg, ds, task)])  # [N, F] encoded, as generated
    table = build_transfer_set(cfg, ds)
    np.testing.assert_array_equal(encoded_inputs(table, ds), z)
    write_transfer_set(table, tmp_path / "t.parquet", feature_fields(ds.feature_names, spec), task)
    stored = pq.read_table(tmp_path / "t.parquet")
    assert {f.name: str(f.type) for f in stored.schema if f.name in spec.raw_columns} == {
        "carat": "float", "cut": "string", "depth": "float", "flag": "bool"}
    assert stored.column("cut").null_count == (table["cut"].isna()).sum() > 0  # empty cells are nulls
    assert {"<oov>", "Ideal"} <= set(stored.column("cut").drop_null().to_pylist())
    np.testing.assert_array_equal(encoded_inputs(stored.to_pandas(), ds), z)


def test_unlabeled_raw_rows_are_stored_as_the_user_wrote_them(tmp_path):
    from distill.transfer import TransferConfig, build_transfer_set, encoded_inputs

    ds = data.build_dataset(mixed_frame(600), data.DataConfig(dataset="mixed.csv", label_column="price"))
    rows = pd.DataFrame({"key": ["a", "b"], "carat": [0.5, None], "cut": [" Astonishing", "Ideal"], "depth": [60, 61],
                         "flag": ["yes", None]})
    rows.rename(columns={"key": "id"}).to_csv(tmp_path / "extra.csv", index=False)
    t = build_transfer_set(TransferConfig(perturbations=1, interpolations=0, uniform=0, shell=0,
                                          unlabeled=str(tmp_path / "extra.csv")), ds)
    mine = t[t["source"] == "unlabeled"]
    assert mine["id"].tolist() == ["unlabeled:a", "unlabeled:b"]
    assert mine["cut"].tolist() == ["Astonishing", "Ideal"]  # an unseen value kept (stripped, as the encoding reads it)
    assert mine["flag"].tolist()[0] == 1.0 and np.isnan(mine["flag"].tolist()[1])
    np.testing.assert_array_equal(encoded_inputs(mine, ds), ds.feature_spec.encode(rows))  # the bucket, the fills


# ---------------------------------------------------------------- the CLI: flags, the task note


def _cli(*args):
    from typer.testing import CliRunner

    from bdk.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", ["teacher", "run"])
def test_every_table_command_has_the_same_table_flags(command):
    out = _cli(command, "--help").output
    for flag in ("--dataset", "--label-column", "--id-column", "--task", "--missing", "--drop-missing",
                 "--categorical", "--numeric", "--max-categories"):
        assert flag in out, (command, flag)


def test_bad_tables_through_the_cli_are_one_error_line_before_training(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=100).astype(object), "b": rng.choice(["x", "y"], 100),
                       "label": rng.normal(size=100)})
    df.loc[5, "a"] = "oops"
    df.to_csv(tmp_path / "mixed.csv", index=False)
    for args, needle in ((["--dataset", tmp_path / "mixed.csv"], "mixes numbers and text"),
                         (["--dataset", tmp_path / "mixed.csv", "--categorical", "a", "--max-categories", "10"],
                          "--max-categories 10"),
                         (["--dataset", tmp_path / "mixed.csv", "--missing", "never"], "--missing must be")):
        for command in ("teacher", "run"):
            r = _cli(command, *args, "--out", tmp_path / "run", "--no-progress")
            errors = [line for line in r.output.splitlines() if line.startswith("error:")]
            assert r.exit_code == 1 and len(errors) == 1 and needle in errors[0], r.output
            assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- end to end (TensorFlow: trains small models)


def test_cli_teacher_infers_regression_for_whole_minutes_and_says_how_to_override(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=n)
    df = pd.DataFrame({"id": np.arange(n) + 10, "x": x, "delay": np.round(60 * x + rng.normal(0, 30, n)).astype(int)})
    df.to_csv(tmp_path / "delays.csv", index=False)
    assert df["delay"].nunique() > 20 and (df["delay"].value_counts() == 1).any()
    r = _cli("teacher", "--dataset", tmp_path / "delays.csv", "--label-column", "delay", "--id-column", "id",
             "--out", tmp_path / "run", "--epochs", "2", "--samples", "2")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "task: regression (inferred:" in r.output and "--task classification to override" in r.output
    meta = json.loads((tmp_path / "run" / "data" / "dataset.json").read_text())
    assert meta["task"] == "regression" and meta["raw_columns"] == ["x"]
    split = json.loads((tmp_path / "run" / "data" / "split.json").read_text())
    assert set(sum(split.values(), [])) == {str(i) for i in df["id"]}  # --id-column was used


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """`bdk run`'s stages on a generated mixed table (text column with 4 levels, empty cells, a boolean;
    price = f(cut) x carat), through the Python API with small settings (as conftest's regression_run)."""
    from bdk.evaluate import EvalConfig
    from bdk.pipeline import run_all
    from distill.transfer import SoftLabelConfig, TransferConfig
    from student.config import StudentConfig
    from teacher.config import TeacherConfig

    root = tmp_path_factory.mktemp("mixed_run")
    mixed_frame(3000).to_csv(root / "mixed.csv", index=False)
    run = root / "run"
    s = run_all(data.DataConfig(dataset=str(root / "mixed.csv"), label_column="price"),
                TeacherConfig(epochs=60, patience=60, eval_samples=30),
                SoftLabelConfig(TransferConfig(perturbations=2, interpolations=300, uniform=300, shell=300),
                                samples=20),
                StudentConfig(gate=False, epochs=40, patience_steps=100_000, baseline_epochs=20),
                EvalConfig(samples=30, ood_rows=200, bootstrap=100, latency_calls=5), run, progress=False)
    return root, run, s


def test_bdk_run_on_a_mixed_table_end_to_end(mixed_run):
    root, run, s = mixed_run
    meta = json.loads((run / "data" / "dataset.json").read_text())
    assert meta["task"] == "regression" and meta["raw_columns"] == ["carat", "cut", "depth", "flag"]
    assert "cut=<oov>" in meta["encoded_features"] and "carat_missing" in meta["encoded_features"]
    for path in ("teacher/export/1/saved_model.pb", "student/export/1/saved_model.pb", "report/metrics.json"):
        assert (run / path).exists(), path
    m = json.loads((run / "report" / "metrics.json").read_text())
    rmse = {k: m[k]["test/rmse"] for k in ("teacher", "student", "baseline")}
    spread = float(mixed_frame(3000)["price"].std())
    assert rmse["teacher"] < 0.5 * spread, rmse  # it learned from the text column and the gaps, not the mean


def test_predict_and_serve_take_raw_rows(mixed_run, tmp_path):
    import httpx

    from serving.server import BackgroundServer, create_app

    root, run, _ = mixed_run
    rows = pd.DataFrame({"id": ["a", "b", "c"], "carat": [0.5, None, 1.5], "cut": ["Ideal", "", "Astonishing"],
                         "depth": [60.0, 61.0, 59.0], "flag": [True, False, None]})
    rows.to_csv(tmp_path / "raw.csv", index=False)
    r = _cli("predict", run / "student" / "export", tmp_path / "raw.csv", "--out", tmp_path / "out.csv", "--no-progress")
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out["id"]) == ["a", "b", "c"] and np.isfinite(out["mean"]).all()

    named = [{k: (None if pd.isna(v) else v) for k, v in row.items() if k != "id"}
             for row in rows.astype(object).to_dict("records")]
    with BackgroundServer(create_app(run / "student" / "export", "student")) as s:
        got = httpx.post(f"{s.url}/v1/models/student:predict", json={"instances": named}).json()
        np.testing.assert_allclose([p["mean"] for p in got["predictions"]], out["mean"], rtol=1e-5)
        cols = httpx.post(f"{s.url}/v1/models/student:predict",
                          json={"inputs": {k: [r[k] for r in named] for k in named[0]}}).json()
        np.testing.assert_allclose(cols["outputs"]["mean"], out["mean"], rtol=1e-5)
        bad = httpx.post(f"{s.url}/v1/models/student:predict", json={"instances": [{"carat": 0.5, "depth": 60.0,
                                                                                    "flag": True}]})
        assert bad.status_code == 400 and "'cut'" in bad.json()["error"]
        bad = httpx.post(f"{s.url}/v1/models/student:predict", json={"instances": [{**named[0], "colour": "D"}]})
        assert bad.status_code == 400 and "'colour'" in bad.json()["error"]
        url = f"{s.url}/v1/models/student:predict"  # the export's own encoding: the raw-row signature
        got = httpx.post(url, json={"signature_name": "serving_rows", "instances": named}).json()
        np.testing.assert_allclose([p["mean"] for p in got["predictions"]], out["mean"], rtol=1e-5)
        cols = httpx.post(url, json={"signature_name": "serving_rows",
                                     "inputs": {k: [r[k] for r in named] for k in named[0]}}).json()
        np.testing.assert_allclose(cols["outputs"]["mean"], out["mean"], rtol=1e-5)
        bad = httpx.post(url, json={"signature_name": "serving_rows", "instances": [{"carat": 0.5, "cut": "Ideal"}]})
        assert bad.status_code == 400 and "'depth'" in bad.json()["error"]
        bad = httpx.post(url, json={"signature_name": "serving_rows", "instances": [{**named[0], "carat": "heavy"}]})
        assert bad.status_code == 400 and "'carat' has text 'heavy'" in bad.json()["error"]  # not imputed
        encoded = httpx.post(f"{s.url}/v1/models/student:predict",  # the encoded vector still works
                             json={"instances": data.load_from_run(run).feature_spec.encode(rows).tolist()}).json()
        np.testing.assert_allclose([p["mean"] for p in encoded["predictions"]], out["mean"], rtol=1e-5)


RAW_ROWS_FRESH = """
import io, json, sys
import numpy as np
import pandas as pd
import tensorflow as tf
from distill import data
from distill.encoder import raw_inputs
from distill.features import ROWS_SIGNATURE
run = sys.argv[1]
spec = data.load_from_run(run).feature_spec
rows = pd.read_json(io.StringIO(sys.argv[2]), orient="records")
out = {}
for name in ("teacher", "student", "student/baseline"):
    m = tf.saved_model.load(f"{run}/{name}/export/1")
    raw = raw_inputs(rows, spec)
    got = {k: v.numpy() for k, v in m.signatures[ROWS_SIGNATURE](**raw).items()}
    out[name] = {"keys": sorted(got), "mean": got["mean"].tolist(), "epistemic": got.get("epistemic", got["variance"]).tolist(),
                 "encoded": np.array_equal(m.encoder.encode(raw).numpy(), spec.encode(rows))}
    if name != "teacher":  # deterministic: the raw rows answer exactly as their encoded vector does
        enc = m.signatures["serving_default"](features=tf.constant(spec.encode(rows)))
        out[name]["same"] = all(np.allclose(got[k], enc[k].numpy(), rtol=1e-6, atol=1e-7) for k in got)
print(json.dumps(out))
"""


def test_every_export_answers_raw_rows_in_a_fresh_interpreter(mixed_run):
    from tests import fresh

    root, run, _ = mixed_run
    rows = pd.DataFrame({"carat": [0.5, None, 1.5, 1.5], "cut": ["Ideal", "", "Astonishing", "Ideal"],
                         "depth": [60.0, 61.0, 59.0, 59.0], "flag": [True, False, None, None]})
    out = fresh.run(RAW_ROWS_FRESH, run, rows.to_json(orient="records"), project=True)  # the raw inputs: distill.encoder
    for name, r in out.items():
        assert r["encoded"], name  # the export's own encoder equals the training encoding
        assert "mean" in r["keys"] and np.isfinite(r["mean"]).all() and len(r["mean"]) == 4, name
        assert r.get("same", True), name
    # An unseen category goes through the out-of-vocabulary bucket: it answers, and differently from "Ideal".
    assert "encoded vector" in json.loads((run / "student" / "metrics.json").read_text())["tflite_input"]
    assert out["student"]["mean"][2] != pytest.approx(out["student"]["mean"][3], abs=1e-6)


def test_an_unseen_category_is_more_uncertain_for_a_regression_teacher(mixed_run):
    import tensorflow as tf

    root, run, _ = mixed_run
    spec = data.load_from_run(run).feature_spec
    teacher = tf.saved_model.load(str(run / "teacher" / "export" / "1"))
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"carat": rng.uniform(0.3, 1.8, 200), "depth": rng.normal(60, 2, 200), "flag": True})
    epistemic = {}
    for cut in ("Ideal", "never-seen"):
        x = spec.encode(base.assign(cut=cut))
        out = teacher.signatures["predictive_seeded"](features=tf.constant(x), num_samples=tf.constant(100),
                                                      seed=tf.constant(0, tf.int64))
        epistemic[cut] = float(np.mean(out["epistemic_variance"].numpy()))
    assert epistemic["never-seen"] > 10 * epistemic["Ideal"], epistemic  # the <oov> weights are at their prior


@pytest.fixture(scope="module")
def mixed_classes_teacher(tmp_path_factory):
    """A teacher (the classification recipe's defaults) on the generated mixed table with price high/low as classes."""
    from bdk.pipeline import teacher_stage
    from teacher.config import TeacherConfig

    root = tmp_path_factory.mktemp("mixed_classes")
    mixed_frame(3000, regression=False).to_csv(root / "mixed.csv", index=False)
    teacher_stage(data.DataConfig(dataset=str(root / "mixed.csv"), label_column="price"),
                  TeacherConfig(eval_samples=30), root / "run", progress=False)
    return root / "run"


def test_an_unseen_category_is_more_uncertain_for_a_classifier(mixed_classes_teacher):
    """Classes: the teacher's noise-contrastive prior makes the draws disagree off the data, the <oov> bucket included
    (measured: mutual information ~10x that of a seen category)."""
    import tensorflow as tf

    run = mixed_classes_teacher
    spec = data.load_from_run(run).feature_spec
    teacher = tf.saved_model.load(str(run / "teacher" / "export" / "1"))
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"carat": rng.uniform(0.3, 1.8, 200), "depth": rng.normal(60, 2, 200), "flag": True})
    mi = {}
    for cut in ("Fair", "Good", "Ideal", "Premium", "never-seen"):
        out = teacher.signatures["predictive_seeded"](features=tf.constant(spec.encode(base.assign(cut=cut))),
                                                      num_samples=tf.constant(100), seed=tf.constant(0, tf.int64))
        mi[cut] = float(np.mean(out["mutual_information"].numpy()))
    assert mi["never-seen"] > max(v for k, v in mi.items() if k != "never-seen"), mi


def test_an_ood_file_of_raw_rows_is_encoded_as_in_training(mixed_run, tmp_path):
    from bdk.evaluate import EvalConfig, ood_inputs

    root, run, _ = mixed_run
    ds = data.load_from_run(run)
    raw = mixed_frame(50, seed=9).drop(columns=["id", "price"])
    raw.loc[0, "cut"] = "Astonishing"  # unseen: the bucket
    raw.to_csv(tmp_path / "ood.csv", index=False)
    x = ood_inputs(EvalConfig(ood_file=str(tmp_path / "ood.csv")), ds)
    np.testing.assert_array_equal(x, ds.feature_spec.encode(raw))
    assert x[0, ds.feature_names.index(f"cut={OOV}")] == 1
    raw.drop(columns=["cut"]).to_csv(tmp_path / "lacking.csv", index=False)
    with pytest.raises(BdkError, match="lacks the teacher's feature columns") as e:
        ood_inputs(EvalConfig(ood_file=str(tmp_path / "lacking.csv")), ds)
    assert "'cut'" in str(e.value) and "\n" not in str(e.value)


def test_encoding_chosen_rows_in_order_is_encoding_all_then_taking_them():
    """build_dataset encodes the rows in split order into one aligned array (each split a view of it)."""
    from distill.training import TENSOR_ALIGNMENT

    ds = data.build_dataset(mixed_frame(300), data.DataConfig(dataset="mixed", label_column="price"))
    df = mixed_frame(300)
    order = np.random.default_rng(0).permutation(len(df))[:200]
    chosen = ds.feature_spec.encode(df, rows=order)
    np.testing.assert_array_equal(chosen, ds.feature_spec.encode(df)[order])
    assert chosen.dtype == np.float32 and chosen.ctypes.data % TENSOR_ALIGNMENT == 0
    parts = [ds[s].x for s in data.SPLITS]
    assert all(p.base is not None and p.base is parts[0].base for p in parts)  # views of the one encoded array

"""`bdk predict`: batch scoring of a table through an export, with one-line errors for bad input."""
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bdk.cli import app
from serving_fakes import reference

IRIS_FEATURES = ["SepalLengthCm", "SepalWidthCm", "PetalLengthCm", "PetalWidthCm"]


@pytest.fixture(scope="module")
def iris_csv(tmp_path_factory):
    """Iris with the columns shuffled and the label kept: features are picked by name, not position."""
    from distill.data import BUNDLED

    df = pd.read_csv(BUNDLED["iris"][0])
    path = tmp_path_factory.mktemp("inputs") / "iris.csv"
    df[["Species", "PetalWidthCm", "Id", "SepalLengthCm", "PetalLengthCm", "SepalWidthCm"]].to_csv(path, index=False)
    return path


def run(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args), "--no-progress"])


def test_teacher_predict_uses_run_feature_names_and_class_names(teacher_run, iris_csv, tmp_path):
    out = tmp_path / "scores.csv"
    r = run(teacher_run / "teacher" / "export", iris_csv, "--out", out, "--batch-size", 64)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert len(df) == 150 and df.columns[0] == "Id"
    assert df["Id"].tolist() == pd.read_csv(iris_csv)["Id"].tolist()
    probs = df[["probs_Iris-setosa", "probs_Iris-versicolor", "probs_Iris-virginica"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for col in ("entropy", "expected_entropy", "mutual_information", "variance_Iris-virginica"):
        assert col in df.columns
    labels = pd.read_csv(iris_csv)["Species"].to_numpy()
    classes = np.array(["Iris-setosa", "Iris-versicolor", "Iris-virginica"])
    assert (classes[probs.argmax(axis=1)] == labels).mean() > 0.85


def test_teacher_predict_with_samples_is_seeded_and_batch_independent(teacher_run, iris_csv, tmp_path):
    """--samples: S draws from --seed through predictive_seeded: the same file twice (and in other batch sizes) gives
    the same numbers, another seed other ones, and the exported predictive at that seed exactly."""
    import tensorflow as tf

    export = teacher_run / "teacher" / "export"
    outs = {}
    for name, args in {"a": ("--samples", 200, "--seed", 3, "--batch-size", 64),
                       "b": ("--samples", 200, "--seed", 3, "--batch-size", 150),
                       "c": ("--samples", 200, "--seed", 4)}.items():
        r = run(export, iris_csv, "--out", tmp_path / f"{name}.csv", *args)
        assert r.exit_code == 0, r.output
        assert "predictive_seeded" in r.output
        outs[name] = pd.read_csv(tmp_path / f"{name}.csv")
    cols = ["probs_Iris-versicolor", "mutual_information"]
    np.testing.assert_array_equal(outs["a"][cols].to_numpy(), outs["b"][cols].to_numpy())
    assert not np.array_equal(outs["a"][cols].to_numpy(), outs["c"][cols].to_numpy())
    x = pd.read_csv(iris_csv)[IRIS_FEATURES].to_numpy(np.float32)[:64]
    want = tf.saved_model.load(str(export / "1")).signatures["predictive_seeded"](
        features=tf.constant(x), num_samples=tf.constant(200), seed=tf.constant(3, tf.int64))
    np.testing.assert_allclose(outs["a"]["mutual_information"].to_numpy()[:64], want["mutual_information"].numpy(),
                               rtol=1e-5, atol=1e-7)
    r = run(export, iris_csv, "--out", tmp_path / "d.csv", "--samples", 1)
    assert r.exit_code == 1 and r.output.startswith("error: --samples must be at least 2")


def test_student_predict_without_run_folder_uses_numeric_columns(student_base, tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    df = pd.DataFrame(x, columns=list("abcd"))
    df.insert(0, "key", [f"row{i}" for i in range(10)])
    df.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    r = run(student_base, tmp_path / "in.parquet", "--out", out, "--id-column", "key", "--batch-size", 3)
    assert r.exit_code == 0, r.output
    got = pd.read_parquet(out)
    assert got.columns[0] == "key"
    assert set(got.columns) == {"key", "probs_0", "probs_1", "probs_2", "entropy", "epistemic"}
    ref = reference(x)
    np.testing.assert_allclose(got[["probs_0", "probs_1", "probs_2"]].to_numpy(), ref["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["epistemic"], ref["epistemic"], rtol=1e-5)
    assert got["key"].tolist() == df["key"].tolist()


@pytest.mark.parametrize("case,words", [
    ("missing_export", "not found"),
    ("no_saved_model", "saved_model.pb"),
    ("wrong_feature_count", "takes 4 features"),
    ("missing_named_feature", "PetalWidthCm"),
    ("nan_row", "data rows 2"),
    ("bad_out_suffix", "unsupported file type"),
    ("missing_input", "not found"),
    ("missing_id_column", "id column"),
    ("scalar_signature", "one [batch, features] input"),
    ("unknown_signature", "nope"),
    ("out_exists", "--overwrite"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, words, teacher_run, student_base, iris_csv, tmp_path):
    three = tmp_path / "three.csv"
    pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [3.0, 4.0]}).to_csv(three, index=False)
    nan = tmp_path / "nan.csv"
    pd.DataFrame({"a": [1.0, np.nan], "b": [1.0, 2.0], "c": [3.0, 4.0], "d": [0.0, 1.0]}).to_csv(nan, index=False)
    no_width = tmp_path / "no_width.csv"
    pd.read_csv(iris_csv).drop(columns="PetalWidthCm").to_csv(no_width, index=False)
    (tmp_path / "empty_export").mkdir()
    teacher = teacher_run / "teacher" / "export"
    out = tmp_path / "out.csv"
    args = {
        "missing_export": (tmp_path / "nothing", iris_csv),
        "no_saved_model": (tmp_path / "empty_export", iris_csv),
        "wrong_feature_count": (student_base, three),
        "missing_named_feature": (teacher, no_width),
        "nan_row": (student_base, nan),
        "bad_out_suffix": (student_base, three, "--out", tmp_path / "out.txt"),
        "missing_input": (student_base, tmp_path / "nope.csv"),
        "missing_id_column": (teacher, iris_csv, "--id-column", "key"),
        "scalar_signature": (teacher, iris_csv, "--signature", "predictive"),
        "unknown_signature": (student_base, three, "--signature", "nope"),
        "out_exists": (student_base, three),
    }[case]
    if "--out" not in args:
        args = (*args, "--out", out)
    if case == "out_exists":
        out.write_text("keep me\n")
    r = run(*args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output
    assert (out.read_text() == "keep me\n") if case == "out_exists" else not out.exists()
    assert not list(tmp_path.glob(".out*"))

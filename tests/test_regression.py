"""Regression: the Bayesian dark knowledge regression loss, the Flipout regression teacher's export in
a fresh interpreter, the Beam job on it, the student's export, and `bdk experiment uci` end to end on
two tiny splits (one study, shared read-only by the tests below it). Monte Carlo outputs are checked
with inequalities and tolerances, never for exact equality.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from distill import metrics, schema
from distill.cli import app

TINY = ["--splits", "2", "--epochs", "3", "--student-epochs", "3", "--samples", "10", "--no-progress"]


def bdk(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """`bdk experiment uci` on 2 Boston splits with tiny epochs. Read-only."""
    out = tmp_path_factory.mktemp("uci") / "uci-boston"
    result = bdk("experiment", "uci", "--dataset", "boston", "--out", out, *TINY)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "teacher test/log_likelihood" in result.stdout
    return out


def split_run(study: Path, i: int = 0) -> Path:
    return study / "runs" / f"split-{i:02d}"


# ---------------------------------------------------------------- losses and metrics


def test_distillation_loss_against_hand_computed_values():
    import tensorflow as tf

    from student.regression import gaussian_distillation_loss

    mu_t, var_t = tf.constant([1.0, 0.0, 2.0]), tf.constant([0.5, 1.0, 0.25])
    mu_s, log_s2 = tf.constant([0.5, 0.0, 1.0]), tf.constant([np.log(2.0), 0.0, np.log(0.5)], tf.float32)
    # 0.5 * [log s2 + (var_t + (mu_t - mu_s)^2) / s2] per row
    rows = [0.5 * (np.log(2.0) + (0.5 + 0.25) / 2.0), 0.5 * (0.0 + 1.0), 0.5 * (np.log(0.5) + (0.25 + 1.0) / 0.5)]
    assert float(gaussian_distillation_loss(mu_t, var_t, mu_s, log_s2)) == pytest.approx(np.mean(rows), rel=1e-6)

    # The minimum is the teacher's predictive itself: zero gradient at mu_s = mu_t, s2 = var_t.
    mu, lv = tf.Variable(mu_t), tf.Variable(tf.math.log(var_t))
    with tf.GradientTape() as tape:
        loss = gaussian_distillation_loss(mu_t, var_t, mu, lv)
    for g in tape.gradient(loss, [mu, lv]):
        assert np.allclose(g.numpy(), 0.0, atol=1e-6)
    # Plus 0.5 log(2 pi) it is the expected NLL under N(mu_t, var_t): a Monte Carlo check.
    y = np.random.default_rng(0).normal(1.0, np.sqrt(0.5), 200_000)
    nll = -metrics.gaussian_log_likelihood(y, 0.5, 2.0).mean()
    assert nll == pytest.approx(rows[0] + 0.5 * np.log(2 * np.pi), abs=0.01)


def test_regression_summaries_agree():
    import tensorflow as tf

    from teacher.export import summarize_regression

    rng = np.random.default_rng(0)
    means, variances = rng.normal(size=(7, 5)).astype(np.float32), rng.uniform(0.1, 1, (7, 5)).astype(np.float32)
    tf_out = summarize_regression(tf.constant(means), tf.constant(variances))
    np_out = metrics.regression_summary(means, variances)
    for k in schema.REGRESSION_OUTPUTS:
        assert np.allclose(tf_out[k].numpy(), np_out[k], atol=1e-5)
    # Identical draws: the mixture is the Gaussian itself.
    y = rng.normal(size=5)
    same = np.repeat(means[:1], 4, axis=0), np.repeat(variances[:1], 4, axis=0)
    assert np.allclose(metrics.mixture_log_likelihood(y, *same), metrics.gaussian_log_likelihood(y, means[0], variances[0]))
    assert np.allclose(metrics.interval_coverage(np.zeros(4), np.zeros(4), np.ones(4), np.array([0.5, 0.9])), 1.0)


# ---------------------------------------------------------------- the exports and the Beam job


def test_teacher_export_in_a_fresh_interpreter(study):
    export = schema.teacher_export(split_run(study))
    rows = pd.read_csv(Path(__file__).resolve().parents[1] / "data" / "boston.csv").drop(columns=["id", "medv"]).head(8)
    script = textwrap.dedent(f"""
        import json, numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(export)!r})
        x = tf.constant(np.asarray({rows.to_numpy().tolist()!r}, np.float32))
        a, b = m.signatures["serving_default"](features=x), m.signatures["serving_default"](features=x)
        p = m.signatures["predictive"](features=x, num_samples=tf.constant(50))
        s = m.signatures["sample"](features=x, num_samples=tf.constant(6))
        print(json.dumps({{"signatures": sorted(m.signatures), "outputs": sorted(a), "predictive": sorted(p),
                          "sample": {{k: list(v.shape) for k, v in s.items()}},
                          **{{k: v.numpy().tolist() for k, v in a.items()}}, "again": b["mean"].numpy().tolist()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["predictive", "sample", "serving_default"]
    assert out["outputs"] == out["predictive"] == sorted(schema.REGRESSION_OUTPUTS)
    assert out["sample"] == {"mean_samples": [6, 8], "variance_samples": [6, 8]}
    mean, var, epi = (np.array(out[k]) for k in schema.REGRESSION_OUTPUTS)
    assert np.all(var >= epi - 1e-5) and np.all(epi >= 0)
    assert 0 < mean.mean() < 60  # original target units (median value, $1000s), not z-scores
    assert not np.allclose(mean, out["again"])  # fresh weight draws on every call


def test_beam_job_writes_regression_soft_labels(study, tmp_path):
    """The study's soft labels come from the Beam job; run it once more directly on a tiny transfer set."""
    import pyarrow.parquet as pq

    from beam_pipelines import soft_labels as job
    from distill.transfer import read_soft_labels, write_transfer_set

    run = split_run(study)
    features = json.loads((schema.data_dir(run) / "dataset.json").read_text())["feature_names"]
    df, manifest = read_soft_labels(run)
    assert list(df.columns) == schema.soft_label_columns(features, "regression")
    assert manifest["task"] == "regression" and set(manifest["rows_per_source"]) == {"train", "perturbed"}
    assert (df["variance"] >= df["epistemic_variance"] - 1e-5).all() and (df["epistemic_variance"] >= 0).all()

    transfer = pd.read_parquet(schema.transfer_path(run)).head(20)
    write_transfer_set(transfer, tmp_path / "t.parquet", features)
    m = job.run(["--transfer", str(tmp_path / "t.parquet"), "--export", str(schema.teacher_export(run)),
                 "--dataset_json", str(schema.data_dir(run) / "dataset.json"), "--output", str(tmp_path / "out"),
                 "--num_samples", "7", "--runner", "FnApiRunner"])
    assert m["rows"] == 20 and m["runner"] == "FnApiRunner"
    table = pq.read_table(tmp_path / "out" / m["shards"][0])
    assert table.column_names == schema.soft_label_columns(features, "regression")
    assert str(table.schema.field("mean").type) == "float" and set(table.column("num_samples").to_pylist()) == {7}


def test_student_export_is_deterministic(study):
    import tensorflow as tf

    run = split_run(study)
    m = tf.saved_model.load(str(schema.student_export(run)))
    x = tf.constant(pd.read_parquet(schema.transfer_path(run)).iloc[:16, 3:].to_numpy(np.float32))
    a, b = m.signatures["serving_default"](features=x), m.signatures["serving_default"](features=x)
    assert sorted(a) == ["mean", "variance"]
    assert np.array_equal(a["mean"].numpy(), b["mean"].numpy()) and np.all(a["variance"].numpy() > 0)


# ---------------------------------------------------------------- the study and its report


def test_report_folder(study):
    for name in ("report.md", "splits.csv", "coverage.csv", "summary.json", "config.json",
                 "intervals.png", "calibration.png", "elbo.png"):
        assert (study / name).stat().st_size > 0, name
    per_split = pd.read_csv(study / "splits.csv")
    assert list(per_split["split"]) == [0, 1]
    for col in ("teacher/test/log_likelihood", "teacher/test/rmse", "student/test/log_likelihood", "student/test/rmse"):
        assert np.isfinite(per_split[col]).all()
    report = (study / "report.md").read_text()
    assert "| test log-likelihood |" in report and "PBP" in report and "MC dropout" in report and "KL weight" in report
    history = pd.read_csv(schema.teacher_dir(split_run(study)) / "history.csv")
    assert {"train_nll", "kl", "elbo", "val_nll"} <= set(history.columns) and len(history) == 3
    assert not [p for p in study.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.parametrize("args, words", [
    (["--dataset", "iris"], ["unknown UCI dataset 'iris'", "boston"]),
    (["--splits", "1"], ["--splits must be at least 2"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    out = tmp_path / "report"
    result = bdk("experiment", "uci", "--out", out, "--no-progress", *args)
    assert result.exit_code == 1, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), result.stderr
    assert list(tmp_path.iterdir()) == []

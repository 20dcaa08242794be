"""Regression's own pieces: the Gaussian task's summary and distillation loss, the regression run's data, student
and report (conftest `regression_run`: teacher with the task inferred from a float label, Beam soft labels, ungated
student, evaluation), and `bdk experiment uci` end to end on two tiny splits (one study, shared read-only by the
tests below it). What every task shares is tested once per unit, parametrised over the tasks: the teacher's log,
export and weight sampling in test_teacher.py, the soft labels and export checks in test_soft_labels.py, the
student's export in test_student.py, the transfer set in test_transfer.py.
"""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from distill import metrics, schema, tasks
from bdk.cli import app

REG = tasks.get("regression")
TINY = ["--splits", "2", "--epochs", "3", "--student-epochs", "3", "--samples", "10", "--no-progress"]


def bdk(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def gaussian_summary_np(means: np.ndarray, variances: np.ndarray) -> dict[str, np.ndarray]:
    """Independent numpy reference: the moment match of an equal mixture of S Gaussians [S, B]."""
    mean = means.mean(0)
    epistemic = ((means - mean) ** 2).mean(0)
    return {"mean": mean, "variance": variances.mean(0) + epistemic, "epistemic_variance": epistemic}


# ---------------------------------------------------------------- the task's pieces


def test_gaussian_summary_matches_a_numpy_reference():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    means, variances = rng.normal(size=(7, 5)).astype(np.float32), rng.uniform(0.1, 1, (7, 5)).astype(np.float32)
    out = {k: v.numpy() for k, v in REG.summarize(tf.constant(np.stack([means, variances], -1))).items()}
    ref = gaussian_summary_np(means, variances)
    assert sorted(out) == sorted(REG.outputs)
    for k in REG.outputs:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert (out["epistemic_variance"] > 0.05).all()  # the draws' means disagree
    # identical draws: no epistemic part, and the mixture is the Gaussian itself
    same = np.repeat(np.stack([means[:1], variances[:1]], -1), 4, axis=0)  # [4, 5, 2]
    out = {k: v.numpy() for k, v in REG.summarize(tf.constant(same)).items()}
    np.testing.assert_allclose(out["epistemic_variance"], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["variance"], variances[0], rtol=1e-6)
    y = rng.normal(size=5)
    assert np.allclose(metrics.mixture_log_likelihood(y, same[..., 0], same[..., 1]),
                       metrics.gaussian_log_likelihood(y, means[0], variances[0]))
    assert np.allclose(metrics.interval_coverage(np.zeros(4), np.zeros(4), np.ones(4), np.array([0.5, 0.9])), 1.0)


def test_target_units_and_soft_targets_round_trip():
    import tensorflow as tf

    params = np.array([[0.5, 0.25], [-1.0, 2.0]], np.float32)  # normalised [mean, variance]
    shift, scale = 30.0, 4.0
    units = REG.to_target_units(tf.constant(params), shift, scale).numpy()
    np.testing.assert_allclose(units, [[32.0, 4.0], [26.0, 32.0]], rtol=1e-6)
    back = REG.soft_targets({"mean": units[:, 0], "variance": units[:, 1]}, shift, scale)
    np.testing.assert_allclose(back, params, rtol=1e-6)
    # the head's variance is positive and starts at NOISE_INIT^2 at a zero output
    p = REG.draw_params(tf.constant([[0.0, 0.0], [1.0, -50.0]])).numpy()
    assert p[0, 1] == pytest.approx(tasks.NOISE_INIT ** 2, rel=1e-5) and p[1, 1] >= tasks.MIN_VARIANCE
    # log_likelihood is the Gaussian's log density at the draw's parameters
    ll = REG.log_likelihood(tf.constant([0.3]), tf.constant([[1.0, 0.0]])).numpy()
    assert ll[0] == pytest.approx(float(metrics.gaussian_log_likelihood(0.3, 1.0, tasks.NOISE_INIT ** 2)), rel=1e-5)


def raw_variance(s2: np.ndarray) -> np.ndarray:
    """The Gaussian head's raw variance output that gives variance s2 (inverts Gaussian.draw_params)."""
    return np.log(np.expm1(s2 - tasks.MIN_VARIANCE)) - tasks._VARIANCE_OFFSET


def test_distillation_loss_against_hand_computed_values():
    import tensorflow as tf

    mu_t, var_t = np.array([1.0, 0.0, 2.0]), np.array([0.5, 1.0, 0.25])
    mu_s, s2 = np.array([0.5, 0.0, 1.0]), np.array([2.0, 1.0, 0.5])
    target = tf.constant(np.stack([mu_t, var_t], -1), tf.float32)  # [B, 2] teacher's predictive (normalised units)
    head = tf.constant(np.stack([mu_s, raw_variance(s2)], -1), tf.float32)  # [B, 2] student's head
    np.testing.assert_allclose(REG.draw_params(head).numpy()[:, 1], s2, rtol=1e-5)
    # 0.5 * [log s2 + (var_t + (mu_t - mu_s)^2) / s2] per row
    rows = 0.5 * (np.log(s2) + (var_t + (mu_t - mu_s) ** 2) / s2)
    assert float(REG.distill_loss(target, head, None)) == pytest.approx(rows.mean(), rel=1e-5)
    # Plus 0.5 log(2 pi) it is the expected NLL under N(mu_t, var_t): a Monte Carlo check on row 0.
    y = np.random.default_rng(0).normal(mu_t[0], np.sqrt(var_t[0]), 200_000)
    nll = -metrics.gaussian_log_likelihood(y, mu_s[0], s2[0]).mean()
    assert nll == pytest.approx(rows[0] + 0.5 * math.log(2 * math.pi), abs=0.01)
    # The minimum is the teacher's predictive itself: zero gradient at mu_s = mu_t, s2 = var_t.
    at_teacher = tf.Variable(np.stack([mu_t, raw_variance(var_t)], -1).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = REG.distill_loss(target, at_teacher, None)
    assert np.allclose(tape.gradient(loss, at_teacher).numpy(), 0.0, atol=1e-5)
    assert float(REG.distill_loss(target, head, None)) > float(loss)


# ---------------------------------------------------------------- one regression run through the common stages


def test_regression_run_end_to_end(regression_run, regression_csv):
    """The regression run's data, student and report (its teacher, soft labels and exports: the task-parametrised
    tests of test_teacher.py, test_soft_labels.py and test_student.py)."""
    meta = json.loads((schema.data_dir(regression_run) / "dataset.json").read_text())
    assert meta["task"] == "regression" and meta["class_names"] == [] and meta["feature_names"] == ["x1", "x2"]
    assert meta["target_scaler"]["kind"] == "standard" and 45 < meta["target_scaler"]["shift"][0] < 55
    y = pd.read_csv(regression_csv)["y"].to_numpy()

    teacher = json.loads((schema.teacher_dir(regression_run) / "metrics.json").read_text())  # (checked in test_teacher)
    student = json.loads((schema.student_dir(regression_run) / "metrics.json").read_text())
    assert student["task"] == "regression" and student["gate"]["on"] is False
    assert student["student/test/rmse"] < 0.4 * y.std()
    assert (schema.student_dir(regression_run) / "student.tflite").stat().st_size > 0

    report = json.loads((schema.report_dir(regression_run) / "metrics.json").read_text())
    assert report["task"] == "regression"
    for m in ("teacher", "student", "baseline"):
        for k in ("test/rmse", "test/nll", "test/coverage_95"):
            assert np.isfinite(report[m][k]), (m, k)
            lo, hi = report[m][f"{k}_ci95"]
            assert lo <= report[m][k] <= hi, (m, k)
        assert 0 <= report[m]["test/coverage_95"] <= 1
    assert report["teacher"]["test/rmse"] == pytest.approx(teacher["test/rmse"], rel=0.2)  # the export, 30 other draws
    ood = report["ood"]
    assert {"teacher/variance_auroc", "student/variance_auroc", "baseline/variance_auroc",
            "teacher/epistemic_variance_auroc", "student/epistemic_auroc"} <= set(ood)
    # far-away inputs: the teacher's weight uncertainty grows there, and the student's epistemic head learnt it
    assert ood["teacher/epistemic_variance_auroc"] > 0.9 and ood["student/epistemic_auroc"] > 0.8
    assert report["agreement"]["test/kl"] >= 0 and report["epistemic_tracking"]["uniform/spearman"] > 0.5
    for name in ("report.md", "calibration.png", "test_predictions.csv", "uncertainty_test_vs_ood.png"):
        assert (schema.report_dir(regression_run) / name).stat().st_size > 0, name
    text = (schema.report_dir(regression_run) / "report.md").read_text()
    assert "Regression of y" in text and "RMSE" in text


# ---------------------------------------------------------------- the UCI study and its report


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """`bdk experiment uci` on 2 Boston splits with tiny epochs. Read-only."""
    out = tmp_path_factory.mktemp("uci") / "uci-boston"
    result = bdk("experiment", "uci", "--dataset", "boston", "--out", out, *TINY)
    assert result.exit_code == 0, (result.output, result.stderr, repr(result.exception))
    assert "teacher test/log_likelihood" in result.stdout
    return out


def split_run(study: Path, i: int = 0) -> Path:
    return study / "runs" / f"split-{i:02d}"


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
    # each split is an ordinary regression run folder on its own seed
    a, b = (json.loads((schema.data_dir(split_run(study, i)) / "dataset.json").read_text()) for i in (0, 1))
    assert a["task"] == b["task"] == "regression" and a["target_scaler"] != b["target_scaler"]
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

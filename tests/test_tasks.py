"""The tasks' temperature scaling (the report's baseline_ts): it recovers a known miscalibration on many validation
rows, stays near 1 on a handful, and never leaves its bounds."""
import numpy as np
import pytest

from distill import tasks


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def overconfident(rows: int, t_true: float, seed: int = 0):
    """Labels drawn from softmax(z); the model reports softmax(z * t_true): overconfident by t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (rows, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(z)])
    return y, {"probs": softmax(z * t_true), "entropy": np.zeros(rows)}


def test_classification_temperature_recovers_the_miscalibration():
    task = tasks.get("classification")
    y, pred = overconfident(20_000, 2.0)
    t = task.fit_temperature(y, pred)
    assert t == pytest.approx(2.0, rel=0.05)  # shrinkage of 20k / (20k + 100) is negligible
    before = task.metrics(y, pred, "v")["v/nll"]
    after = task.metrics(y, task.temperature_scaled(pred, t), "v")["v/nll"]
    assert after < before
    scaled = task.temperature_scaled(pred, t)
    np.testing.assert_allclose(scaled["probs"].sum(axis=1), 1.0, rtol=1e-6)
    assert (scaled["probs"].argmax(1) == pred["probs"].argmax(1)).all()  # a temperature never changes the argmax
    ent = -(scaled["probs"] * np.log(scaled["probs"])).sum(axis=1)
    np.testing.assert_allclose(scaled["entropy"], ent, rtol=1e-6)


def test_few_validation_rows_shrink_the_temperature_towards_one():
    task = tasks.get("classification")
    y, pred = overconfident(30, 3.0, seed=1)
    t_few = task.fit_temperature(y, pred)
    y_many, pred_many = overconfident(20_000, 3.0, seed=1)
    t_many = task.fit_temperature(y_many, pred_many)
    lo, hi = tasks.TEMPERATURE_BOUNDS
    # whatever 30 rows fit within the bounds, its log is shrunk by 30 / 130; 20k rows find the true temperature
    assert abs(np.log(t_few)) <= np.log(hi) * 30 / (30 + tasks.TEMPERATURE_PRIOR_ROWS) + 1e-9
    assert t_many == pytest.approx(3.0, rel=0.05) and t_many > t_few
    assert lo <= t_few <= hi and lo <= t_many <= hi


def test_regression_temperature_scales_the_variance():
    task = tasks.get("regression")
    rng = np.random.default_rng(0)
    mean = rng.normal(size=20_000)
    y = mean + rng.normal(0, 2.0, 20_000)  # true std 2; the model says 1
    pred = {"mean": mean, "variance": np.ones(20_000)}
    t = task.fit_temperature(y, pred)
    assert t == pytest.approx(2.0, rel=0.05)
    assert task.temperature_scaled(pred, t)["variance"] == pytest.approx(np.full(20_000, t * t))


def test_per_example_columns_by_task():
    cls, reg = tasks.get("classification"), tasks.get("regression")
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert list(cls.truth_columns(np.array([2, 0]), ["a", "b", "c"])["true_class"]) == ["c", "a"]
    cols = cls.point_columns({"probs": probs, "entropy": np.array([0.8, 0.6])}, ["a", "b", "c"], "student")
    assert list(cols) == ["student_predicted", "student_prob_a", "student_prob_b", "student_prob_c", "student_entropy"]
    assert list(cols["student_predicted"]) == ["a", "c"] and np.array_equal(cols["student_prob_c"], probs[:, 2])
    assert list(reg.truth_columns(np.array([1.5, 2.5]), [])) == ["y"]
    cols = reg.point_columns({"mean": np.array([1.0, 2.0]), "variance": np.array([0.5, 0.25])}, [], "teacher")
    assert list(cols) == ["teacher_mean", "teacher_variance"] and np.array_equal(cols["teacher_variance"], [0.5, 0.25])

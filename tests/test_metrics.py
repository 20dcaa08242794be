"""Metrics against hand-computed values and TFP's reference implementations."""
import numpy as np
import pytest

from distill import metrics


def test_nll_accuracy_brier_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1])
    assert metrics.nll(p, y) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2)
    assert metrics.accuracy(p, y) == 0.5
    assert metrics.brier(p, y) == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.81 + 0.64)) / 2)


def test_ece_matches_tfp():
    import tensorflow as tf
    import tensorflow_probability as tfp

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3)) * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = rng.integers(0, 3, 500)
    ref = tfp.stats.expected_calibration_error(15, logits=tf.math.log(tf.constant(p, tf.float32)), labels_true=tf.constant(y, tf.int32))
    assert metrics.ece(p, y) == pytest.approx(float(ref), abs=1e-6)


def test_brier_is_tfp_plus_one():
    import tensorflow as tf
    import tensorflow_probability as tfp

    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1])
    ref = tfp.stats.brier_score(labels=tf.constant(y), logits=tf.math.log(tf.constant(p)))
    assert metrics.brier(p, y) == pytest.approx(float(tf.reduce_mean(ref)) + 1, abs=1e-6)


def test_entropy_decomposition():
    agree = np.tile([[[0.5, 0.5]]], (4, 1, 1))  # all draws the same: no epistemic part
    s = metrics.predictive_summary(agree)
    assert s["mutual_information"][0] == pytest.approx(0, abs=1e-9)
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # confident draws that disagree: all epistemic
    s = metrics.predictive_summary(disagree)
    assert s["entropy"][0] == pytest.approx(np.log(2))
    assert s["mutual_information"][0] == pytest.approx(np.log(2))
    assert s["variance"][0].tolist() == pytest.approx([0.25, 0.25])


def test_bootstrap_interval_covers_and_auroc():
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    lo, hi = metrics.bootstrap_interval(np.mean, x, num_resamples=500)
    assert lo < x.mean() < hi and hi - lo < 0.3
    assert metrics.auroc(np.zeros(10), np.ones(10)) == 1.0
    assert metrics.auroc(rng.normal(size=500), rng.normal(size=500)) == pytest.approx(0.5, abs=0.06)


def test_most_uncertain_pair():
    probs = np.array([[0.5, 0.5, 0.0], [0.0, 0.6, 0.4], [0.0, 0.4, 0.6]])
    mi = np.array([0.01, 0.3, 0.3])
    assert metrics.most_uncertain_pair(probs, mi, ["a", "b", "c"])[:2] == ("b", "c")

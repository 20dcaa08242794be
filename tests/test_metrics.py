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


def summarize(draws: np.ndarray) -> dict[str, np.ndarray]:
    """The classification task's summary of S draws [S, B, C], on numpy in and out."""
    import tensorflow as tf

    from distill import tasks

    return {k: v.numpy() for k, v in tasks.get("classification").summarize(tf.constant(draws, tf.float32)).items()}


def test_entropy_decomposition():
    agree = np.tile([[[0.5, 0.5]]], (4, 1, 1))  # all draws the same: no epistemic part
    s = summarize(agree)
    assert s["mutual_information"][0] == pytest.approx(0, abs=1e-6)
    assert s["entropy"][0] == pytest.approx(np.log(2), rel=1e-6)
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # confident draws that disagree: all epistemic
    s = summarize(disagree)
    assert s["entropy"][0] == pytest.approx(np.log(2), rel=1e-6)
    assert s["mutual_information"][0] == pytest.approx(np.log(2), rel=1e-5)
    assert s["expected_entropy"][0] == pytest.approx(0, abs=1e-6)
    assert s["variance"][0].tolist() == pytest.approx([0.25, 0.25])


def test_classification_summary_matches_a_numpy_reference():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(30, 7, 4)) * 2  # [S, B, C]
    draws = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    s = summarize(draws)
    probs = draws.mean(0)  # [B, C]
    entropy = -(probs * np.log(probs)).sum(-1)
    expected = -(draws * np.log(draws)).sum(-1).mean(0)
    np.testing.assert_allclose(s["probs"], probs, atol=1e-6)
    np.testing.assert_allclose(s["variance"], draws.var(0), atol=1e-6)
    np.testing.assert_allclose(s["entropy"], entropy, atol=1e-5)
    np.testing.assert_allclose(s["expected_entropy"], expected, atol=1e-5)
    np.testing.assert_allclose(s["mutual_information"], entropy - expected, atol=1e-5)
    assert (s["mutual_information"] > 1e-3).all()  # disagreeing draws: a non-trivial epistemic part


def test_bootstrap_interval_covers_and_auroc():
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    lo, hi = metrics.bootstrap_interval(np.mean, x, num_resamples=500)
    assert lo < x.mean() < hi and hi - lo < 0.3
    assert metrics.auroc(np.zeros(10), np.ones(10)) == 1.0
    assert metrics.auroc(rng.normal(size=500), rng.normal(size=500)) == pytest.approx(0.5, abs=0.06)


def test_vectorised_bootstrap_is_the_per_resample_loop(monkeypatch):
    """The classification metrics take a block of resamples at once; the interval is the one the per-resample loop
    gives, in any block size (the same index stream), and each resample's metric is the metric of its rows."""
    rng = np.random.default_rng(2)
    p, y = rng.dirichlet(np.full(4, 0.3), 200), rng.integers(0, 4, 200)
    idx = rng.integers(0, 200, (5, 200))
    for name, fn in metrics.CLASSIFICATION_METRICS.items():
        np.testing.assert_allclose(fn(p[idx], y[idx]), [fn(p[i], y[i]) for i in idx], atol=1e-12, err_msg=name)
        loop = metrics.bootstrap_interval(fn, p, y, num_resamples=300, seed=3)
        for block_values in (10 ** 9, 7 * 200 * 4):  # one block; blocks of 7 resamples
            monkeypatch.setattr(metrics, "BOOTSTRAP_BLOCK_VALUES", block_values)
            np.testing.assert_allclose(metrics.bootstrap_interval(fn, p, y, num_resamples=300, seed=3, vectorized=True),
                                       loop, atol=1e-12, err_msg=name)


def test_most_uncertain_pair():
    probs = np.array([[0.5, 0.5, 0.0], [0.0, 0.6, 0.4], [0.0, 0.4, 0.6]])
    mi = np.array([0.01, 0.3, 0.3])
    assert metrics.most_uncertain_pair(probs, mi, ["a", "b", "c"])[:2] == ("b", "c")


def _pair_by_loop(probs, mi, names):
    """most_uncertain_pair as a loop over rows: each row's MI summed into its top-two classes' pair, in row order."""
    totals = {}
    for row, m in zip(probs, mi):
        pair = tuple(sorted(np.argsort(-row)[:2]))
        totals[pair] = totals.get(pair, 0.0) + float(m)
    (a, b), best = max(totals.items(), key=lambda kv: kv[1])  # ties: the pair seen first
    return names[a], names[b], best / max(float(np.sum(mi)), metrics.EPS)


def test_most_uncertain_pair_in_chunks_equals_the_row_loop(monkeypatch):
    """Vectorised and sorted in row chunks: the same pair and the same share, bit for bit, ties included (no MI at
    all: the first row's pair)."""
    monkeypatch.setattr(metrics, "PAIR_CHUNK_ROWS", 64)
    rng = np.random.default_rng(2)
    for c in (3, 10, 30):
        probs = rng.dirichlet(np.full(c, 0.3), 1000).astype(np.float32)
        mi = rng.gamma(1.0, 0.1, 1000).astype(np.float32)
        names = [f"class {i}" for i in range(c)]
        assert metrics.most_uncertain_pair(probs, mi, names) == _pair_by_loop(probs, mi, names)
        assert metrics.most_uncertain_pair(probs, 0 * mi, names) == _pair_by_loop(probs, 0 * mi, names)


def test_intervals_from_per_row_values_are_the_intervals_of_the_probabilities():
    """classification_metrics_with_intervals resamples one value a row (classification_rows) for every metric at
    once: each interval is exactly the one resampling the probabilities gives, metric by metric."""
    rng = np.random.default_rng(4)
    p, y = rng.dirichlet(np.full(5, 0.4), 300).astype(np.float32), rng.integers(0, 5, 300)
    out = metrics.classification_metrics_with_intervals(p, y, "test", num_resamples=200, seed=7)
    for name, fn in metrics.CLASSIFICATION_METRICS.items():
        assert out[f"test/{name}"] == float(fn(p, y))
        assert out[f"test/{name}_ci95"] == list(metrics.bootstrap_interval(fn, p, y, num_resamples=200, seed=7,
                                                                           vectorized=True)), name

"""Metrics shared by the teacher's evaluation, the report and the experiments (pure numpy).

Conventions: `probs` is [N, C] (a predictive distribution per row), `y` is [N] class indices,
`probs_samples` is [S, N, C] (one softmax per Monte Carlo weight draw). Metric dicts are keyed
`split/metric` (e.g. `test/ece`), as in uncertainty-baselines. ECE and the reliability diagram
share `reliability_bins`; it is checked against `tfp.stats.expected_calibration_error` in tests
(TFP's version returns only the scalar, the report needs the bins).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

EPS = 1e-12
ECE_BINS = 15


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(probs, EPS, 1.0)
    return -(probs * np.log(p)).sum(axis=axis)


def classification_rows(probs: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """What the classification metrics average or bin, per row ([..., n] each; leading axes, e.g. bootstrap
    resamples, are kept): whether the top class is the label, log p(label), the squared error of the probabilities
    and the top-1 confidence. A bootstrap resamples these, one value a row, instead of the probabilities."""
    squared = np.eye(probs.shape[-1])[np.broadcast_to(y, probs.shape[:-1])]  # [..., n, C] float64 one-hot; then
    # sum_c (p_c - 1[y=c])^2 in place (one [n, C] array, not three)
    np.square(np.subtract(probs, squared, out=squared), out=squared)
    return {"correct": probs.argmax(-1) == y,
            "log_p": np.log(np.clip(np.take_along_axis(probs, y[..., None], -1)[..., 0], EPS, 1.0)),
            "squared": squared.sum(-1),
            "confidence": probs.max(-1)}


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean -log p(y) over the rows (the last axis of y; leading axes, e.g. bootstrap resamples, are kept)."""
    return ROW_METRICS["nll"](classification_rows(probs, y))


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return ROW_METRICS["accuracy"](classification_rows(probs, y))


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Textbook multi-class Brier score, sum_c (p_c - 1[y=c])^2, in [0, 2] (tfp's is this minus 1)."""
    return ROW_METRICS["brier"](classification_rows(probs, y))


def _bin_of(conf: np.ndarray, num_bins: int) -> np.ndarray:
    """The equal-width confidence bin of each top-1 confidence, 0 .. num_bins - 1 (bins closed on the right)."""
    return np.clip(np.digitize(conf, np.linspace(0.0, 1.0, num_bins + 1)[1:-1], right=True), 0, num_bins - 1)


def reliability_bins(probs: np.ndarray, y: np.ndarray, num_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-1 confidence in equal-width bins: count, mean confidence and accuracy per bin."""
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = _bin_of(conf, num_bins)
    count = np.bincount(which, minlength=num_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, num_bins) / count
        acc = np.bincount(which, correct, num_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def ece(probs: np.ndarray, y: np.ndarray, num_bins: int = ECE_BINS) -> float:
    """sum_b n_b / n |accuracy_b - confidence_b| = sum_b |sum_{i in b} (correct_i - conf_i)| / n, over the rows
    (the last axis of y; leading axes are kept)."""
    return _ece_of_rows(classification_rows(probs, y), num_bins)


def _ece_of_rows(rows: dict[str, np.ndarray], num_bins: int = ECE_BINS) -> np.ndarray:
    conf = rows["confidence"]  # [..., n]
    gap = rows["correct"] - conf  # [..., n]
    lead = int(np.prod(conf.shape[:-1]))
    which = _bin_of(conf, num_bins).reshape(lead, -1) + num_bins * np.arange(lead)[:, None]  # [lead, n] bin per row
    sums = np.bincount(which.ravel(), gap.ravel(), lead * num_bins).reshape(conf.shape[:-1] + (num_bins,))
    return np.abs(sums).sum(-1) / conf.shape[-1]


# Each classification metric from classification_rows' per-row values [..., n] -> [...]
ROW_METRICS: dict[str, Callable[[dict], np.ndarray]] = {
    "accuracy": lambda rows: rows["correct"].mean(-1),
    "nll": lambda rows: -rows["log_p"].mean(-1),
    "ece": _ece_of_rows,
    "brier": lambda rows: rows["squared"].mean(-1),
}


CLASSIFICATION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "nll": nll, "ece": ece, "brier": brier,
}


def classification_metrics(probs: np.ndarray, y: np.ndarray, split: str) -> dict[str, float]:
    rows = classification_rows(probs, y)  # once for the four metrics
    return {f"{split}/{name}": float(reduce(rows)) for name, reduce in ROW_METRICS.items()}


BOOTSTRAP_BLOCK_VALUES = 4_000_000  # array values per block of resamples (a vectorised statistic's working memory)


def bootstrap_intervals(
    fns: dict[str, Callable[..., float]], *arrays: np.ndarray, num_resamples: int = 1000, level: float = 0.95,
    seed: int = 0, vectorized: bool = False,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of each `fn(*arrays)` resampling rows (the first axis) jointly, every fn on the
    same resamples (one gather for all). `vectorized`: each fn takes a block of resamples at once (a leading resample
    axis on every array) and returns one value each."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    row_values = max(int(np.prod(a.shape[1:])) for a in arrays)
    block = max(1, BOOTSTRAP_BLOCK_VALUES // max(n * row_values, 1)) if vectorized else 1
    stats = {name: [] for name in fns}
    for start in range(0, num_resamples, block):  # the index stream is the same in any block size
        idx = rng.integers(0, n, (min(block, num_resamples - start), n))
        if vectorized:
            rows = [a[idx] for a in arrays]
            for name, fn in fns.items():
                stats[name].append(fn(*rows))
        else:
            for i in idx:
                rows = [a[i] for a in arrays]
                for name, fn in fns.items():
                    stats[name].append([fn(*rows)])
    bounds = [(1 - level) / 2, (1 + level) / 2]
    return {name: tuple(float(v) for v in np.quantile(np.concatenate(s), bounds)) for name, s in stats.items()}


def bootstrap_interval(fn: Callable[..., float], *arrays: np.ndarray, **kwargs) -> tuple[float, float]:
    """bootstrap_intervals of one statistic."""
    return bootstrap_intervals({"": fn}, *arrays, **kwargs)[""]


def classification_metrics_with_intervals(
    probs: np.ndarray, y: np.ndarray, split: str, num_resamples: int = 1000, seed: int = 0
) -> dict[str, float | list[float]]:
    """The metrics and their bootstrap intervals, resampling each row's classification_rows values (one value a row,
    where resampling the probabilities moved C; the same resamples, so the same intervals)."""
    rows = classification_rows(probs, y)  # {name: [n]}
    fns = {metric: _positional(reduce, list(rows)) for metric, reduce in ROW_METRICS.items()}
    intervals = bootstrap_intervals(fns, *rows.values(), num_resamples=num_resamples, seed=seed, vectorized=True)
    out: dict[str, float | list[float]] = {}
    for metric, reduce in ROW_METRICS.items():
        out[f"{split}/{metric}"] = float(reduce(rows))
        out[f"{split}/{metric}_ci95"] = list(intervals[metric])
    return out


def _positional(reduce: Callable[[dict], np.ndarray], names: list[str]) -> Callable[..., np.ndarray]:
    """A ROW_METRICS reducer as a function of the per-row arrays passed in `names`' order (bootstrap_intervals
    passes its arrays positionally)."""
    return lambda *arrays: reduce(dict(zip(names, arrays)))


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in nats."""
    p = np.clip(p, EPS, 1.0)
    q = np.clip(q, EPS, 1.0)
    return (p * (np.log(p) - np.log(q))).sum(-1)


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Area under ROC for telling OOD (positive, should score higher) from in-distribution rows."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(scores_in)), np.ones(len(scores_out))]
    return float(roc_auc_score(labels, np.r_[scores_in, scores_out]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def accuracy_vs_rejection(probs: np.ndarray, y: np.ndarray, score: np.ndarray, fractions: np.ndarray | None = None):
    """Accuracy on the rows kept after rejecting the highest-`score` fraction (e.g. by entropy)."""
    fractions = np.linspace(0.0, 0.9, 10) if fractions is None else fractions
    order = np.argsort(score, kind="stable")  # most confident first
    correct = (probs.argmax(-1) == y)[order]
    kept = [correct[: max(1, int(round(len(y) * (1 - f))))].mean() for f in fractions]
    return fractions, np.asarray(kept)


def most_uncertain_pair(probs: np.ndarray, mutual_information: np.ndarray, class_names: list[str]) -> tuple[str, str, float]:
    """The pair of classes that carries the most epistemic uncertainty.

    Each row's mutual information is credited to its two most probable classes; the pair with the
    largest total wins. Returns (class_a, class_b, share of all mutual information).
    """
    c = probs.shape[-1]
    top2 = np.concatenate([np.sort(np.argsort(-p, axis=-1)[:, :2], axis=-1)  # [n, 2], in row chunks (memory)
                           for p in np.array_split(probs, max(1, -(-len(probs) // PAIR_CHUNK_ROWS)))])
    seen, first, which = np.unique(top2[:, 0] * c + top2[:, 1], return_index=True, return_inverse=True)  # pair codes
    totals = np.bincount(which.ravel(), np.asarray(mutual_information, np.float64), len(seen))  # summed in row order
    in_order = np.argsort(first)  # the pairs seen, in order of first appearance: ties go to the earliest
    best = in_order[np.argmax(totals[in_order])]
    share = float(totals[best]) / max(float(np.sum(mutual_information)), EPS)
    return class_names[seen[best] // c], class_names[seen[best] % c], share


PAIR_CHUNK_ROWS = 65_536  # most_uncertain_pair sorts each row's classes this many rows at a time


# ---------------------------------------------------------------- regression (Gaussian predictives)
# Conventions: `y`, `mean`, `variance` are [N] in the target's original units; `mean_samples` and
# `variance_samples` are [S, N], the Gaussian of each Monte Carlo weight draw. The summaries of S
# draws (classes and Gaussians) are the tasks' own, in distill/tasks.py.

LOG_2PI = float(np.log(2.0 * np.pi))


def gaussian_log_likelihood(y: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """log N(y; mean, variance) per row, in nats."""
    variance = np.maximum(variance, EPS)
    return -0.5 * (LOG_2PI + np.log(variance) + (y - mean) ** 2 / variance)


def mixture_log_likelihood(y: np.ndarray, mean_samples: np.ndarray, variance_samples: np.ndarray) -> np.ndarray:
    """log (1/S sum_s N(y; mean_s, variance_s)) per row: the Monte Carlo predictive itself, not its
    Gaussian moment match (how MC dropout's UCI numbers are computed)."""
    from scipy.special import logsumexp

    per_draw = gaussian_log_likelihood(y[None, :], mean_samples, variance_samples)  # [S, N]
    return logsumexp(per_draw, axis=0) - np.log(len(mean_samples))


def rmse(y: np.ndarray, mean: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - mean) ** 2)))


def interval_coverage(y: np.ndarray, mean: np.ndarray, variance: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Observed share of rows inside the central Gaussian interval at each nominal level [L]."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + np.asarray(levels) / 2.0)  # [L]
    return (np.abs(y - mean)[None, :] <= z[:, None] * np.sqrt(np.maximum(variance, 0.0))[None, :]).mean(axis=1)


def gaussian_nll(y: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> float:
    return float(-gaussian_log_likelihood(y, mean, variance).mean())


def coverage_95(y: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> float:
    return float(interval_coverage(y, mean, variance, np.array([0.95]))[0])


REGRESSION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "rmse": lambda y, m, v: rmse(y, m), "nll": gaussian_nll, "coverage_95": coverage_95,
}


def regression_metrics(y: np.ndarray, mean: np.ndarray, variance: np.ndarray, split: str) -> dict[str, float]:
    """RMSE of the mean, NLL of the Gaussian predictive (nats per row; the UCI tables report its negative,
    the test log-likelihood) and the coverage of its central 95% interval, keyed `split/metric`."""
    return {f"{split}/{name}": fn(y, mean, variance) for name, fn in REGRESSION_METRICS.items()}


def regression_metrics_with_intervals(y, mean, variance, split: str, num_resamples: int = 1000, seed: int = 0) -> dict:
    intervals = bootstrap_intervals(REGRESSION_METRICS, y, mean, variance, num_resamples=num_resamples, seed=seed)
    out: dict[str, float | list[float]] = {}
    for name, fn in REGRESSION_METRICS.items():
        out[f"{split}/{name}"] = fn(y, mean, variance)
        out[f"{split}/{name}_ci95"] = list(intervals[name])
    return out


def mean_and_standard_error(values) -> tuple[float, float]:
    """Mean over splits and its standard error, std (ddof=1) / sqrt(n), as UCI tables report them."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")

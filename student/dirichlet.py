"""The Dirichlet student (Ensemble Distribution Distillation, Malinin et al. 2020), in mean-precision form.

The student's logits z [B, C] give the Dirichlet's mean p = softmax(z), fitted by the same
cross-entropy to the teacher's predictive as every student, and a second output its log-precision
log alpha_0 [B], so alpha = alpha_0 p. The precision target of each transfer row is a proxy
(Ryabinin et al. 2021): the maximum-likelihood precision of the teacher's per-draw probabilities
pi_s under Dir(alpha_0 p_teacher), whose only data term is their mean log m = mean_s log pi_s (the
soft labels' `mean_log_probs`):

    1/S sum_s log Dir(pi_s; alpha) = log Gamma(alpha_0) - sum_k log Gamma(alpha_k) + sum_k (alpha_k - 1) m_k

found by Newton's method from Minka's (2000) closed-form start; the student regresses it (MSE on
the standardised log). Fitting mean and precision together by that likelihood, as in the paper,
diverged here with Adam (the gradient grows with alpha_0) and moved the mean away from the teacher's.

Its uncertainty in closed form, one deterministic pass:
    total       H[p]
    aleatoric   E_{pi ~ Dir}[H[pi]] = sum_k p_k (psi(alpha_0 + 1) - psi(alpha_k + 1))
    epistemic   mutual information = total - aleatoric.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy import special

PRECISION_RANGE = (1e-2, 1e8)  # alpha_0 kept here: lgamma and float32 digamma differences stay meaningful
MLE_TOLERANCE = 1e-10  # precision_mle: a row is done when a Newton step moves alpha_0 by less than this (relative)


def mean_log_density(alpha: np.ndarray, mean_log_probs: np.ndarray) -> np.ndarray:
    """[N]: the mean log-density of draws with mean log `mean_log_probs` [N, C] under Dir(alpha [N, C])."""
    return (special.gammaln(alpha.sum(-1)) - special.gammaln(alpha).sum(-1)
            + ((alpha - 1.0) * mean_log_probs).sum(-1))


def precision_mle(p: np.ndarray, mean_log_probs: np.ndarray, iterations: int = 30) -> np.ndarray:
    """The alpha_0 [N] that maximises `mean_log_density(alpha_0 p, m)` for fixed means p [N, C] (rows on the
    simplex). Minka's start (C - 1) / (2 sum_k p_k (log p_k - m_k)), then Newton steps on log alpha_0 until a row's
    step changes it by less than MLE_TOLERANCE (relative): Newton gets there in about five steps, after which the
    special functions' rounding only jitters alpha_0 by ~2e-11. (Thirty steps for every row made the trigamma calls
    97% of the student's reading of a million soft labels, 90 s.)"""
    p = np.asarray(p, np.float64)
    m = np.asarray(mean_log_probs, np.float64)
    gap = np.maximum((p * (np.log(p) - m)).sum(-1), 1e-12)  # >= 0 by Jensen: how much the draws spread
    s = np.clip((p.shape[-1] - 1) / (2 * gap), *PRECISION_RANGE)
    pm = (p * m).sum(-1)
    moving = np.arange(len(s))  # rows still changing
    for _ in range(iterations):
        if not len(moving):
            break
        new = _newton_step(s[moving], p[moving], pm[moving])
        changed = np.abs(new - s[moving]) > MLE_TOLERANCE * s[moving]
        s[moving] = new
        moving = moving[changed]
    return s


def _newton_step(s: np.ndarray, p: np.ndarray, pm: np.ndarray) -> np.ndarray:
    """One of precision_mle's Newton steps on log alpha_0: s [n], p [n, C], pm = sum_k p_k m_k [n] -> the next s."""
    grad = special.digamma(s) - (p * special.digamma(s[:, None] * p)).sum(-1) + pm  # d/ds
    hess = special.polygamma(1, s) - (p ** 2 * special.polygamma(1, s[:, None] * p)).sum(-1)  # d2/ds2 < 0
    # Newton on u = log s: f_u = s f_s, f_uu = s^2 f_ss + s f_s; uphill by one e-fold where f_uu >= 0
    f_u, f_uu = s * grad, s * s * hess + s * grad
    step = np.where(f_uu < 0, -f_u / np.minimum(f_uu, -1e-300), np.sign(f_u))
    return np.clip(s * np.exp(np.clip(step, -2.0, 2.0)), *PRECISION_RANGE)


def uncertainty(logits: tf.Tensor, log_precision: tf.Tensor) -> dict[str, tf.Tensor]:
    """probs [B, C], entropy, expected_entropy, mutual_information [B] of Dir(alpha_0 softmax(logits)).

    The mutual information is computed without cancellation, as sum_k p_k h(alpha_k) - h(alpha_0) with
    h(a) = psi(a + 1) - log a (excess_digamma), which equals H[p] - E[H[pi]]: for a confident row alpha_0 is large
    (up to 1e8), both sides of H[p] - E[H[pi]] are near log alpha_0, and their float32 difference was mostly rounding
    while the information itself is ~(C - 1) / (2 alpha_0). Every op runs on the whole served batch, so there are few:
    one log-softmax gives p and log p, one excess_digamma covers alpha_0 and every alpha_k."""
    lo, hi = (float(np.log(v)) for v in PRECISION_RANGE)
    log_p = tf.nn.log_softmax(logits, -1)  # [B, C]
    p = tf.exp(log_p)
    alpha0 = tf.exp(tf.clip_by_value(log_precision, lo, hi))[:, None]  # [B, 1]
    # alpha_k underflows to 0 where p_k does (log p_k < -103); its term p_k h(alpha_k) is then 0 x finite
    h = excess_digamma(tf.maximum(tf.concat([alpha0, alpha0 * p], -1), TINY))  # [B, 1 + C]
    entropy = -tf.reduce_sum(p * log_p, -1)
    information = tf.maximum(tf.reduce_sum(p * h[:, 1:], -1) - h[:, 0], 0.0)
    return {"probs": p, "entropy": entropy, "expected_entropy": entropy - information,
            "mutual_information": information}


TINY = 1e-30  # the smallest concentration excess_digamma sees
SERIES_FROM = 10.0  # excess_digamma: the asymptotic series from here on (truncation error < 5e-11)


def excess_digamma(a: tf.Tensor) -> tf.Tensor:
    """h(a) = psi(a + 1) - log a for a > 0, from TFLite builtin ops. Below SERIES_FROM: digamma_above_one(a + 1) -
    log a (both O(1)); above, the asymptotic series 1/(2a) - 1/(12a^2) + 1/(120a^4) - 1/(252a^6), which keeps the
    relative precision of a small h where the difference of two logarithms would not."""
    inv = 1.0 / a
    inv2 = inv * inv
    series = 0.5 * inv - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252)))
    small = tf.minimum(a, SERIES_FROM)  # the near branch is kept only below SERIES_FROM
    near = digamma_above_one(small + 1.0) - tf.math.log(small)
    return tf.where(a < SERIES_FROM, near, series)


def digamma_above_one(x: tf.Tensor) -> tf.Tensor:
    """psi(x) for x >= 1 from builtin ops only (TFLite has no Digamma kernel, and the student converts to TFLite):
    the recurrence psi(x) = psi(x + 2) - 1/x - 1/(x + 1), then the asymptotic series at y = x + 2 >= 3 to y^-10
    (truncation error < 5e-8; tests compare it with tf.math.digamma). Few ops: each is one pass over the batch."""
    y = x + 2.0
    inv = 1.0 / y
    inv2 = inv * inv
    series = inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (1.0 / 240 - inv2 * (1.0 / 132)))))
    return tf.math.log(y) - 0.5 * inv - series - 1.0 / x - 1.0 / (x + 1.0)

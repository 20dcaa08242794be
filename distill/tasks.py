"""The likelihood of a run: everything that differs between classification and regression, and nothing else.

A `Task` owns the teacher's output head and log-likelihood, the summary of S Monte Carlo draws, the
soft-label columns, the student's head and distillation loss, and the metrics. Model builders, the
training loop, the exports, the transfer set, the Beam job, the evaluation and serving are written
once against it. Two tasks exist:

- `Categorical` (classification): the head gives logits [B, C]; a draw's parameters are its softmax
  [B, C]; S draws summarise to probs, per-class variance, entropy = expected_entropy (aleatoric)
  + mutual_information (epistemic). The student distils with the cross-entropy to the teacher's
  predictive (Bayesian dark knowledge, Korattikara et al. 2015; temperature as in Hinton et al.).
- `Gaussian` (regression, heteroscedastic): the head gives [B, 2] -> mean and a softplus variance;
  a draw's parameters are [mean, variance] [B, 2]; S draws summarise to the mixture's mean, total
  variance and its epistemic part (variance of the draws' means). The student distils with the
  expected Gaussian NLL under the teacher's moment-matched predictive.

Parameters are in the model's normalised units; `to_target_units` maps them to the user's units
(the identity for classes; mean * std + shift and variance * std^2 for a z-scored target).

TensorFlow is imported inside the methods that need it, so the CLI can choose a task before
TensorFlow loads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill import metrics, schema
from distill.errors import BdkError

TASKS = ("classification", "regression")
TEMPERATURE_BOUNDS = (0.25, 4.0)  # the temperature-scaled baseline's search interval
TEMPERATURE_PRIOR_ROWS = 100  # shrinkage of the fitted log temperature: weight n / (n + this) on n validation rows


def _log(p):
    import tensorflow as tf

    return tf.math.log(tf.clip_by_value(p, 1e-12, 1.0))


@dataclass(frozen=True)
class Task:
    """The interface (see the module docstring); the two subclasses fill it in."""

    name: str = ""
    outputs: tuple[str, ...] = ()  # predictive outputs: export signatures, soft-label columns, in this order
    vector_outputs: tuple[str, ...] = ()  # those of them that are [B, C] (list<float> columns), the rest [B]
    epistemic_output: str = ""  # the teacher's epistemic score among `outputs`
    total_output: str = ""  # the total predictive uncertainty, among every model's outputs
    metric_names: tuple[str, ...] = ()  # what `metrics` reports, in the report's column order
    feature_scaling: str = "standard"  # default feature normaliser (distill.data.Normaliser)
    # Unit of the transfer set's perturbation noise per feature: "box" = the train box's width, "std" = the train std.
    noise_unit: str = "std"
    logit_head: bool = False  # the head gives logits (the Flipout teacher's noise-contrastive prior acts on them)
    has_classes: bool = False  # the predictive is over classes (what the Dirichlet student models)
    no_label: float = float("nan")  # the label of a transfer row without a true one (classes: schema.NO_LABEL)
    normalises_target: bool = False  # the target is z-scored on train (regression), the networks see z-units
    metrics_need_draws: bool = False  # `draw_metrics` reads every draw's parameters (`sample_dict`), not the summary only

    # ---------------------------------------------------------------- teacher
    def head_units(self, num_classes: int) -> int:
        raise NotImplementedError

    def soft_target_width(self, num_classes: int) -> int:
        """Columns of `soft_targets` [N, K]."""
        raise NotImplementedError

    def draw_params(self, head):
        """One draw's head output [B, units] -> its distribution's parameters [B, K] (normalised units)."""
        raise NotImplementedError

    def log_likelihood(self, y, head):
        """log p(y | one draw's head output), per row [B]: the ELBO's likelihood term."""
        raise NotImplementedError

    def to_target_units(self, params, shift, scale):
        """Parameters [..., K] from normalised to target units (shift, scale: the target normaliser)."""
        return params

    def summarize(self, params_samples) -> dict[str, Any]:
        """S draws' parameters [S, B, K] -> the posterior predictive's `outputs`."""
        raise NotImplementedError

    def sample_dict(self, params_samples) -> dict[str, Any]:
        raise NotImplementedError

    # ---------------------------------------------------------------- student
    def point_outputs(self, params) -> dict[str, Any]:
        """One distribution's parameters [B, K] (target units) -> a deterministic model's outputs."""
        raise NotImplementedError

    def distill_loss(self, target, head, labels, temperature: float = 1.0, alpha: float = 0.0):
        """Batch mean of the cross-entropy from the teacher's predictive to the student's distribution:
        `target` [B, K] is the teacher's predictive in normalised units (`soft_targets`), `head` the
        student's head [B, units] (the same head type as the teacher's)."""
        raise NotImplementedError

    def soft_targets(self, outputs: dict[str, np.ndarray], shift: float, scale: float) -> np.ndarray:
        """The teacher's predictive (target units, from soft labels or an export) -> [N, K] normalised."""
        raise NotImplementedError

    # ---------------------------------------------------------------- metrics
    def metrics(self, y: np.ndarray, pred: dict[str, np.ndarray], split: str) -> dict[str, float]:
        raise NotImplementedError

    def metrics_with_intervals(self, y, pred, split, resamples: int = 1000, seed: int = 0) -> dict:
        raise NotImplementedError

    def label_dtype(self):
        raise NotImplementedError

    def temperature_scaled(self, pred: dict[str, np.ndarray], t: float) -> dict[str, np.ndarray]:
        """A point model's outputs with its uncertainty rescaled by temperature `t` (Guo et al. 2017)."""
        raise NotImplementedError

    def fit_temperature(self, y: np.ndarray, pred: dict[str, np.ndarray]) -> float:
        """The temperature that minimises the NLL of (y, pred) (the validation split), within
        TEMPERATURE_BOUNDS and shrunk towards 1 on few rows: log t * n / (n + TEMPERATURE_PRIOR_ROWS), so that
        24-32 validation rows cannot fit an extreme temperature."""
        from scipy.optimize import minimize_scalar

        y = np.asarray(y)
        nll = lambda log_t: self.metrics(y, self.temperature_scaled(pred, float(np.exp(log_t))), "v")["v/nll"]  # noqa: E731
        log_t = minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded").x
        return float(np.exp(log_t * len(y) / (len(y) + TEMPERATURE_PRIOR_ROWS)))

    def divergence(self, teacher: dict[str, np.ndarray], student: dict[str, np.ndarray]) -> np.ndarray:
        """KL(teacher's predictive || student's) per row, in nats."""
        raise NotImplementedError

    def uncertainty_summary(self, pred: dict[str, np.ndarray]) -> dict[str, float]:
        """Extra test metrics of a model that estimates its epistemic part (none by default)."""
        return {}

    # ---------------------------------------------------------------- per-example tables
    def truth_columns(self, y: np.ndarray, class_names: list[str]) -> dict[str, np.ndarray]:
        """The truth of each row, as the per-example CSVs name it."""
        raise NotImplementedError

    def point_columns(self, pred: dict[str, np.ndarray], class_names: list[str], prefix: str) -> dict[str, np.ndarray]:
        """A model's point prediction and total uncertainty per row, `prefix`ed (the side-by-side CSV)."""
        raise NotImplementedError

    def draw_metrics(self, y: np.ndarray, pred: dict[str, np.ndarray], draws: dict[str, np.ndarray] | None,
                     split: str) -> dict[str, float]:
        """Extra teacher metrics of one split from its predictive `pred` and, when `metrics_need_draws`, its draws'
        parameters `draws` (`sample_dict`); none by default."""
        return {}

    def pair_summary(self, preds: list[dict[str, np.ndarray]], class_names) -> dict[str, Any]:
        """Extra teacher metrics over several splits' predictives together (none by default)."""
        return {}


DIRICHLET_SMOOTHING = 1e-3  # draws mixed with this much of the uniform before their log (a finite Dirichlet likelihood)


@dataclass(frozen=True)
class Categorical(Task):
    name: str = "classification"
    # mean_log_probs: the mean over draws of log(smoothed probs) [B, C], the Dirichlet student's sufficient statistic
    outputs: tuple[str, ...] = ("probs", "variance", "entropy", "expected_entropy", "mutual_information", "mean_log_probs")
    vector_outputs: tuple[str, ...] = ("probs", "variance", "mean_log_probs")
    epistemic_output: str = "mutual_information"
    total_output: str = "entropy"
    metric_names: tuple[str, ...] = tuple(metrics.CLASSIFICATION_METRICS)
    # z-scores: min-max squeezed the bulk of outlier-heavy features towards 0 and networks trained at Adam 1e-2 died
    # on them (a 10-class, 50-feature make_classification problem: every model at chance under min-max).
    feature_scaling: str = "standard"
    noise_unit: str = "box"  # the recipe validated when classes were min-max scaled (box width = 1 there)
    logit_head: bool = True
    has_classes: bool = True
    no_label: int = schema.NO_LABEL

    def head_units(self, num_classes: int) -> int:
        return num_classes

    def draw_params(self, head):
        import tensorflow as tf

        return tf.nn.softmax(head, axis=-1)  # [B, C]

    def log_likelihood(self, y, head):
        import tensorflow as tf

        return -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=head)

    def summarize(self, params_samples):
        import tensorflow as tf

        probs = tf.reduce_mean(params_samples, axis=0)  # [B, C]
        entropy = -tf.reduce_sum(probs * _log(probs), axis=-1)  # [B]
        expected = tf.reduce_mean(-tf.reduce_sum(params_samples * _log(params_samples), axis=-1), axis=0)  # [B]
        classes = tf.cast(tf.shape(params_samples)[-1], params_samples.dtype)
        smoothed = (1.0 - DIRICHLET_SMOOTHING) * params_samples + DIRICHLET_SMOOTHING / classes  # [S, B, C], inside the simplex
        return {"probs": probs, "variance": tf.math.reduce_variance(params_samples, axis=0), "entropy": entropy,
                "expected_entropy": expected, "mutual_information": tf.maximum(entropy - expected, 0.0),
                "mean_log_probs": tf.reduce_mean(tf.math.log(smoothed), axis=0)}

    def sample_dict(self, params_samples):
        return {"probs_samples": params_samples}  # [S, B, C]

    def point_outputs(self, params):
        import tensorflow as tf

        return {"probs": params, "entropy": -tf.reduce_sum(params * _log(params), axis=-1)}  # [B, C], [B]

    def distill_loss(self, target, head, labels, temperature: float = 1.0, alpha: float = 0.0):
        """(1 - alpha) T^2 CE(q^(1/T) renormalised, softmax(z / T)) + alpha CE(labels, softmax(z)) on labelled rows.

        At T = 1 the first term is the cross-entropy to the teacher's posterior predictive; T > 1 softens
        both sides and T^2 keeps the gradient scale (Hinton et al.).
        """
        import tensorflow as tf

        t = tf.constant(temperature, tf.float32)
        q = tf.nn.softmax(_log(target) / t, axis=-1)  # [B, C]
        soft = t * t * tf.reduce_mean(-tf.reduce_sum(q * tf.nn.log_softmax(head / t, axis=-1), axis=-1))
        if alpha == 0.0:
            return soft
        mask = tf.cast(labels >= 0, tf.float32)  # [B]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(tf.cast(labels, tf.int32), 0), head)
        hard = tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
        return (1.0 - alpha) * soft + alpha * hard

    def soft_targets(self, outputs, shift, scale):
        return np.asarray(outputs["probs"], np.float32)  # [N, C]

    def soft_target_width(self, num_classes):
        return num_classes

    def metrics(self, y, pred, split):
        return metrics.classification_metrics(pred["probs"], np.asarray(y, np.int64), split)

    def metrics_with_intervals(self, y, pred, split, resamples: int = 1000, seed: int = 0):
        return metrics.classification_metrics_with_intervals(pred["probs"], np.asarray(y, np.int64), split, resamples, seed)

    def label_dtype(self):
        return np.int64

    def temperature_scaled(self, pred, t):
        logits = np.log(np.clip(pred["probs"], 1e-12, 1.0)) / t  # [N, C]
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        return {**pred, "probs": probs, "entropy": -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=-1)}

    def divergence(self, teacher, student):
        return metrics.kl_divergence(teacher["probs"], student["probs"])

    def pair_summary(self, preds, class_names):
        """The pair of classes the predictives' most uncertain rows fall between, and their share of those rows."""
        a, b, share = metrics.most_uncertain_pair(np.concatenate([p["probs"] for p in preds]),
                                                  np.concatenate([p["mutual_information"] for p in preds]), class_names)
        return {"most_uncertain_pair": [a, b], "most_uncertain_pair_share": share}

    def truth_columns(self, y, class_names):
        return {"true_class": np.asarray(class_names, dtype=object)[np.asarray(y)]}

    def point_columns(self, pred, class_names, prefix):
        cols = {f"{prefix}_predicted": np.asarray(class_names, dtype=object)[pred["probs"].argmax(-1)]}
        cols.update({f"{prefix}_prob_{name}": pred["probs"][:, c] for c, name in enumerate(class_names)})
        return {**cols, f"{prefix}_entropy": pred["entropy"]}


MIN_VARIANCE = 1e-6  # floor of the Gaussian head's variance (normalised units)
NOISE_INIT = 0.5  # the Gaussian head's variance starts at NOISE_INIT^2 (normalised units) at a zero output
_VARIANCE_OFFSET = math.log(math.expm1(NOISE_INIT ** 2))  # softplus(offset) = NOISE_INIT^2


@dataclass(frozen=True)
class Gaussian(Task):
    name: str = "regression"
    outputs: tuple[str, ...] = ("mean", "variance", "epistemic_variance")
    vector_outputs: tuple[str, ...] = ()
    epistemic_output: str = "epistemic_variance"
    total_output: str = "variance"
    metric_names: tuple[str, ...] = tuple(metrics.REGRESSION_METRICS)
    feature_scaling: str = "standard"
    metrics_need_draws: bool = True  # the mixture NLL
    normalises_target: bool = True

    def head_units(self, num_classes: int) -> int:
        return 2

    def uncertainty_summary(self, pred: dict[str, np.ndarray]) -> dict[str, float]:
        """The epistemic share of the predictive variance, averaged over rows."""
        return {"test/mean_epistemic_share": float((pred["epistemic"] / np.maximum(pred["variance"], metrics.EPS)).mean())}

    def draw_metrics(self, y, pred, draws, split):
        """The NLL of the draws' Gaussian mixture and the predictive's mean epistemic share of its variance."""
        return {f"{split}/nll_mixture": float(-metrics.mixture_log_likelihood(
                    y, draws["mean_samples"], draws["variance_samples"]).mean()),
                f"{split}/mean_epistemic_share": float((pred["epistemic_variance"] / pred["variance"]).mean())}

    def draw_params(self, head):
        import tensorflow as tf

        variance = tf.nn.softplus(head[..., 1] + _VARIANCE_OFFSET) + MIN_VARIANCE
        return tf.stack([head[..., 0], variance], axis=-1)  # [B, 2]

    def log_likelihood(self, y, head):
        import tensorflow as tf

        p = self.draw_params(head)
        mean, variance = p[..., 0], p[..., 1]
        return -0.5 * (math.log(2.0 * math.pi) + tf.math.log(variance) + tf.square(tf.cast(y, tf.float32) - mean) / variance)

    def to_target_units(self, params, shift, scale):
        import tensorflow as tf

        return tf.stack([params[..., 0] * scale + shift, params[..., 1] * scale * scale], axis=-1)

    def summarize(self, params_samples):
        import tensorflow as tf

        means, variances = params_samples[..., 0], params_samples[..., 1]  # [S, B] each
        epistemic = tf.math.reduce_variance(means, axis=0)  # [B]
        return {"mean": tf.reduce_mean(means, axis=0), "variance": epistemic + tf.reduce_mean(variances, axis=0),
                "epistemic_variance": epistemic}

    def sample_dict(self, params_samples):
        return {"mean_samples": params_samples[..., 0], "variance_samples": params_samples[..., 1]}  # [S, B] each

    def point_outputs(self, params):
        return {"mean": params[:, 0], "variance": params[:, 1]}  # [B] each

    def distill_loss(self, target, head, labels, temperature: float = 1.0, alpha: float = 0.0):
        """Batch mean of 0.5 [log s2 + (var_t + (mu_t - mu_s)^2) / s2]: E_{y ~ N(mu_t, var_t)}[-log N(y; mu_s, s2)]
        without its constant, the cross-entropy from the teacher's moment-matched predictive to the student's
        Gaussian; minimised at mu_s = mu_t, s2 = var_t. (`temperature` and `alpha` apply to classes only.)"""
        import tensorflow as tf

        s2 = self.draw_params(head)[:, 1]  # [B]
        return tf.reduce_mean(0.5 * (tf.math.log(s2) + (target[:, 1] + tf.square(target[:, 0] - head[:, 0])) / s2))

    def soft_targets(self, outputs, shift, scale):
        mean = (np.asarray(outputs["mean"], np.float64) - shift) / scale
        return np.stack([mean, np.asarray(outputs["variance"], np.float64) / scale ** 2], axis=-1).astype(np.float32)

    def soft_target_width(self, num_classes):
        return 2  # the moment-matched mean and variance

    def metrics(self, y, pred, split):
        return metrics.regression_metrics(np.asarray(y, np.float64), pred["mean"], pred["variance"], split)

    def metrics_with_intervals(self, y, pred, split, resamples: int = 1000, seed: int = 0):
        return metrics.regression_metrics_with_intervals(np.asarray(y, np.float64), pred["mean"], pred["variance"], split,
                                                         resamples, seed)

    def label_dtype(self):
        return np.float32

    def temperature_scaled(self, pred, t):
        return {**pred, "variance": np.asarray(pred["variance"]) * t * t}  # the predictive std scaled by t

    def divergence(self, teacher, student):
        vt, vs = np.maximum(teacher["variance"], metrics.EPS), np.maximum(student["variance"], metrics.EPS)
        return 0.5 * (np.log(vs / vt) + (vt + (teacher["mean"] - student["mean"]) ** 2) / vs - 1.0)

    def truth_columns(self, y, class_names):
        return {"y": np.asarray(y)}

    def point_columns(self, pred, class_names, prefix):
        return {f"{prefix}_mean": pred["mean"], f"{prefix}_variance": pred["variance"]}


_TASKS = {"classification": Categorical(), "regression": Gaussian()}


def get(name: str) -> Task:
    if name not in _TASKS:
        raise BdkError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return _TASKS[name]

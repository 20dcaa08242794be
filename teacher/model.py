"""The teacher networks (pure builders: no globals, no training).

Every family is an MLP over normalised features ending in the task's head ([batch, units]: logits
for classes, mean and raw variance for a Gaussian); `dense_layers` lists the layers the Monte
Carlo export samples from.
"""
from __future__ import annotations

import itertools

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as tfk

tfd = tfp.distributions


def scaled_kl(n_train: int, kl_weight: float):
    """KL(q || p) / N_train * kl_weight: the per-example share of the ELBO's KL term.

    TFP's layers add the raw KL as a layer loss; the ELBO of a minibatch averaged per example
    needs it divided by the training set size.
    """

    def divergence(q, p, _):
        return kl_weight * tfd.kl_divergence(q, p) / float(n_train)

    return divergence


def empirical_bayes_kl(n_train: int, kl_weight: float):
    """KL(q || N(0, s^2)) / N_train * kl_weight at the prior scale that minimises it, per layer.

    For a mean-field q = prod_i N(mu_i, sigma_i^2) over a kernel of n weights, the KL to N(0, s^2) is
    sum_i [log(s / sigma_i) + (sigma_i^2 + mu_i^2) / (2 s^2) - 1/2], minimised at
    s^2 = mean_i(sigma_i^2 + mu_i^2) (empirical Bayes, type-II: the prior scale that best explains the
    posterior), where it equals (n / 2) log s^2 - sum_i log sigma_i. At the optimum dKL/ds = 0, so
    the gradient with respect to q is the KL's at that fixed s.
    """

    def divergence(q, p, _):
        d = q.distribution
        mu, sigma = tf.convert_to_tensor(d.loc), tf.convert_to_tensor(d.scale)
        n = tf.cast(tf.size(mu), mu.dtype)
        s2 = tf.reduce_mean(tf.square(mu) + tf.square(sigma))
        return kl_weight * (0.5 * n * tf.math.log(s2) - tf.reduce_sum(tf.math.log(sigma))) / float(n_train)

    return divergence


def posterior_stats_reader(model: tfk.Model):
    """() -> quantiles of the kernels' posterior scales and, per layer, the empirical-Bayes prior scale
    sqrt(mean(mu^2 + sigma^2)): what the convergence figure plots against steps. One graph call per read (the
    teacher reads them every epoch; op by op in eager mode it cost as much as an epoch's steps on Iris)."""
    import numpy as np

    posteriors = [q.distribution for l in model.layers
                  for q in ([l.kernel_posterior] if isinstance(l, tfp.layers.DenseFlipout) else
                            l.posteriors() if hasattr(l, "posteriors") else [])]  # Flipout kernels, the Bayesian GRU's
    if not posteriors:
        return dict

    @tf.function(autograph=False)
    def read():
        sigmas = [tf.convert_to_tensor(d.scale) for d in posteriors]  # the kernels' shapes
        prior = [tf.sqrt(tf.reduce_mean(tf.square(tf.convert_to_tensor(d.loc)) + tf.square(s)))
                 for d, s in zip(posteriors, sigmas)]
        return tf.concat([tf.reshape(s, [-1]) for s in sigmas], 0), tf.stack(prior)  # [sum n_l], [layers]

    def stats() -> dict[str, float]:
        sigmas, prior = (t.numpy() for t in read())
        q = np.quantile(sigmas, [0.1, 0.5, 0.9])
        return {"sigma_p10": float(q[0]), "sigma_median": float(q[1]), "sigma_p90": float(q[2]),
                **{f"prior_scale_{i}": float(v) for i, v in enumerate(prior)}}

    return stats


def prior_where_unseen(model: tfk.Model, columns, prior: str) -> None:
    """Set the first layer's kernel rows that read `columns` (inputs constant over the train split: an unseen
    category's <oov> column, a missing indicator never set) to the prior, N(0, s^2). No likelihood term reaches those
    weights, so their exact posterior, tempered or not, is the prior; training only pulls them there through the KL,
    and early stopping keeps them near their small initial scale, so an input the data never varied would answer
    as confidently as a seen one. s is the layer's prior scale (empirical Bayes: its KL-optimal scale)."""
    import numpy as np

    layer = model.layers[0]
    if not len(columns) or not isinstance(layer, tfp.layers.DenseFlipout):
        return
    q = layer.kernel_posterior.distribution  # Normal, loc and scale [F, H]
    s = (posterior_stats(model)["prior_scale_0"] if prior == "empirical_bayes"
         else float(tf.reduce_max(layer.kernel_prior.distribution.scale)))
    rows = np.asarray(columns)
    loc, raw = q.loc.numpy(), q.scale.pretransformed_input.numpy()  # raw: the untransformed scales (softplus)
    loc[rows], raw[rows] = 0.0, tfp.math.softplus_inverse(np.float32(s)).numpy()
    q.loc.assign(loc), q.scale.pretransformed_input.assign(raw)


def posterior_stats(model: tfk.Model) -> dict[str, float]:
    """`posterior_stats_reader(model)()`, once."""
    return posterior_stats_reader(model)()


def normal_prior(scale: float):
    """N(0, scale^2) on every kernel weight (scale 1 is TFP's default prior)."""

    def prior_fn(dtype, shape, name, trainable, add_variable_fn):
        del name, trainable, add_variable_fn
        return tfd.Independent(tfd.Normal(loc=tf.zeros(shape, dtype), scale=tf.cast(scale, dtype)),
                               reinterpreted_batch_ndims=len(shape))

    return prior_fn


def seeded_initializers(seed: int):
    """One model's initialisers, each with its own seed derived from the run's, in the order they are asked for:
    `make("GlorotUniform")`, `make("RandomNormal", mean=-3.0, stddev=0.1)`. Keras seeds its own layers' defaults from
    the global seed, but TFP's and custom layers' default initialisers draw from a stream that models built earlier in
    the process have advanced: unseeded, the same seed gives another teacher in a process that built one before."""
    index = itertools.count()

    def make(name: str, **config) -> tfk.initializers.Initializer:
        return tfk.initializers.get({"class_name": name, "config": {**config, "seed": seed * 1009 + next(index)}})

    return make


def flipout_posteriors(make, posterior_scale_init: float) -> dict:
    """DenseFlipout's posterior arguments from `seeded_initializers`: mean-field normal kernel (means N(0, 0.1^2),
    untransformed scales N(posterior_scale_init, 0.1^2), TFP's defaults) and point-estimate bias."""
    return {"kernel_posterior_fn": tfp.layers.default_mean_field_normal_fn(
                loc_initializer=make("RandomNormal", stddev=0.1),
                untransformed_scale_initializer=make("RandomNormal", mean=posterior_scale_init, stddev=0.1)),
            "bias_posterior_fn": tfp.layers.default_mean_field_normal_fn(
                is_singular=True, loc_initializer=make("RandomNormal", stddev=0.1))}


def build_flipout(num_features: int, units: int, n_train: int, hidden: tuple[int, ...] = (64, 64), kl_weight: float = 1.0,
                  prior_scale: float = 1.0, posterior_scale_init: float = -3.0, prior: str = "normal",
                  seed: int = 0) -> tfk.Model:
    """Normalised features [batch, F] -> head [batch, units]; every call draws fresh weights (Flipout).

    Kernels have mean-field normal posteriors whose untransformed scales start near
    `posterior_scale_init`; biases are point estimates (TFP's default); `seed` fixes the initial weights.
    `prior`: "normal" is N(0, prior_scale^2) on every kernel weight; "fan_in" is N(0, prior_scale^2 / fan_in), the
    scaling under which the prior's function-space variance does not grow with the width (Neal 1996);
    "empirical_bayes" is N(0, s_l^2) per layer at the KL-minimising s_l (`empirical_bayes_kl`).
    """
    divergence = (empirical_bayes_kl if prior == "empirical_bayes" else scaled_kl)(n_train, kl_weight)
    widths = (num_features, *hidden)
    make = seeded_initializers(seed)

    def layer(width, name, activation=None):
        fan_in = widths[len(layers) - 1]
        scale = prior_scale / fan_in ** 0.5 if prior == "fan_in" else prior_scale
        return tfp.layers.DenseFlipout(
            width, activation=activation, name=name, **flipout_posteriors(make, posterior_scale_init),
            kernel_prior_fn=normal_prior(scale), kernel_divergence_fn=divergence)

    layers = [tfk.Input(shape=(num_features,), name="features")]
    for i, width in enumerate(hidden):
        layers.append(layer(width, f"flipout_{i}", "relu"))
    layers.append(layer(units, "head"))
    return tfk.Sequential(layers, name="flipout_teacher")


def noise_contrastive_prior(model: tfk.Model, x_noisy: tf.Tensor, logit_scale: float) -> tf.Tensor:
    """The noise-contrastive prior's loss (Hafner et al. 2019, NCP) for a Flipout classifier: on inputs pushed off
    the data, KL(N(0, logit_scale^2) || q(logit | x)) per logit, averaged over rows and summed over classes.

    q(logit | x) is the head's distribution under its own weight uncertainty given the hidden features (one Flipout
    draw of the hidden layers): mean h mu_W + b [batch, K], variance h^2 sigma_W^2 [batch, K] (the local
    reparameterisation). The term pulls the logits' mean towards 0 and their spread across weight draws towards
    logit_scale off the data: there, draws disagree, and the predictive's mutual information is high.
    """
    *body, head = model.layers
    h = x_noisy  # [batch, F]
    for layer in body:
        h = layer(h, training=True)  # [batch, H]
    q = head.kernel_posterior.distribution
    mu, sigma = tf.convert_to_tensor(q.loc), tf.convert_to_tensor(q.scale)  # [H, K] each
    mean = tf.matmul(h, mu) + tf.convert_to_tensor(head.bias_posterior.mean())  # [batch, K]
    var = tf.matmul(tf.square(h), tf.square(sigma)) + 1e-6  # [batch, K]
    prior = tfd.Normal(0.0, logit_scale)
    kl = tfd.kl_divergence(prior, tfd.Normal(mean, tf.sqrt(var)))  # [batch, K]
    return tf.reduce_mean(tf.reduce_sum(kl, -1))


def build_mlp(num_features: int, units: int, hidden: tuple[int, ...] = (64, 64), dropout: float = 0.0,
              weight_decay: float = 0.0, name: str = "mlp") -> tfk.Model:
    """Deterministic counterpart (ensemble member, MC dropout net, student body): [batch, F] -> [batch, units].

    Dropout layers are active when called with training=True.
    """
    reg = tfk.regularizers.L2(weight_decay) if weight_decay > 0 else None
    layers = [tfk.Input(shape=(num_features,), name="features")]
    for i, width in enumerate(hidden):
        layers.append(tfk.layers.Dense(width, activation="relu", kernel_regularizer=reg, name=f"dense_{i}"))
        if dropout > 0:
            layers.append(tfk.layers.Dropout(dropout, name=f"dropout_{i}"))
    layers.append(tfk.layers.Dense(units, kernel_regularizer=reg, name="head"))
    return tfk.Sequential(layers, name=name)


def dense_layers(model: tfk.Model) -> list:
    """The model's dense (or Flipout) layers in order: what the export samples weights for."""
    return [l for l in model.layers if isinstance(l, (tfk.layers.Dense, tfp.layers.DenseFlipout))]

"""The teacher networks (pure builders: no globals, no training).

Every family is an MLP over normalised features ending in the task's head ([batch, units]: logits
for classes, mean and raw variance for a Gaussian); `dense_layers` lists the layers the Monte
Carlo export samples from.
"""
from __future__ import annotations

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


def normal_prior(scale: float):
    """N(0, scale^2) on every kernel weight (scale 1 is TFP's default prior)."""

    def prior_fn(dtype, shape, name, trainable, add_variable_fn):
        del name, trainable, add_variable_fn
        return tfd.Independent(tfd.Normal(loc=tf.zeros(shape, dtype), scale=tf.cast(scale, dtype)),
                               reinterpreted_batch_ndims=len(shape))

    return prior_fn


def build_flipout(num_features: int, units: int, n_train: int, hidden: tuple[int, ...] = (64, 64), kl_weight: float = 1.0,
                  prior_scale: float = 1.0, posterior_scale_init: float = -3.0) -> tfk.Model:
    """Normalised features [batch, F] -> head [batch, units]; every call draws fresh weights (Flipout).

    Kernels have mean-field normal posteriors whose untransformed scales start near
    `posterior_scale_init`; biases are point estimates (TFP's default).
    """
    def layer(width, name, activation=None):
        return tfp.layers.DenseFlipout(
            width, activation=activation, name=name,
            kernel_posterior_fn=tfp.layers.default_mean_field_normal_fn(
                untransformed_scale_initializer=tfk.initializers.RandomNormal(mean=posterior_scale_init, stddev=0.1)),
            kernel_prior_fn=normal_prior(prior_scale), kernel_divergence_fn=scaled_kl(n_train, kl_weight))

    layers = [tfk.Input(shape=(num_features,), name="features")]
    layers += [layer(width, f"flipout_{i}", "relu") for i, width in enumerate(hidden)]
    layers.append(layer(units, "head"))
    return tfk.Sequential(layers, name="flipout_teacher")


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

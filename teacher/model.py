"""The Flipout teacher network (pure builder: no globals, no training)."""
from __future__ import annotations

import tensorflow_probability as tfp
import tf_keras as tfk

tfd = tfp.distributions

# The priors and posteriors the config may name (TFP's defaults are the mean-field ones).
POSTERIORS = {"mean_field_normal": tfp.layers.default_mean_field_normal_fn}
PRIORS = {"standard_normal": tfp.layers.default_multivariate_normal_fn}


def scaled_kl(n_train: int, kl_weight: float):
    """KL(q || p) / N_train * kl_weight: the per-example share of the ELBO's KL term.

    TFP's layers add the raw KL as a layer loss; the ELBO of a minibatch averaged per example
    needs it divided by the training set size.
    """

    def divergence(q, p, _):
        return kl_weight * tfd.kl_divergence(q, p) / float(n_train)

    return divergence


def build_flipout(
    num_features: int,
    num_classes: int,
    n_train: int,
    hidden: tuple[int, ...] = (64, 64),
    kl_weight: float = 1.0,
    posterior: str = "mean_field_normal",
    prior: str = "standard_normal",
) -> tfk.Model:
    """features in [0, 1] [batch, F] -> logits [batch, C]; every call draws fresh weights (Flipout)."""
    divergence = scaled_kl(n_train, kl_weight)
    layer_args = dict(
        kernel_posterior_fn=POSTERIORS[posterior](),
        kernel_prior_fn=PRIORS[prior],
        kernel_divergence_fn=divergence,
    )
    layers = [tfk.Input(shape=(num_features,), name="features")]
    for i, units in enumerate(hidden):
        layers.append(tfp.layers.DenseFlipout(units, activation="relu", name=f"flipout_{i}", **layer_args))
    layers.append(tfp.layers.DenseFlipout(num_classes, name="logits", **layer_args))
    return tfk.Sequential(layers, name="flipout_teacher")


def build_mlp(
    num_features: int,
    num_classes: int,
    hidden: tuple[int, ...] = (64, 64),
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    name: str = "mlp_teacher",
) -> tfk.Model:
    """Deterministic counterpart (ensemble member, MC dropout net): [batch, F] -> logits [batch, C].

    Dropout layers are active when called with training=True: the MC dropout export calls it so.
    """
    reg = tfk.regularizers.L2(weight_decay) if weight_decay > 0 else None
    layers = [tfk.Input(shape=(num_features,), name="features")]
    for i, units in enumerate(hidden):
        layers.append(tfk.layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"dense_{i}"))
        if dropout > 0:
            layers.append(tfk.layers.Dropout(dropout, name=f"dropout_{i}"))
    layers.append(tfk.layers.Dense(num_classes, kernel_regularizer=reg, name="logits"))
    return tfk.Sequential(layers, name=name)

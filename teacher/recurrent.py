"""The Bayesian recurrent teacher (Bayes by Backprop through time, Fortunato et al. 2017): pure builders and the
Monte Carlo pieces its export uses.

A GRU whose input kernel W [C, 3H] and recurrent kernel U [H, 3H] have mean-field Gaussian posteriors (TFP
Normals, the KL to the prior by `tfd.kl_divergence` or the empirical-Bayes closed form, scaled like the Flipout
teacher's), point-estimate biases, and a DenseFlipout head on the last hidden state. One weight draw per
sequence, the same at every time step:
- training: Flipout (Wen et al. 2018) over the sequence, W_i = loc + dW o (s_i r_i^T) with dW = scale * eps shared
  by the minibatch and random signs s_i, r_i drawn once per sequence (`FlipoutNoise`), so each sequence's
  dynamics come from one weight sample at the cost of two matmuls per step;
- export: S explicit draws W [S, C, 3H], U [S, H, 3H] run side by side (`forward_batched`), each draw over the
  whole sequence.
GRU cell (reset gate after the recurrent matmul, as Keras' and cuDNN's): [z | r | n] = x W + b_x and h U + b_h,
z = sigmoid(.), r = sigmoid(.), n = tanh(x_n + r * h_n), h' = z h + (1 - z) n.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as tfk

from teacher.model import empirical_bayes_kl, flipout_posteriors, normal_prior, scaled_kl, seeded_initializers

tfd = tfp.distributions


def gru_states(x_proj: tf.Tensor, recurrent, h0: tf.Tensor) -> tf.Tensor:
    """x_proj [..., B, T, 3H] (the input projections) and recurrent(h [..., B, H]) -> [..., B, 3H]: the hidden
    states [T, ..., B, H] (time major), from h0 [..., B, H]."""
    xs = tf.experimental.numpy.moveaxis(x_proj, -2, 0)  # [T, ..., B, 3H]

    def step(h, xt):
        xz, xr, xn = tf.split(xt, 3, axis=-1)
        hz, hr, hn = tf.split(recurrent(h), 3, axis=-1)
        z, r = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
        return z * h + (1.0 - z) * tf.tanh(xn + r * hn)

    if xs.shape[0] is None:  # length known only at run time (exports take any length): a while loop
        return tf.scan(step, xs, initializer=h0)
    states, h = [], h0  # a static length (training): unrolled, several times faster to differentiate on a CPU
    for xt in tf.unstack(xs):
        h = step(h, xt)
        states.append(h)
    return tf.stack(states)


def rademacher(shape) -> tf.Tensor:
    return 2.0 * tf.cast(tf.random.uniform(shape, maxval=2, dtype=tf.int32), tf.float32) - 1.0


@dataclass
class FlipoutNoise:
    """One minibatch's randomness: eps for dW and dU (shared), sign vectors per sequence (fixed over time)."""

    eps_kernel: tf.Tensor  # [C, 3H]
    eps_recurrent: tf.Tensor  # [H, 3H]
    s_in: tf.Tensor  # [B, C]
    r_in: tf.Tensor  # [B, 3H]
    s_rec: tf.Tensor  # [B, H]
    r_rec: tf.Tensor  # [B, 3H]


class BayesianGRU(tfk.layers.Layer):
    """[B, T, C] -> the last hidden state [B, H] (or every state [B, T, H] with return_sequences)."""

    def __init__(self, units: int, divergence, prior_fn, posterior_scale_init: float = -5.0,
                 return_sequences: bool = False, initializers=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.divergence, self.prior_fn = units, divergence, prior_fn
        self.posterior_scale_init, self.return_sequences = posterior_scale_init, return_sequences
        self.initializers = initializers or seeded_initializers(0)  # teacher.model.seeded_initializers

    def build(self, input_shape):
        c, h = int(input_shape[-1]), self.units
        make = self.initializers
        rho = lambda: make("RandomNormal", mean=self.posterior_scale_init, stddev=0.1)  # noqa: E731 (one each)
        self.kernel_loc = self.add_weight("kernel_loc", [c, 3 * h], initializer=make("GlorotUniform"))
        self.kernel_rho = self.add_weight("kernel_untransformed_scale", [c, 3 * h], initializer=rho())
        self.recurrent_loc = self.add_weight("recurrent_loc", [h, 3 * h], initializer=make("Orthogonal"))
        self.recurrent_rho = self.add_weight("recurrent_untransformed_scale", [h, 3 * h], initializer=rho())
        self.bias = self.add_weight("bias", [2, 3 * h], initializer="zeros")  # [input, recurrent] biases
        super().build(input_shape)

    def posteriors(self) -> list:
        """q(W), q(U): Independent Normals over each kernel."""
        return [tfd.Independent(tfd.Normal(loc, tf.nn.softplus(rho)), reinterpreted_batch_ndims=2)
                for loc, rho in ((self.kernel_loc, self.kernel_rho), (self.recurrent_loc, self.recurrent_rho))]

    def kl(self) -> tf.Tensor:
        """The scaled KL of both kernels (what the layer adds to model.losses)."""
        total = 0.0
        for q in self.posteriors():
            loc = q.distribution.loc
            total += self.divergence(q, self.prior_fn(loc.dtype, loc.shape, None, None, None), None)
        return total

    def noise(self, batch) -> FlipoutNoise:
        c, h = self.kernel_loc.shape[0], self.units
        return FlipoutNoise(tf.random.normal([c, 3 * h]), tf.random.normal([h, 3 * h]), rademacher([batch, c]),
                            rademacher([batch, 3 * h]), rademacher([batch, h]), rademacher([batch, 3 * h]))

    def sequence_weights(self, noise: FlipoutNoise) -> tuple[tf.Tensor, tf.Tensor]:
        """The weights each sequence of the minibatch runs with: W_i [B, C, 3H], U_i [B, H, 3H]."""
        (qw, qu) = (q.distribution for q in self.posteriors())
        dw, du = qw.scale * noise.eps_kernel, qu.scale * noise.eps_recurrent
        return (qw.loc + dw * noise.s_in[:, :, None] * noise.r_in[:, None, :],
                qu.loc + du * noise.s_rec[:, :, None] * noise.r_rec[:, None, :])

    def flipout(self, x: tf.Tensor, noise: FlipoutNoise) -> tf.Tensor:
        """x [B, T, C] with sequence i on weights `sequence_weights(noise)[i]`, by two matmuls per step ->
        states [T, B, H]."""
        (qw, qu) = (q.distribution for q in self.posteriors())
        dw, du = qw.scale * noise.eps_kernel, qu.scale * noise.eps_recurrent
        x_proj = (tf.matmul(x, qw.loc) + tf.matmul(x * noise.s_in[:, None, :], dw) * noise.r_in[:, None, :]
                  + self.bias[0])  # [B, T, 3H]

        def recurrent(h):  # [B, H] -> [B, 3H]
            return tf.matmul(h, qu.loc) + tf.matmul(h * noise.s_rec, du) * noise.r_rec + self.bias[1]

        return gru_states(x_proj, recurrent, tf.zeros([tf.shape(x)[0], self.units]))

    def call(self, x, training=None):
        self.add_loss(self.kl())
        if training:
            states = self.flipout(x, self.noise(tf.shape(x)[0]))
        else:  # the posterior mean (Keras' predict); the Monte Carlo export samples weights itself
            states = gru_states(tf.matmul(x, self.kernel_loc) + self.bias[0],
                                lambda h: tf.matmul(h, self.recurrent_loc) + self.bias[1],
                                tf.zeros([tf.shape(x)[0], self.units]))
        states = tf.experimental.numpy.moveaxis(states, 0, 1)  # [B, T, H]
        return states if self.return_sequences else states[:, -1]


def build_brnn(num_channels: int, units: int, n_train: int, hidden: tuple[int, ...] = (32,), kl_weight: float = 1.0,
               prior_scale: float = 1.0, posterior_scale_init: float = -5.0, prior: str = "normal",
               seed: int = 0) -> tfk.Model:
    """Normalised sequences [batch, time, C] -> head [batch, units]: a BayesianGRU of hidden[0] units, then a
    DenseFlipout head on its last state. Priors as `teacher.model.build_flipout`'s ("fan_in" divides the scale by
    sqrt(fan in) per kernel)."""
    divergence = (empirical_bayes_kl if prior == "empirical_bayes" else scaled_kl)(n_train, kl_weight)
    h = hidden[0]

    def prior_for(fan_in):
        return normal_prior(prior_scale / fan_in ** 0.5 if prior == "fan_in" else prior_scale)

    def per_kernel_prior(dtype, shape, *args):  # W's fan in is C, U's is H
        return prior_for(shape[0])(dtype, shape, *args)

    inputs = tfk.Input(shape=(None, num_channels), name="features")
    make = seeded_initializers(seed)
    state = BayesianGRU(h, divergence, per_kernel_prior, posterior_scale_init, initializers=make,
                        name="bayesian_gru")(inputs)
    head = tfp.layers.DenseFlipout(
        units, name="head", **flipout_posteriors(make, posterior_scale_init), kernel_prior_fn=prior_for(h),
        kernel_divergence_fn=divergence)(state)
    return tfk.Model(inputs, head, name="brnn_teacher")


def brnn_sampler(model: tfk.Model):
    """S explicit draws of the GRU's kernels and the head's: (seed, S) -> [(W [S, C, 3H], U [S, H, 3H], b [2, 3H]),
    (head kernel [S, H, K], head bias [K], None)]. Stateless, from one seed (teacher.export.layer_seed)."""
    from teacher.export import layer_seed

    gru, head = model.get_layer("bayesian_gru"), model.get_layer("head")

    def sample(seed, num_samples):
        draws = []
        for l, q in enumerate([*(q.distribution for q in gru.posteriors()), head.kernel_posterior.distribution]):
            loc, scale = tf.convert_to_tensor(q.loc), tf.convert_to_tensor(q.scale)
            eps = tf.random.stateless_normal(tf.concat([[num_samples], tf.shape(loc)], 0), layer_seed(seed, l))
            draws.append(loc + scale * eps)
        kernel, recurrent, head_kernel = draws
        return [(kernel, recurrent, tf.convert_to_tensor(gru.bias)),
                (head_kernel, tf.convert_to_tensor(head.bias_posterior.distribution.loc), None)]

    return sample


def forward_batched(x: tf.Tensor, weights: list) -> tf.Tensor:
    """x [B, T, C] through S sampled recurrent networks, each draw's weights at every step -> head [S, B, units]."""
    (kernel, recurrent, bias), (head_kernel, head_bias, _) = weights
    x_proj = tf.einsum("btc,sck->sbtk", x, kernel) + bias[0]  # [S, B, T, 3H]
    s, b, h = tf.shape(kernel)[0], tf.shape(x)[0], tf.shape(recurrent)[1]
    states = gru_states(x_proj, lambda state: tf.matmul(state, recurrent) + bias[1], tf.zeros(tf.stack([s, b, h])))
    return tf.matmul(states[-1], head_kernel) + head_bias  # [S, B, units]


def forward_one(x: tf.Tensor, weights: list, i) -> tf.Tensor:
    """x [B, T, C] through sampled network i -> head [B, units]."""
    (kernel, recurrent, bias), (head_kernel, head_bias, _) = weights
    return forward_batched(x, [(kernel[i][None], recurrent[i][None], bias), (head_kernel[i][None], head_bias, None)])[0]

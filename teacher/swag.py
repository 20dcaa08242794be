"""SWAG (Maddox et al. 2019): a Gaussian over the weights from the trajectory of SGD at a constant learning rate.

After ordinary training, SGD keeps running at a constant rate; after every epoch the flattened weights
theta_t (kernels and biases of every dense layer, [P]) update the running mean and second moment, and
the last K deviations theta_t - mean_t are kept. The posterior is N(mean, (diag + D D^T / (K - 1)) / 2)
with diag = max(second moment - mean^2, 0) and D the deviations [K, P]; a draw is

    theta = mean + sqrt(diag / 2) z1 + D^T z2 / sqrt(2 (K - 1)),    z1 ~ N(0, I_P), z2 ~ N(0, I_K).

`SwagMoments` holds the three as variables (what the export saves); `swag_sampler` draws weights in the
export contract of teacher.export (stateless, from one seed).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


class SwagCollector:
    """Running moments of the flattened weights of `layers` (numpy, during training)."""

    def __init__(self, layers: list, rank: int):
        self.layers, self.rank = layers, rank
        self.count, self.mean, self.sq_mean, self.deviations = 0, None, None, []

    def flat(self) -> np.ndarray:
        return np.concatenate([np.ravel(w.numpy()) for l in self.layers for w in (l.kernel, l.bias)]).astype(np.float64)

    def collect(self) -> None:
        theta = self.flat()  # [P]
        n = self.count
        self.mean = theta if n == 0 else (n * self.mean + theta) / (n + 1)
        self.sq_mean = theta ** 2 if n == 0 else (n * self.sq_mean + theta ** 2) / (n + 1)
        self.deviations = (self.deviations + [theta - self.mean])[-self.rank:]
        self.count = n + 1

    def moments(self) -> "SwagMoments":
        shapes = [(tuple(l.kernel.shape), tuple(l.bias.shape)) for l in self.layers]
        return SwagMoments(self.mean, self.sq_mean, np.stack(self.deviations), shapes)


class SwagMoments(tf.Module):
    """mean [P], sq_mean [P], deviations [K, P] and the layer shapes that split a flat vector back."""

    def __init__(self, mean, sq_mean, deviations, shapes):
        super().__init__(name="swag_moments")
        self.mean = tf.Variable(np.asarray(mean, np.float32), trainable=False, name="mean")
        self.sq_mean = tf.Variable(np.asarray(sq_mean, np.float32), trainable=False, name="sq_mean")
        self.deviations = tf.Variable(np.asarray(deviations, np.float32), trainable=False, name="deviations")
        self.shapes = [tuple(map(tuple, s)) for s in shapes]


def swag_sampler(moments: SwagMoments):
    """(seed, S) -> per layer (kernels [S, in, out], biases [S, out], None): the export's Sampler."""
    from teacher.export import layer_seed

    k = int(moments.deviations.shape[0])

    def sample(seed, num_samples):
        p = tf.shape(moments.mean)[0]
        diag = tf.sqrt(tf.maximum(moments.sq_mean - tf.square(moments.mean), 0.0) / 2.0)  # [P]
        z1 = tf.random.stateless_normal(tf.stack([num_samples, p]), layer_seed(seed, 0))  # [S, P]
        theta = moments.mean + diag * z1
        if k > 1:
            z2 = tf.random.stateless_normal(tf.stack([num_samples, k]), layer_seed(seed, 1))  # [S, K]
            theta += tf.matmul(z2, moments.deviations) / np.sqrt(2.0 * (k - 1))
        out, at = [], 0
        for kernel_shape, bias_shape in moments.shapes:
            n_k, n_b = int(np.prod(kernel_shape)), int(np.prod(bias_shape))
            kernel = tf.reshape(theta[:, at:at + n_k], tf.concat([[num_samples], kernel_shape], 0))
            bias = theta[:, at + n_k:at + n_k + n_b]
            out.append((kernel, bias, None))
            at += n_k + n_b
        return out

    return sample

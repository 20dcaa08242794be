"""The Monte Carlo SavedModel: raw features in, the posterior predictive out, for every family and task.

Each draw is one explicit weight sample shared by the whole batch: W = loc + scale * eps for a
Flipout layer's mean-field posterior, a member's weights for a deep ensemble, a Bernoulli mask on
the hidden units for MC dropout. The S draws' weights are sampled up front by stateless random ops
from one seed, so the predictive is a pure function of (features, S, seed): every row gets the same
S posterior samples whatever batch it arrives in. Flipout (random signs per row, two matmuls per
layer) is the estimator for training gradients; at inference each row needs only S independent
weight samples, which cost one matmul per layer and draw. Two evaluation orders, one result:
- small requests (S * batch <= BATCHED_ROWS): one batched matmul over [S, batch, width];
- large batches: a tf.while_loop of S whole-batch forward passes (memory stays at one draw).
Unseeded calls of up to PER_ROW_ROWS rows on a Flipout teacher (serving) draw per row instead, through the
pre-activations' exact conditional (`flipout_per_row`): the same per-row predictive at a fraction of the
random numbers, which dominate a single row's latency.

Signatures (all take `features` float32 [batch, F] of raw features, or [batch, time, C] raw sequences for the
recurrent teacher (teacher.recurrent: any length); outputs are named by the task,
distill.tasks: probs/variance/entropy/expected_entropy/mutual_information, or mean/variance/
epistemic_variance in the target's units):
- `serving_default`: `SERVING_SAMPLES` draws, fresh ones per call.
- `predictive`: `num_samples` (int32 scalar) draws, fresh per call; `predictive_seeded` adds `seed`
  (int64 scalar): the same seed gives bit-identical output. What the Beam job calls.
- `sample` / `sample_seeded`: each draw's distribution parameters ([S, batch, ...]).
- `serving_rows` (tables): `serving_default` on raw rows, one input per raw column (strings for categoricals, NaN
  for empty cells; distill.encoder), so TF Serving's named `instances` work with no client-side encoding.
- `predictive_seeded_rows` (tables whose feature specification encodes: text, booleans, empty cells):
  `predictive_seeded` on raw rows (the same inputs as `serving_rows`, plus `num_samples` and `seed`), encoded in the
  graph: what the Beam job calls on the raw columns of the transfer set.
Fresh draws come from a stateful random op with no seed attribute (seed = seed2 = 0), which TensorFlow
seeds from the OS at load: two processes that load one export draw differently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from distill import schema, tasks
from distill.errors import BdkError
from distill.encoder import RowEncoder, rows_function
from distill.features import ROWS_SIGNATURE, encoding_spec
from distill.savedmodel import Untracked, stabilise_fingerprint

SERVING_SAMPLES = 10
BATCHED_ROWS = 4096  # S * batch up to which the draws run as one batched matmul
PER_ROW_ROWS = 32  # unseeded requests up to this many rows use per-row draws (flipout_per_row), when the family has them


def fresh_seed() -> tf.Tensor:
    """An int64 scalar from the OS-seeded stream: no seed is frozen into the graph."""
    return tf.raw_ops.RandomUniformInt(shape=tf.constant([], tf.int32), minval=tf.constant(0, tf.int64), maxval=tf.constant(2 ** 62, tf.int64),
                                       seed=0, seed2=0)


def layer_seed(seed: tf.Tensor, layer: int) -> tf.Tensor:
    """The stateless [2] seed of one layer's draws."""
    return tf.random.experimental.stateless_fold_in(tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5eed, tf.int64)]),
                                                    layer)


# A sampler: (seed, S) -> per layer (kernels [S, in, out], biases [S, out], unit mask [S, out] or None).
Sampler = Callable[[tf.Tensor, tf.Tensor], list]


def flipout_sampler(layers: list) -> Sampler:
    """The mean-field posterior of each DenseFlipout layer, sampled explicitly; biases are point estimates."""

    def sample(seed, num_samples):
        out = []
        for l, layer in enumerate(layers):
            q = layer.kernel_posterior.distribution
            loc, scale = tf.convert_to_tensor(q.loc), tf.convert_to_tensor(q.scale)  # [in, out] each
            eps = tf.random.stateless_normal(tf.concat([[num_samples], tf.shape(loc)], 0), layer_seed(seed, l))
            bias = tf.convert_to_tensor(layer.bias_posterior.distribution.loc)  # [out]
            out.append((loc + scale * eps, tf.tile(bias[None], [num_samples, 1]), None))
        return out

    return sample


def dropout_sampler(layers: list, rate: float) -> Sampler:
    """MC dropout (Gal & Ghahramani 2016) as weight sampling: each draw drops hidden units with
    probability `rate` (inverted scaling), the same units for every row of the batch."""

    def sample(seed, num_samples):
        out = []
        for l, layer in enumerate(layers):
            kernel, bias = tf.convert_to_tensor(layer.kernel), tf.convert_to_tensor(layer.bias)
            mask = None
            if l < len(layers) - 1:
                keep = tf.random.stateless_uniform(tf.stack([num_samples, tf.shape(kernel)[1]]), layer_seed(seed, l)) >= rate
                mask = tf.cast(keep, tf.float32) / (1.0 - rate)  # [S, out]
            out.append((tf.tile(kernel[None], [num_samples, 1, 1]), tf.tile(bias[None], [num_samples, 1]), mask))
        return out

    return sample


def ensemble_sampler(members: list[list]) -> Sampler:
    """Draw i is member i mod M: with S a multiple of M the predictive is the exact ensemble mean."""

    def sample(seed, num_samples):
        which = tf.math.floormod(tf.range(num_samples), len(members))  # [S]
        out = []
        for l in range(len(members[0])):
            kernels = tf.stack([m[l].kernel for m in members])  # [M, in, out]
            biases = tf.stack([m[l].bias for m in members])  # [M, out]
            out.append((tf.gather(kernels, which), tf.gather(biases, which), None))
        return out

    return sample


def flipout_per_row(layers: list):
    """Unseeded small requests (serving): each row draws its own weights, layer by layer, through the
    pre-activations' exact conditional N(h loc + b, h^2 scale^2) (the local reparameterisation, Kingma et al.
    2015): the same per-row predictive as shared weight draws at out normals per layer and draw instead of
    in x out. (x [B, F], S, seed) -> head [S, B, units]."""

    def forward(x, num_samples, seed):
        h = tf.tile(x[None], tf.stack([num_samples, 1, 1]))  # [S, B, F]
        for l, layer in enumerate(layers):
            q = layer.kernel_posterior.distribution
            loc, scale = tf.convert_to_tensor(q.loc), tf.convert_to_tensor(q.scale)  # [in, out]
            mean = tf.matmul(h, loc) + tf.convert_to_tensor(layer.bias_posterior.distribution.loc)  # [S, B, out]
            sd = tf.sqrt(tf.matmul(tf.square(h), tf.square(scale)))
            h = mean + sd * tf.random.stateless_normal(tf.shape(mean), layer_seed(seed, l))
            if l < len(layers) - 1:
                h = tf.nn.relu(h)
        return h

    return forward


def forward_batched(x: tf.Tensor, weights: list) -> tf.Tensor:
    """x [B, F] through S sampled networks at once -> head [S, B, units]."""
    h = x[None]  # [1, B, F], broadcast over S
    for l, (kernel, bias, mask) in enumerate(weights):
        h = tf.matmul(h, kernel) + bias[:, None, :]  # [S, B, out]
        if l < len(weights) - 1:
            h = tf.nn.relu(h)
            if mask is not None:
                h = h * mask[:, None, :]
    return h


def forward_one(x: tf.Tensor, weights: list, i) -> tf.Tensor:
    """x [B, F] through sampled network i -> head [B, units]."""
    h = x
    for l, (kernel, bias, mask) in enumerate(weights):
        h = tf.matmul(h, kernel[i]) + bias[i]
        if l < len(weights) - 1:
            h = tf.nn.relu(h)
            if mask is not None:
                h = h * mask[i]
    return h


def check_rows_inputs(encoder: RowEncoder) -> None:
    """`predictive_seeded_rows` takes the raw columns beside `num_samples` and `seed`: a column of either name is a
    BdkError."""
    clash = sorted(c for c, name in encoder.names.items() if name in ("num_samples", "seed"))
    if clash:
        raise BdkError(f"feature column(s) {clash} take the names of the teacher's num_samples/seed inputs; rename "
                       "them in the dataset")


class MonteCarloModule(tf.Module):
    """Raw features -> the task's posterior predictive over S weight samples (see the module docstring)."""

    def __init__(self, task: tasks.Task, sampler: Sampler, models: list, feature_shift, feature_scale,
                 target_shift: float = 0.0, target_scale: float = 1.0, serving_samples: int = SERVING_SAMPLES,
                 per_row=None, input_shape: tuple | None = None, forward: tuple | None = None, feature_spec=None):
        """`input_shape`: one example's (default (F,); sequences (None, C): any length); `forward`: the
        (batched, one-draw) forward functions of the sampler's weights (default the dense network's); `feature_spec`
        (tables): adds the raw-row signature `serving_rows` (distill.encoder), and `predictive_seeded_rows` when the
        specification encodes (text, booleans, empty cells)."""
        super().__init__(name="monte_carlo_teacher")
        self.task = task
        self._keras = Untracked(list(models))
        # Track the variables, not the Keras models: tracking a Keras model makes tf.saved_model.save
        # trace every layer's call for Keras' own serialisation, which costs seconds and is never used.
        self.model_variables = [v for m in models for v in m.variables]
        self._sampler = sampler
        self._per_row = per_row
        self._forward_batched, self._forward_one = forward or (forward_batched, forward_one)
        self.feature_shift = tf.constant(np.asarray(feature_shift, np.float32))
        self.feature_scale = tf.constant(np.asarray(feature_scale, np.float32))
        self.target_shift = tf.constant(float(target_shift), tf.float32)
        self.target_scale = tf.constant(float(target_scale), tf.float32)
        self.serving_samples = serving_samples
        shape = list(input_shape or (int(self.feature_shift.shape[0]),))
        feats = tf.TensorSpec([None, *shape], tf.float32, name="features")
        count = tf.TensorSpec([], tf.int32, name="num_samples")
        seed = tf.TensorSpec([], tf.int64, name="seed")
        # The Monte Carlo loop is traced once, in `draws_seeded`, and every signature calls it (a function call in
        # the graph, not another trace: tracing costs ~1 s a function, more than a small run's evaluation).
        graph = lambda fn, *specs: tf.function(fn, input_signature=list(specs), autograph=False)  # noqa: E731
        self.draws_seeded = graph(self.draws, tf.TensorSpec([None, *shape], tf.float32), count, seed)
        self.predictive_seeded = graph(self._predictive, feats, count, seed)
        self.sample_seeded = graph(self._sample, feats, count, seed)
        self.predictive = graph(self._predictive_fresh, feats, count)
        self.serve = graph(lambda features: self.predictive(features, serving_samples), feats)
        self.sample = graph(lambda features, num_samples: self.sample_seeded(features, num_samples, fresh_seed()), feats, count)
        self.encoder = None if feature_spec is None else RowEncoder(feature_spec)
        self.serve_rows = None if self.encoder is None else rows_function(self.encoder, self.serve)
        self.predictive_seeded_rows = None
        if encoding_spec(feature_spec) is not None:  # the Beam job's raw columns (its workers)
            check_rows_inputs(self.encoder)
            self.predictive_seeded_rows = graph(lambda rows, num_samples, seed: self.predictive_seeded(
                self.encoder.encode(rows), num_samples, seed), self.encoder.input_signature(), count, seed)
        # Training-time validation: normalised inputs and outputs, one trace per (rows, S): a fixed validation set
        # with a Python int S takes one evaluation order without graph control flow (a tf.cond costs ~3 ms a call).
        self.predictive_normalised = tf.function(lambda x, num_samples, seed: task.summarize(self.draws(x, num_samples, seed)),
                                                 autograph=False)

    @property
    def models(self) -> list:
        return self._keras.value

    def draws(self, x: tf.Tensor, num_samples, seed, per_row: bool = False) -> tf.Tensor:
        """Normalised x [B, F] -> each draw's parameters [S, B, K] in normalised units; `per_row`: each row draws its
        own weights (`flipout_per_row`) instead of sharing the S weight samples."""
        if per_row:
            return self.task.draw_params(self._per_row(x, num_samples, seed))
        weights = self._sampler(seed, num_samples)

        def batched():
            return self.task.draw_params(self._forward_batched(x, weights))

        def loop():
            return tf.while_loop(lambda i, ta: i < num_samples,
                                 lambda i, ta: (i + 1, ta.write(i, self.task.draw_params(self._forward_one(x, weights, i)))),
                                 (tf.constant(0), tf.TensorArray(tf.float32, size=num_samples)))[1].stack()

        if isinstance(num_samples, int) and x.shape[0] is not None:  # static: the order is known at trace time
            return batched() if num_samples * x.shape[0] <= BATCHED_ROWS else loop()
        return tf.cond(tf.convert_to_tensor(num_samples) * tf.shape(x)[0] <= BATCHED_ROWS, batched, loop)

    def normalise(self, features: tf.Tensor) -> tf.Tensor:
        """Raw inputs [B, *input_shape] -> the networks' normalised inputs: the same float32 bits as
        distill.data.Normaliser.transform (one subtraction, one division)."""
        return (features - self.feature_shift) / self.feature_scale

    def _params(self, features, num_samples, seed, per_row=False):
        x = self.normalise(features)
        head = self.draws(x, num_samples, seed, True) if per_row else self.draws_seeded(x, num_samples, seed)
        return self.task.to_target_units(head, self.target_shift, self.target_scale)

    def _predictive(self, features, num_samples, seed, per_row=False):
        return self.task.summarize(self._params(features, num_samples, seed, per_row))

    def _predictive_fresh(self, features, num_samples):
        """Fresh draws: small requests per row when the family has them, else the seeded predictive's graph."""
        if self._per_row is None:
            return self.predictive_seeded(features, num_samples, fresh_seed())
        return tf.cond(tf.shape(features)[0] <= PER_ROW_ROWS,
                       lambda: self._predictive(features, num_samples, fresh_seed(), True),
                       lambda: self.predictive_seeded(features, num_samples, fresh_seed()))

    def _sample(self, features, num_samples, seed):
        return self.task.sample_dict(self._params(features, num_samples, seed))

    def save(self, path: Path) -> Path:
        tf.saved_model.save(self, str(path), signatures={
            "serving_default": self.serve.get_concrete_function(),
            "predictive": self.predictive.get_concrete_function(),
            schema.SEEDED_SIGNATURE: self.predictive_seeded.get_concrete_function(),
            "sample": self.sample.get_concrete_function(),
            "sample_seeded": self.sample_seeded.get_concrete_function(),
            **({ROWS_SIGNATURE: self.serve_rows.get_concrete_function()} if self.serve_rows else {}),
            **({schema.SEEDED_ROWS_SIGNATURE: self.predictive_seeded_rows.get_concrete_function()}
               if self.predictive_seeded_rows else {}),
        })
        stabilise_fingerprint(Path(path))
        return Path(path)

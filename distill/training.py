"""The one training loop: minibatch epochs, validation, early stopping, history, progress bar.

Teacher and student both train through `fit`: the caller supplies the gradient step and the
validation function; the loop keeps the weights of the best validation epoch and restores them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm


@dataclass
class FitResult:
    history: pd.DataFrame
    best_epoch: int
    best_value: float
    stopped_early: bool

    monitor: str = ""

    @property
    def improving_at_cap(self) -> bool:
        """The budget, not early stopping, ended training while the monitored value was still improving: over the
        last tenth of the epochs it fell by more than IMPROVING_TOLERANCE of its value (a decayed learning rate's
        last crumbs of progress do not count)."""
        run = len(self.history)
        if self.stopped_early or run < 2 or self.monitor not in self.history:
            return False
        values = self.history[self.monitor].to_numpy(np.float64)
        last = max(1, run // 10)
        before, after = values[:-last].min(), values[-last:].min()
        return bool(after < before - IMPROVING_TOLERANCE * abs(before))

    def cap_note(self, what: str, budget: str) -> str | None:
        """A one-line warning when the cap ended training while it still improved, else None."""
        if not self.improving_at_cap:
            return None
        return (f"warning: {what} stopped at its budget ({budget}) while still improving (best epoch {self.best_epoch} of "
                f"{len(self.history)}); a longer budget may help")


IMPROVING_TOLERANCE = 1e-3  # FitResult.improving_at_cap: a relative fall of the monitored value over the last tenth
LARGE_BATCH = 1024  # the largest batch size `scaled_batch` picks


def scaled_batch(base: int, n: int, rows_per_step: int = 200) -> int:
    """A batch size for `n` training rows: `base` on small data (the validated recipes), else the power of two
    nearest n / rows_per_step, at most LARGE_BATCH (1M rows x 50 features: 1024), so that a step budget covers
    several epochs of large data at an affordable cost per step."""
    return int(max(base, min(LARGE_BATCH, 2 ** round(np.log2(max(n, 1) / rows_per_step)))))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def epochs_for_steps(n: int, batch_size: int, steps: int) -> int:
    """Epochs (at least one) that a budget of `steps` optimiser steps buys at `n` rows."""
    return max(1, -(-steps // steps_per_epoch(n, batch_size)))


TENSOR_ALIGNMENT = 64  # bytes: TensorFlow's CPU tensors must start on a 64-byte boundary (EIGEN_MAX_ALIGN_BYTES)


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose buffer starts on a TENSOR_ALIGNMENT boundary, so that `host_tensor`
    can hand it to TensorFlow without a copy (numpy's large arrays start 16 bytes into a page)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + TENSOR_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % TENSOR_ALIGNMENT
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def host_tensor(a: np.ndarray):
    """A CPU tensor holding the array's rows: the same buffer when it is aligned and contiguous (aligned_empty),
    through DLPack, else one aligned copy. tf.constant and tf.convert_to_tensor keep two copies of a large array
    alive for as long as the tensor lives (measured: 152 MB of rows held 318 MB), which at a million rows was most
    of the teacher's and the baseline's growth in memory. The array must not be written while the tensor is used."""
    import tensorflow as tf

    a = np.asarray(a)
    if not a.size or a.dtype.kind not in "biuf":  # empty, or strings: nothing to share
        return tf.constant(a)
    if not a.flags.c_contiguous or a.ctypes.data % TENSOR_ALIGNMENT:
        aligned = aligned_empty(a.shape, a.dtype)
        aligned[...] = a
        a = aligned
    return tf.experimental.dlpack.from_dlpack(a.__dlpack__())


CHUNK_ROWS = 8192  # rows per prediction call on large splits (S draws x every row at once does not fit)


def in_chunks(fn, x: np.ndarray, axis: int = 0, rows: int = CHUNK_ROWS) -> dict[str, np.ndarray]:
    """fn(x[i:i + rows]) -> {name: array or tensor} over row chunks, each output concatenated along `axis` (its
    row axis); one call when x fits in one chunk."""
    out = {}
    for i in range(0, max(len(x), 1), rows):  # filled in place: never the chunks and their concatenation at once
        for k, v in fn(x[i:i + rows]).items():
            v = np.asarray(v)
            if k not in out:
                shape = list(v.shape)
                shape[axis] = len(x) if len(x) else v.shape[axis]
                out[k] = np.empty(shape, v.dtype)
            out[k][(slice(None),) * axis + (slice(i, i + v.shape[axis]),)] = v
    return out


def graph_steps(step, batch_size: int, variables, optimizer):
    """Minibatch steps over a block of rows as one graph call: fn(order [n] int, *columns [n, ...]) -> [batches, k]
    float64, the k scalars that `step(*batch columns)` returns for each batch, in order. The batches are
    consecutive slices of `order`, the last one smaller; the loop runs in the graph, one iteration at a time (so the
    steps' random ops draw in the same order on every run), without a Python round trip per step (3 ms each on this
    CPU, most of a small network's step). No autograph: its source conversion of every function the step calls
    (Keras, TFP) costs more than a small run's training. Traced once for any number of rows."""
    import tensorflow as tf

    optimizer.build(variables)  # slots are created here: a graph loop cannot create variables
    step = tf.function(step, autograph=False)  # traced once, called once per batch

    @tf.function(autograph=False, reduce_retracing=True)
    def steps(order, *data):
        batches = (tf.size(order) + batch_size - 1) // batch_size

        def body(i, out):
            values = step(*(tf.gather(d, order[i * batch_size:(i + 1) * batch_size]) for d in data))
            return i + 1, out.write(i, tf.cast(tf.stack(values if isinstance(values, (tuple, list)) else [values]), tf.float32))

        return tf.while_loop(lambda i, out: i < batches, body, (tf.constant(0), tf.TensorArray(tf.float32, size=batches)),
                             parallel_iterations=1)[1].stack()  # [batches, k]

    return lambda order, *data: steps(tf.constant(order, tf.int32), *data).numpy().astype(np.float64)


def graph_epoch(step, arrays, batch_size: int, variables, optimizer):
    """One epoch over in-memory `arrays` (each [n, ...], made tensors once by host_tensor: no copy when aligned) as
    one graph call (graph_steps): fn(rng) -> [batches, k], the batches consecutive slices of rng.permutation(n)."""
    n = len(arrays[0])
    data = [host_tensor(a) for a in arrays]  # [n, ...] each
    run = graph_steps(step, batch_size, variables, optimizer)
    return lambda rng: run(rng.permutation(n), *data)


def fit(
    model,
    train_epoch: Callable[[np.random.Generator], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    monitor: str,
    epochs: int,
    patience: int,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    stop_from: int = 0,
) -> FitResult:
    """Run up to `epochs` epochs; stop after `patience` epochs without a lower `monitor` value, not before epoch
    `stop_from`. The best epoch's weights are restored either way."""
    rng = np.random.default_rng(seed)
    # The variable list once: Keras' get_weights() walks the layer tree on every call (0.2 s for TFP layers).
    weights = list(model.weights)
    snapshot = lambda: [v.numpy() for v in weights]  # noqa: E731
    rows, best, best_epoch, best_weights, waited = [], np.inf, 0, snapshot(), 0
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=None if progress else True, leave=False, mininterval=0.5)
    for epoch in bar:
        t0 = time.perf_counter()
        logs = {"epoch": epoch, **train_epoch(rng), **validate()}
        logs["seconds"] = time.perf_counter() - t0
        rows.append(logs)
        value = logs[monitor]
        if value < best:
            best, best_epoch, best_weights, waited = value, epoch, snapshot(), 0
        else:
            waited += 1
        bar.set_postfix({monitor: f"{value:.4f}", "best": f"{best:.4f}@{best_epoch}"})
        if waited >= patience and epoch >= stop_from:
            break
    bar.close()
    for v, value in zip(weights, best_weights):
        v.assign(value)
    return FitResult(pd.DataFrame(rows), best_epoch, float(best), stopped_early=len(rows) < epochs, monitor=monitor)

"""The student SavedModel: raw features -> the task's outputs and an epistemic score; deterministic, one pass.

`serving_default(features [batch, F], or sequences [batch, time, C])` -> probs [batch, C], entropy, epistemic (classes; the ratio
and Dirichlet students add expected_entropy and mutual_information, their epistemic score) or mean, variance,
epistemic (regression, in the target's units). Tables also get `serving_rows`: the same on raw rows, one input per raw
column (distill.encoder).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from distill import tasks
from distill.encoder import RowEncoder, rows_function
from distill.features import ROWS_SIGNATURE
from student.uncertainty import HEADS
from distill.savedmodel import Untracked, stabilise_fingerprint


PARALLEL_ROWS = 256  # batches of at least this many rows run as two halves (StudentModule._serve): at 512 rows
# 0.76 -> 0.59 ms, at 4096 2.80 -> 2.25 ms (the 1M run's (128, 128) student, 2 cores)


class StudentModule(tf.Module):
    def __init__(self, task: tasks.Task, model, feature_shift, feature_scale, target_shift: float = 0.0,
                 target_scale: float = 1.0, epistemic_scale: float = 1.0, epistemic_shift: float = 0.0, uncertainty: str = "regressor",
                 input_shape: tuple | None = None, feature_spec=None, input_bounds: tuple | None = None):
        super().__init__(name="student")
        self.task, self.uncertainty = task, HEADS[uncertainty]  # student.uncertainty: what the second head means
        self._keras = Untracked(model)  # see distill.savedmodel.Untracked: save the variables, skip Keras tracing
        self.model_variables = list(model.variables)
        self.feature_shift = tf.constant(np.asarray(feature_shift, np.float32))
        self.feature_scale = tf.constant(np.asarray(feature_scale, np.float32))
        self.target_shift = tf.constant(float(target_shift), tf.float32)
        self.target_scale = tf.constant(float(target_scale), tf.float32)
        self.epistemic_scale = tf.constant(float(epistemic_scale), tf.float32)
        self.epistemic_shift = tf.constant(float(epistemic_shift), tf.float32)
        # tables: normalised inputs are clamped to the box the transfer set reached (student.train.input_bounds)
        self.input_bounds = None if input_bounds is None else tuple(tf.constant(np.asarray(b, np.float32))
                                                                    for b in input_bounds)
        shape = list(input_shape or (int(self.feature_shift.shape[0]),))  # sequences: (None, C), any length
        spec = [tf.TensorSpec([None, *shape], tf.float32, name="features")]
        self.serve = tf.function(self._serve, input_signature=spec)
        self.forward = tf.function(self._forward, input_signature=spec)  # one chain of ops: what TFLite converts
        self.encoder = None if feature_spec is None else RowEncoder(feature_spec)  # tables: raw rows in too
        self.serve_rows = None if self.encoder is None else rows_function(self.encoder, self.serve)

    def _serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        """Large batches run the network as two halves: two independent chains of matmuls, which TensorFlow's executor
        runs at once on two cores (the teacher's draws get the same from its while_loop), where one chain leaves a
        core idle much of the time. The outputs' closed forms then run once on the whole batch: elementwise ops, each
        already spread over the cores, so that halving them only doubled their count. Rows are independent: the same
        outputs."""
        def halves():
            half = tf.shape(features)[0] // 2
            a, b = self._network(features[:half]), self._network(features[half:])
            return {k: tf.concat([a[k], b[k]], 0) for k in a}

        return self._outputs(tf.cond(tf.shape(features)[0] >= PARALLEL_ROWS, halves, lambda: self._network(features)))

    def _forward(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self._network(features))

    def _network(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        """Raw features -> the network's {head [batch, K], epistemic [batch]}. Tables: the normalised features [batch, F]
        clamped to `input_bounds` first, so that an input beyond the transfer set's reach is answered as at its edge,
        where the student was taught to say "I don't know"; a ReLU network extrapolates linearly and, a hundred box
        widths out, would grow confident again."""
        z = (features - self.feature_shift) / self.feature_scale
        if self.input_bounds is not None:
            z = tf.clip_by_value(z, *self.input_bounds)
        return self._keras.value(z, training=False)

    def _outputs(self, out: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The network's outputs -> the export's (the task's outputs and the epistemic score)."""
        score = out["epistemic"] * self.epistemic_scale + self.epistemic_shift  # [batch], the head's score
        return self.uncertainty.serve(self.task, out["head"], score, self.target_shift, self.target_scale)

    def save(self, path: Path) -> Path:
        rows = {ROWS_SIGNATURE: self.serve_rows.get_concrete_function()} if self.serve_rows else {}
        tf.saved_model.save(self, str(path), signatures={"serving_default": self.serve.get_concrete_function(), **rows})
        stabilise_fingerprint(Path(path))
        return Path(path)

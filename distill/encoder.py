"""The feature specification's encoding as TensorFlow ops, so that every table export takes raw rows.

`RowEncoder(spec)` maps one tensor per raw feature column to the encoded vector [batch, F] that the networks (and
the exports' `features` signatures) take. It is `FeatureSpec.encode` (distill.features, numpy and pandas: used to
train) in graph form; tests/test_encoder.py checks that the two agree cell by cell. Column inputs:
- numeric: float32 [batch], NaN for an empty cell -> the value, or the train median plus the 0/1 indicator;
- boolean: float32 [batch], 1 / 0, NaN for an empty cell -> the same, with the train mode;
- categorical: string [batch] (integer codes as text: "4"; surrounding blanks ignored; "" for an empty cell) ->
  one-hot over the train vocabulary plus the out-of-vocabulary bucket last, through a Keras `StringLookup`; an
  empty cell is the `<missing>` category where the train split had one, else out of vocabulary.
Signature input names are the raw column names made valid TensorFlow names (`signature_names`: characters other
than letters, digits and `_` become `_`; a name that does not start with a letter gets a `f_` prefix; repeats get
`_2`, `_3`): TF Serving's named `instances` ({"carat": 0.3, "cut": "Ideal"}) map onto them directly.
"""
from __future__ import annotations

import re

import numpy as np
import tensorflow as tf
import tf_keras

from distill.features import MISSING_CATEGORY, FeatureSpec


def signature_names(spec: FeatureSpec) -> dict[str, str]:
    """Raw column name -> its signature input name (valid, unique TensorFlow names), in column order."""
    out, taken = {}, set()
    for name in spec.raw_columns:
        base = re.sub(r"[^A-Za-z0-9_]", "_", name)
        base = base if re.match(r"[A-Za-z]", base) else "f_" + base
        key, i = base, 1
        while key in taken:
            i += 1
            key = f"{base}_{i}"
        taken.add(key)
        out[name] = key
    return out


def input_dtype(kind: str) -> tf.DType:
    return tf.string if kind == "categorical" else tf.float32


class RowEncoder(tf.Module):
    """{signature name: [batch] raw column} -> the encoded vector [batch, F] float32 (see the module docstring)."""

    def __init__(self, spec: FeatureSpec):
        super().__init__(name="row_encoder")
        self.spec = spec
        self.names = signature_names(spec)
        self.lookups = {}  # categorical column -> StringLookup (index 0 is out of vocabulary)
        for c in spec.columns:
            if c.kind == "categorical":
                self.lookups[c.name] = tf_keras.layers.StringLookup(vocabulary=list(c.vocabulary), num_oov_indices=1,
                                                                    name=f"lookup_{self.names[c.name]}")
        self._tables = list(self.lookups.values())  # tracked: the vocabularies are saved with the export
        # A saved function: a loaded export's `encoder.encode(rows)` gives the encoded vector too.
        self.encode = tf.function(self._encode, input_signature=[self.input_signature()], autograph=False)

    def input_signature(self) -> dict[str, tf.TensorSpec]:
        return {self.names[c.name]: tf.TensorSpec([None], input_dtype(c.kind), name=self.names[c.name])
                for c in self.spec.columns}

    def _encode(self, rows: dict[str, tf.Tensor]) -> tf.Tensor:
        parts = []
        for c in self.spec.columns:
            cell = rows[self.names[c.name]]  # [batch]
            if c.kind == "categorical":
                text = tf.strings.strip(cell)
                if MISSING_CATEGORY in c.vocabulary:
                    text = tf.where(text == "", MISSING_CATEGORY, text)
                index = self.lookups[c.name](text)  # [batch] int64: 0 out of vocabulary, i + 1 vocabulary entry i
                code = tf.where(index == 0, tf.cast(len(c.vocabulary), tf.int64), index - 1)
                parts.append(tf.one_hot(code, c.width, dtype=tf.float32))  # [batch, |vocab| + 1]
                continue
            gap = tf.math.is_nan(cell)
            parts.append(tf.where(gap, tf.constant(c.fill, tf.float32), cell)[:, None])
            if c.indicator:
                parts.append(tf.cast(gap, tf.float32)[:, None])
        return tf.concat(parts, axis=1)  # [batch, F]


def rows_function(encoder: RowEncoder, serve) -> tf.function:
    """`serve(features [batch, F])` behind the encoder: a tf.function of one dict of raw columns."""
    return tf.function(lambda rows: serve(encoder.encode(rows)), input_signature=[encoder.input_signature()], autograph=False)


def raw_inputs(df, spec: FeatureSpec, what: str = "") -> dict[str, np.ndarray]:
    """A raw frame -> the rows signature's inputs, numpy [n] each: categoricals as category text ("" for empty
    cells), numbers and booleans as float32 with NaN for empty cells. The cells are read and checked as
    FeatureSpec.encode reads them (`FeatureSpec.read`: BdkError on what it refuses)."""
    values = spec.read(df, what)
    names = signature_names(spec)
    return {names[c.name]: (np.array(["" if v is None else v for v in values[c.name]], dtype=object)
                            if c.kind == "categorical" else values[c.name].to_numpy(np.float32)) for c in spec.columns}

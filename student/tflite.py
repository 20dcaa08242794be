"""The student as a TFLite flatbuffer: the same `features` input and named outputs, for phones and edge boxes.

Only the deterministic student converts: the Flipout teacher samples with random ops per call,
which TFLite has no business running. The converter keeps the SavedModel's signatures, so
`Interpreter.get_signature_runner("serving_default")(features=x)` returns the same dict of named
outputs (probs, entropy, epistemic) as the SavedModel signature.

Tables with text columns: the .tflite file takes the ENCODED vector (`features`, RUN/data/dataset.json
`encoded_features`), not raw rows. The SavedModel's `serving_rows` does not convert with LiteRT's builtin ops: its
string lookup needs StringStrip, SelectV2 on strings and an int64 Equal, which only the TF Select (Flex) delegate
runs, and the `ai-edge-litert` interpreter does not ship it. Encode on the device with the vocabularies in
dataset.json (`feature_spec`), or serve raw rows from the SavedModel.
"""
from __future__ import annotations

import distill  # noqa: F401  (Keras 2, quiet TensorFlow: before anything imports it)

import os
import tempfile
from pathlib import Path

from distill.errors import BdkError, first_line


TFLITE_INPUT = ("features: the encoded vector (dataset.json encoded_features); LiteRT's builtin ops cannot run the "
                "string lookup of serving_rows (student.tflite)")


def export_tflite(saved_model_dir: Path, out_path: Path, signature_keys: tuple[str, ...] = ("serving_default",)) -> int:
    """Convert a SavedModel (base path or version folder) to `out_path`; return its size in bytes.

    The file is written to a temp name beside `out_path` and renamed, so a failed conversion leaves
    nothing behind. Float32 weights, no quantization: the test holds it to the SavedModel within 1e-5.
    """
    import tensorflow as tf

    from distill.schema import resolve_export

    version_dir, _ = resolve_export(saved_model_dir)
    loaded = tf.saved_model.load(str(version_dir))
    if hasattr(loaded, "forward") and tuple(signature_keys) == ("serving_default",):
        # the student: serving_default's outputs in one chain of ops (student.export.StudentModule.forward). The
        # SavedModel splits large batches in two for TensorFlow's executor; LiteRT runs one op at a time, and the
        # split only cost it (one row: 10 -> 24 us). The converter names the function's signature serving_default.
        converter = tf.lite.TFLiteConverter.from_concrete_functions([loaded.forward.get_concrete_function()], loaded)
    else:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(version_dir), signature_keys=list(signature_keys))
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # e.g. an op without a TFLite kernel (the teacher's random ops)
        first = first_line(e)
        raise BdkError(f"{version_dir}: TFLite conversion failed ({first}); only the deterministic student converts") from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(flatbuffer)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(flatbuffer)


def litert_runner(path: Path):
    """The .tflite file's `serving_default` through the LiteRT interpreter (`ai-edge-litert`; `tf.lite.Interpreter`
    is deprecated): fn(features=[n, ...] float32) -> {output name: array}. The batch dimension stays dynamic."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_runner("serving_default")

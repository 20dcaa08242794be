"""What the soft-label job runs on Beam workers: a ModelHandler for the teacher's seeded predictive and
the DoFn that reads, labels and writes one row group of the transfer set per element.

Workers need only apache-beam, numpy, pyarrow, tensorflow and the SavedModel: this module imports
nothing else (not even `distill`), and the job registers it with Beam's pickler by value, so its
classes and functions travel inside the pipeline instead of being imported on the workers. (Dask
pickles the task graph itself, by reference: Dask workers import this module, so run them in the
project's environment.) Beam's own TFModelHandlerNumpy goes through tf.keras.models.load_model, which
cannot load a plain tf.saved_model.save export (see docs/stack.md); this handler uses
tf.saved_model.load.

Rows stay columnar end to end: a row group of the transfer set is read as one Arrow table, one
`predictive_seeded` call labels it, and the result, the same table with the outputs appended, is
written as one Parquet shard. A table whose feature specification encodes (text, booleans, empty cells) is stored
with its raw columns, and the export's `predictive_seeded_rows` signature takes them (one input per raw column:
strings, NaN for an empty cell) and encodes them in its graph, as at serving time: the strings go through unchanged.
"""
from __future__ import annotations

import uuid
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils import shared

PREDICTIVE_SIGNATURE = "predictive_seeded"  # distill.schema.SEEDED_SIGNATURE: written here, workers import no distill
ROWS_SIGNATURE = "predictive_seeded_rows"  # distill.schema.SEEDED_ROWS_SIGNATURE: raw columns in (tables that encode)
SHARD_SUFFIX = ".parquet"


class PredictiveModelHandler(ModelHandler[Any, PredictionResult, Any]):
    """Arrow tables of transfer rows in; per table the teacher's S-draw posterior predictive out.

    One `predictive_seeded(features [B, F], num_samples, seed)` call per table. The seed is the job's:
    the export samples the same S weight draws for every row, so each row's soft label is a pure
    function of (row, S, seed), bit-identical whatever the runner or the batching. LabelRowGroups loads
    the model once per worker process (a Beam `Shared` handle: one copy for all threads and bundles);
    the handler also works under RunInference.

    `output_names` picks the signature's outputs to keep (the task's outputs, distill.tasks); `input_shape` reshapes the
    feature columns for an export that takes sequences; `raw_inputs` ({raw column: its signature input}) calls
    `predictive_seeded_rows` on the raw columns instead (string columns as text with "" for a null, the others float32
    with NaN for a null).
    """

    def __init__(self, export_path: str, feature_names: Sequence[str], num_samples: int, seed: int,
                 output_names: Sequence[str], input_shape: Optional[Sequence[int]] = None,
                 raw_inputs: Optional[dict[str, str]] = None):
        super().__init__(min_batch_size=1, max_batch_size=1)  # an element is already a batch (a row group)
        self.export_path = str(export_path)
        self.feature_names = tuple(feature_names)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.output_names = tuple(output_names)
        # One example's shape for the export, when not flat [F]: sequences (T, C), stored flattened time major.
        self.input_shape = tuple(input_shape) if input_shape else None
        self.raw_inputs = dict(raw_inputs) if raw_inputs else None
        self.signature = ROWS_SIGNATURE if self.raw_inputs else PREDICTIVE_SIGNATURE

    def set_environment_vars(self) -> None:
        """Runs on the worker before the model loads."""
        import logging

        super().set_environment_vars()
        # Beam 2.77 thinks `resource` is missing when torch is (one shared try/import): drop that warning.
        logging.getLogger().addFilter(_quiet_resource_warning)

    def load_model(self) -> Any:
        import tensorflow as tf

        return tf.saved_model.load(self.export_path)

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        import tensorflow as tf

        fn = model.signatures[self.signature]
        for table in batch:
            out = fn(**self.signature_inputs(table), num_samples=tf.constant(self.num_samples, tf.int32),
                     seed=tf.constant(self.seed, tf.int64))  # [B, F] or raw columns [B] -> {name: [B] or [B, C]}
            yield PredictionResult(table, {k: out[k].numpy() for k in self.output_names}, self.export_path)

    def signature_inputs(self, table) -> dict[str, Any]:
        """An Arrow table of transfer rows -> the signature's inputs: `features` [B, F] (or [B, T, C]) float32, or one
        [B] tensor per raw column (`raw_inputs`)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import tensorflow as tf

        if not self.raw_inputs:
            x = np.stack([table.column(f).to_numpy().astype(np.float32, copy=False) for f in self.feature_names], axis=1)
            return {"features": tf.constant(x.reshape(len(x), *self.input_shape) if self.input_shape else x)}
        out = {}
        for column, name in self.raw_inputs.items():
            values = table.column(column)
            if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                out[name] = tf.constant(pc.fill_null(values, "").to_numpy(zero_copy_only=False).astype(object), tf.string)
            else:  # numbers and booleans: float32, NaN for an empty cell
                out[name] = tf.constant(pc.cast(values, pa.float32()).to_numpy(zero_copy_only=False), tf.float32)
        return out

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(t.nbytes for t in batch)

    def get_metrics_namespace(self) -> str:
        return "SoftLabels"


def _quiet_resource_warning(record) -> bool:
    return "Resource module is not available" not in str(record.msg)


def conform(table, arrow_schema, output_names: Sequence[str]):
    """A row group of the transfer set -> its columns of `arrow_schema` (the schema's fields other than the outputs and
    num_samples), in the schema's types: a raw table of the user's own is read as the job's own (integer codes as
    text, numbers as float32); a no-op on the transfer sets `bdk soft-labels` writes."""
    import pyarrow as pa

    fields = [f for f in arrow_schema if f.name not in output_names and f.name != "num_samples"]
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in fields], schema=pa.schema(fields))


def to_soft_label_table(result: PredictionResult, num_samples: int, arrow_schema):
    """A transfer table plus the teacher's predictive columns: one record batch of the soft-label dataset."""
    import pyarrow as pa

    table = result.example
    columns = {name: table.column(name) for name in table.column_names}
    for name, value in result.inference.items():
        value = np.ascontiguousarray(value, np.float32)
        if value.ndim == 2:  # [B, C] -> list<float>
            offsets = pa.array(np.arange(0, value.size + 1, value.shape[1], dtype=np.int32))
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(value.reshape(-1)))
        else:
            columns[name] = pa.array(value)
    columns["num_samples"] = pa.array(np.full(table.num_rows, num_samples, np.int32))
    return pa.Table.from_arrays([columns[f.name] for f in arrow_schema], schema=arrow_schema)


def shard_path(prefix: str, index: int, count: int) -> str:
    """The soft-label shard of row group `index` of `count`: PREFIX-00003-of-00010.parquet."""
    return f"{prefix}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


class LabelRowGroups(beam.DoFn):
    """Row-group index of the transfer set -> that row group labelled, written as one Parquet shard (its path).

    Everything happens in `process`, one row group at a time, and nothing is emitted from
    `finish_bundle`: the same code runs on every runner, Beam's DaskRunner included (it has no Read
    and drops finish_bundle outputs), and memory holds one row group whatever the bundle or partition
    size. The shard's name is fixed by the row group, and it appears by rename once complete, so a
    retried element replaces its own shard rather than adding rows.
    """

    def __init__(self, transfer: str, handler: PredictiveModelHandler, output_prefix: str, num_row_groups: int,
                 arrow_schema):
        self.transfer, self.handler, self.output_prefix = transfer, handler, output_prefix
        self.num_row_groups, self.arrow_schema = int(num_row_groups), arrow_schema
        self._model_handle = shared.Shared()  # one model per worker process, across threads, bundles and DoFn copies

    def setup(self) -> None:
        self.handler.set_environment_vars()
        self.model = self._model_handle.acquire(self.handler.load_model, tag=self.handler.export_path)

    def process(self, index: int) -> Iterator[str]:
        import pyarrow.parquet as pq

        with FileSystems.open(self.transfer, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            table = pq.ParquetFile(fh).read_row_group(index)  # [B rows] x transfer columns
        table = conform(table, self.arrow_schema, self.handler.output_names)
        (result,) = self.handler.run_inference([table], self.model)  # one predictive_seeded call on [B, F]
        labelled = to_soft_label_table(result, self.handler.num_samples, self.arrow_schema)
        path = shard_path(self.output_prefix, index, self.num_row_groups)
        folder, name = FileSystems.split(path)
        partial = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}")  # outside the shard glob until renamed
        with FileSystems.create(partial, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            pq.write_table(labelled, fh)  # labelled.schema is arrow_schema
        FileSystems.rename([partial], [path])
        yield path

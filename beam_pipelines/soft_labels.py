"""Stage 2's Beam job: the teacher's S-draw posterior predictive on every row of the transfer set.

    ReadTransferSet (Arrow tables, one per row group) -> PredictSoftLabels [SampleTeacher (RunInference:
    one predictive_seeded call per table) -> ToSoftLabelTables] -> WriteSoftLabels (Parquet shards,
    explicit Arrow schema)

then, on the launcher, manifest.json: what was labelled with which teacher (export fingerprint), by
how many draws with which seed, and the rows per source as read back from the shards. Rows stay
columnar (Arrow record batches, no per-row Python objects) and stream through one fused stage, shards
written per bundle, so memory does not grow with the row count. The job's seed fixes the teacher's S
weight draws for every row: a rerun gives bit-identical soft labels on any runner, in any batching.

Runs anywhere Beam runs. Default: the embedded FnApiRunner (no network); pass Beam options to
choose another runner, e.g. `--direct_running_mode=multi_processing --direct_num_workers=2`,
`--runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK`, or Dataflow/Flink with
gs:// paths (workers need only apache-beam and tensorflow, see beam_pipelines/predictive_handler.py).

    python -m beam_pipelines.soft_labels --transfer T.parquet --export EXPORT --dataset_json D.json \\
        --output DIR [--num_samples 100 --seed 0] [Beam pipeline options]

`bdk soft-labels` (distill.pipeline.soft_labels_stage) builds the transfer set and calls `run`
into a temporary folder that replaces RUN/soft_labels on success.
"""
from __future__ import annotations

import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)

import argparse
import json
import logging
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipelines import predictive_handler
from beam_pipelines.predictive_handler import PredictiveModelHandler, to_soft_label_table
from distill import schema, tasks
from distill.errors import BdkError
from distill.transfer import export_fingerprint, soft_label_arrow_schema

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"  # embedded, no network (the DirectRunner first tries to download Prism)
SHARD_SUFFIX = ".parquet"


def _ship_handler_by_value() -> None:
    """Pickle the handler module into the pipeline, so workers need not have this project installed."""
    from apache_beam.internal.cloudpickle import cloudpickle

    cloudpickle.register_pickle_by_value(predictive_handler)


class PredictSoftLabels(beam.PTransform):
    """Arrow tables of transfer rows -> the same tables plus the teacher's predictive for S draws."""

    def __init__(self, handler: PredictiveModelHandler, arrow_schema):
        super().__init__()
        _ship_handler_by_value()
        self.handler, self.arrow_schema = handler, arrow_schema

    def expand(self, tables):
        return (tables
                | "SampleTeacher" >> RunInference(self.handler)  # one predictive_seeded call per table
                | "ToSoftLabelTables" >> beam.Map(to_soft_label_table, num_samples=self.handler.num_samples,
                                                  arrow_schema=self.arrow_schema))


class SoftLabelJob(beam.PTransform):
    """The whole job from a pipeline root: read the transfer set, label it, write Parquet shards."""

    def __init__(self, transfer: str, handler: PredictiveModelHandler, output_prefix: str, arrow_schema):
        super().__init__()
        self.transfer, self.handler, self.output_prefix, self.arrow_schema = transfer, handler, output_prefix, arrow_schema

    def expand(self, root):
        return (root
                | "ReadTransferSet" >> beam.io.ReadFromParquetBatched(self.transfer)
                | "PredictSoftLabels" >> PredictSoftLabels(self.handler, self.arrow_schema)
                # num_shards=0: one shard per bundle, written as tables stream (a fixed count adds a shuffle).
                | "WriteSoftLabels" >> beam.io.WriteToParquetBatched(self.output_prefix, self.arrow_schema,
                                                                     file_name_suffix=SHARD_SUFFIX))


# ---------------------------------------------------------------- launcher side


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m beam_pipelines.soft_labels", description=__doc__.split("\n")[0])
    parser.add_argument("--transfer", required=True, help="Transfer set Parquet file (distill.transfer).")
    parser.add_argument("--export", required=True, help="Teacher SavedModel folder with a `predictive` signature.")
    parser.add_argument("--dataset_json", required=True,
                        help="RUN/data/dataset.json (feature and class names; `task: regression` for a regression teacher).")
    parser.add_argument("--output", required=True, help="Empty or new folder for the shards and manifest.json.")
    parser.add_argument("--num_samples", type=int, default=100, help="Weight draws per row (S >= 2).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the teacher's weight draws (the same for every row), recorded in the manifest.")
    return parser.parse_known_args(argv)


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """The user's Beam options; the embedded FnApiRunner unless they name a runner."""
    options = PipelineOptions(list(beam_args))
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return options


def _read_json(path: str) -> dict:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return json.loads(fh.read().decode())


def _write_json(path: str, obj: dict) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write((json.dumps(obj, indent=2) + "\n").encode())


def _id_source(paths: Sequence[str]):
    """The id and source columns of Parquet files, as one Arrow table (~20 bytes a row, no Python objects)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            tables.append(pq.read_table(fh, columns=["id", "source"]))
    return pa.concat_tables(tables) if tables else pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string())})


def _rows_per_source(table) -> dict[str, int]:
    import pyarrow.compute as pc

    counts = {c["values"].as_py(): c["counts"].as_py() for c in pc.value_counts(table.column("source"))}
    return {s: counts[s] for s in schema.SOURCES if s in counts}


def _check_written(shards: list[str], transfer: str) -> tuple[int, dict[str, int]]:
    """Read back the shards' ids: every transfer row exactly once, nothing else. -> rows, rows per source."""
    import pyarrow.compute as pc

    written, wanted = _id_source(shards), _id_source([transfer])
    n, distinct = len(written), pc.count_distinct(written.column("id")).as_py()
    if n != len(wanted) or distinct != n or not pc.all(pc.is_in(written.column("id"), wanted.column("id"))).as_py():
        raise RuntimeError(f"the job wrote {n} rows ({distinct} distinct ids) for {len(wanted)} transfer rows")
    per_source = _rows_per_source(written)
    if per_source != _rows_per_source(wanted):
        raise RuntimeError(f"the job wrote rows per source {per_source}, the transfer set has {_rows_per_source(wanted)}")
    return n, per_source


def check_export(export: str, feature_names: list[str], class_names: list[str], task: tasks.Task) -> None:
    """Load the export on the launcher and call its predictive once: a bad export is one clear error
    here rather than a worker traceback. Costs one TensorFlow start on the launcher."""
    import tensorflow as tf

    hint = "retrain it with `bdk teacher --out RUN --overwrite`"
    try:
        model = tf.saved_model.load(export)
    except Exception as e:  # OSError, DecodeError, ValueError...: all mean "not a loadable SavedModel"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BdkError(f"teacher export {export} cannot be loaded ({type(e).__name__}: {first}); {hint}") from None
    fn = model.signatures.get(predictive_handler.PREDICTIVE_SIGNATURE)
    if fn is None:
        raise BdkError(f"teacher export {export} has no `{predictive_handler.PREDICTIVE_SIGNATURE}` signature (it has "
                       f"{sorted(model.signatures)}); {hint}")
    try:
        out = fn(features=tf.zeros([1, len(feature_names)]), num_samples=tf.constant(2, tf.int32),
                 seed=tf.constant(0, tf.int64))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BdkError(f"teacher export {export} does not take {len(feature_names)} features ({first}); {hint}") from None
    shapes = {k: (1, len(class_names)) if k in task.vector_outputs else (1,) for k in task.outputs}
    if any(k not in out or tuple(out[k].shape) != shape for k, shape in shapes.items()):
        raise BdkError(f"teacher export {export} gives outputs { {k: tuple(v.shape) for k, v in out.items()} }, expected "
                       f"{shapes} for {task.name}; {hint}")


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the job, check its output against the transfer set, write manifest.json. Returns the manifest."""
    args, beam_args = parse_args(argv)
    if args.num_samples < 2:
        raise BdkError(f"--num_samples must be at least 2 (the variance needs two draws), got {args.num_samples}")
    output = args.output.rstrip("/")
    shard_glob = FileSystems.join(output, f"{schema.SOFT_LABEL_PREFIX}-*{SHARD_SUFFIX}")
    if FileSystems.match([shard_glob])[0].metadata_list or FileSystems.exists(FileSystems.join(output, schema.MANIFEST_FILE)):
        raise BdkError(f"{output} already holds soft labels; pass an empty or new --output")
    meta = _read_json(args.dataset_json)
    features, classes = list(meta["feature_names"]), list(meta.get("class_names", []))
    task = tasks.get(meta.get("task", "classification"))
    check_export(args.export, features, classes, task)
    fingerprint = export_fingerprint(args.export)

    handler = PredictiveModelHandler(args.export, features, args.num_samples, args.seed, output_names=task.outputs)
    arrow_schema = soft_label_arrow_schema(features, task)
    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
    _ = pipeline | "SoftLabels" >> SoftLabelJob(args.transfer, handler, FileSystems.join(output, schema.SOFT_LABEL_PREFIX),
                                                arrow_schema)
    options = pipeline.options.get_all_options(drop_default=True, retain_unknown_options=True)  # before runners edit them
    runner = pipeline.options.view_as(StandardOptions).runner or type(pipeline.runner).__name__
    t0 = time.perf_counter()
    pipeline.run().wait_until_finish()
    seconds = time.perf_counter() - t0

    shards = sorted(m.path for m in FileSystems.match([shard_glob])[0].metadata_list)
    n, rows_per_source = _check_written(shards, args.transfer)

    manifest = {
        "teacher_export": args.export,
        "teacher_fingerprint": fingerprint,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "rows": n,
        "rows_per_source": rows_per_source,
        "shards": [FileSystems.split(s)[1] for s in shards],
        "task": task.name,
        "columns": {f.name: str(f.type) for f in arrow_schema},
        "class_names": classes,
        "feature_names": features,
        "transfer": FileSystems.split(args.transfer)[1],
        "pipeline_options": {k: v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v)
                             for k, v in options.items()},
        "runner": str(runner),
        "beam_args": list(beam_args),
        "beam_version": beam.__version__,
        "job_seconds": seconds,
        "rows_per_second": n / seconds if seconds > 0 else None,
    }
    _write_json(FileSystems.join(output, schema.MANIFEST_FILE), manifest)
    log.info("soft labels: %d rows in %.1f s -> %s", n, seconds, output)
    return manifest


if __name__ == "__main__":  # pragma: no cover
    import sys

    logging.basicConfig(level=logging.INFO)
    try:
        run()
    except BdkError as e:
        sys.exit(f"error: {e}")

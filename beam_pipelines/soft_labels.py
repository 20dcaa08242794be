"""Stage 2's Beam job: the teacher's S-draw posterior predictive on every row of the transfer set.

    RowGroups (Create: the transfer set's row-group indices) -> LabelRowGroups (ParDo, per row group:
    read it with pyarrow -> one predictive_seeded call -> the same table plus the outputs -> one Parquet
    shard, explicit Arrow schema; emits the shard's path)

then, on the launcher, a read-back check that every transfer row was written exactly once, and
manifest.json: what was labelled with which teacher (export fingerprint), by how many draws with which
seed, and the rows per source as read back from the shards. Rows stay columnar (Arrow tables, no
per-row Python objects) and stream one row group at a time, so memory does not grow with the row count.
The job's seed fixes the teacher's S weight draws for every row: a rerun gives bit-identical soft
labels on any runner, in any batching.

One plain ParDo with nothing emitted in finish_bundle (no Beam Read, no RunInference or BatchElements,
no file sink) is what Beam's DaskRunner can run: it translates only Create, ParDo, GroupByKey and
Flatten, and drops finish_bundle outputs. The same code path runs everywhere. Default: the embedded
FnApiRunner (no network); pass Beam options to choose another runner, e.g.
`--direct_running_mode=multi_processing --direct_num_workers=2`,
`--runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK`,
`--runner=DaskRunner --dask_client_address=HOST:8786` (a running `distributed` scheduler; one Dask
task per row group unless --dask_npartitions/--dask_partition_size say otherwise), or Dataflow/Flink
with gs:// paths (workers need only apache-beam and tensorflow, see beam_pipelines/predictive_handler.py).

    python -m beam_pipelines.soft_labels --transfer T.parquet --export EXPORT --dataset_json D.json \\
        --output DIR [--samples 100 --seed 0] [Beam pipeline options]

`bdk soft-labels` (bdk.pipeline.soft_labels_stage) builds the transfer set and calls `run_job`
into a temporary folder that replaces RUN/soft_labels on success.
"""
from __future__ import annotations

import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)

import argparse
import collections
import json
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipelines import predictive_handler
from beam_pipelines.predictive_handler import SHARD_SUFFIX, LabelRowGroups, PredictiveModelHandler
from beam_pipelines.workers import workers_die_with_job
from distill import inputs as inputs_lib
from distill import schema, tasks
from distill.errors import BdkError
from distill.features import encoding_spec, from_meta
from distill.transfer import SAMPLES, export_fingerprint, feature_fields, soft_label_arrow_schema

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"  # embedded, no network (the DirectRunner first tries to download Prism)
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam 2.77 has no short name for it


def _ship_handler_by_value() -> None:
    """Pickle the handler module into the pipeline, so workers need not have this project installed."""
    from apache_beam.internal.cloudpickle import cloudpickle

    cloudpickle.register_pickle_by_value(predictive_handler)


class SoftLabelJob(beam.PTransform):
    """The whole job from a pipeline root: label each row group of the transfer set into its own Parquet shard.

    Output: the shards' paths, one per row group (the shards are the job's result)."""

    def __init__(self, transfer: str, handler: PredictiveModelHandler, output_prefix: str, num_row_groups: int,
                 arrow_schema):
        super().__init__()
        _ship_handler_by_value()
        self.label_fn = LabelRowGroups(transfer, handler, output_prefix, num_row_groups, arrow_schema)

    def expand(self, root):
        return (root
                # Reshuffled (Create's default), so parallel runners spread the row groups over their workers.
                | "RowGroups" >> beam.Create(list(range(self.label_fn.num_row_groups)))
                | "LabelRowGroups" >> beam.ParDo(self.label_fn))


# ---------------------------------------------------------------- launcher side


@dataclass(frozen=True)
class JobConfig:
    """One soft-label job: the transfer set the teacher export labels, and where the shards go."""
    transfer: str  # transfer set Parquet file (distill.transfer)
    export: str  # teacher SavedModel folder with a `predictive_seeded` signature
    dataset_json: str  # RUN/data/dataset.json: feature and class names, the task
    output: str  # empty or new folder for the shards and manifest.json
    samples: int = SAMPLES  # S weight draws per row (the job's default; `bdk soft-labels` resolves it per table)
    seed: int = 0  # seed of the teacher's weight draws (the same for every row), recorded in the manifest
    beam_args: tuple[str, ...] = ()  # Beam's pipeline options (runner, workers, ...)


def parse_args(argv: Sequence[str] | None) -> JobConfig:
    """The command line of `python -m beam_pipelines.soft_labels` -> its JobConfig (unknown flags are Beam's)."""
    parser = argparse.ArgumentParser(prog="python -m beam_pipelines.soft_labels", description=__doc__.split("\n")[0])
    parser.add_argument("--transfer", required=True, help="Transfer set Parquet file (distill.transfer).")
    parser.add_argument("--export", required=True, help="Teacher SavedModel folder with a `predictive` signature.")
    parser.add_argument("--dataset_json", required=True,
                        help="RUN/data/dataset.json (feature and class names; `task: regression` for a regression teacher).")
    parser.add_argument("--output", required=True, help="Empty or new folder for the shards and manifest.json.")
    parser.add_argument("--samples", "--num_samples", dest="samples", type=int, default=JobConfig.samples,
                        help=f"Weight draws per row (S >= 2; default {SAMPLES}).")
    parser.add_argument("--seed", type=int, default=JobConfig.seed,
                        help="Seed of the teacher's weight draws (the same for every row), recorded in the manifest.")
    args, beam_args = parser.parse_known_args(argv)
    return JobConfig(args.transfer, args.export, args.dataset_json, args.output, args.samples, args.seed,
                     tuple(beam_args))


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """The user's Beam options; the embedded FnApiRunner unless they name a runner. `DaskRunner` (or `Dask`)
    names Beam's Dask runner, by default with one Dask task per row group."""
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = DEFAULT_RUNNER
    elif isinstance(standard.runner, str) and standard.runner.lower() in ("dask", "daskrunner", DASK_RUNNER.lower()):
        standard.runner = DASK_RUNNER  # Beam's runner lookup does not know the short name
        dask_options = options.view_as(_dask_options_class())
        if dask_options.npartitions is None and dask_options.partition_size is None:
            dask_options.partition_size = 1  # a row group is a big task already; Beam's default packs 128 into one
    return options


def _dask_options_class():
    """Beam's DaskOptions (--dask_client_address, ...): they exist once the Dask runner module is imported."""
    try:
        from apache_beam.runners.dask.dask_runner import DaskOptions
    except ImportError:
        raise BdkError("the Dask runner needs dask and distributed: pip install 'dask[distributed]'") from None
    return DaskOptions


def _num_row_groups(path: str, arrow_schema, output_names) -> int:
    """The transfer file's row groups; a file lacking one of the job's transfer columns is a BdkError naming them."""
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        parquet = pq.ParquetFile(fh)
        wanted = [f.name for f in arrow_schema if f.name not in output_names and f.name != "num_samples"]
        lacking = [c for c in wanted if c not in parquet.schema_arrow.names]
        if lacking:
            raise BdkError(f"transfer file {path} lacks the column(s) {lacking}; it needs {wanted}")
        return parquet.metadata.num_row_groups


def _close_dask_client(result) -> None:
    """Beam's DaskRunner leaves its distributed.Client connected after the job: close it (with the local
    cluster it started when no --dask_client_address was given). Other runners' results have no client."""
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


def _read_json(path: str) -> dict:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return json.loads(fh.read().decode())


def _write_json(path: str, obj: dict) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write((json.dumps(obj, indent=2) + "\n").encode())


def _id_hashes(paths: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """The 64-bit hashes of the id column of Parquet files [n] uint64, and their rows per source, read one record
    batch at a time: 8 bytes a row (the id strings of a million-row transfer set, whole, cost ~300 MB)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    hashes, counts = [], collections.Counter()
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for batch in pq.ParquetFile(fh, pre_buffer=False).iter_batches(columns=["id", "source"]):
                hashes.append(pd.util.hash_array(batch.column("id").to_numpy(zero_copy_only=False)))
                counts.update({c["values"].as_py(): c["counts"].as_py() for c in pc.value_counts(batch.column("source"))})
    return (np.concatenate(hashes) if hashes else np.empty(0, np.uint64)), {s: counts[s] for s in schema.SOURCES if s in counts}


def _check_written(shards: list[str], transfer: str) -> tuple[int, dict[str, int]]:
    """Read back the shards' ids: every transfer row exactly once, nothing else (compared as 64-bit hashes: a
    collision among a million ids has odds of about 1e-8). -> rows, rows per source."""
    (written, per_source), (wanted, wanted_per_source) = _id_hashes(shards), _id_hashes([transfer])
    written.sort(), wanted.sort()
    n, distinct = len(written), int(np.count_nonzero(np.diff(written))) + 1 if len(written) else 0
    if n != len(wanted) or distinct != n or not np.array_equal(written, wanted):
        raise RuntimeError(f"the job wrote {n} rows ({distinct} distinct ids) for {len(wanted)} transfer rows")
    if per_source != wanted_per_source:
        raise RuntimeError(f"the job wrote rows per source {per_source}, the transfer set has {wanted_per_source}")
    return n, per_source


def check_export(export: str, handler: PredictiveModelHandler, arrow_schema, class_names: list[str],
                 task: tasks.Task) -> None:
    """Load the export on the launcher and call the handler's signature once on a row of empty cells: a bad export is
    one clear error here rather than a worker traceback. Costs one TensorFlow start on the launcher."""
    import pyarrow as pa
    import tensorflow as tf

    hint = "retrain it with `bdk teacher --out RUN --overwrite`"
    inputs = (f"the raw columns {list(handler.raw_inputs)}" if handler.raw_inputs
              else f"{len(handler.feature_names)} features")
    try:
        model = tf.saved_model.load(export)
    except Exception as e:  # OSError, DecodeError, ValueError...: all mean "not a loadable SavedModel"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BdkError(f"teacher export {export} cannot be loaded ({type(e).__name__}: {first}); {hint}") from None
    fn = model.signatures.get(handler.signature)
    if fn is None:
        raise BdkError(f"teacher export {export} has no `{handler.signature}` signature (it has "
                       f"{sorted(model.signatures)}); {hint}")
    empty = pa.table({f.name: pa.nulls(1, f.type) for f in arrow_schema})  # one row of empty cells
    try:
        out = fn(**handler.signature_inputs(empty), num_samples=tf.constant(2, tf.int32), seed=tf.constant(0, tf.int64))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BdkError(f"teacher export {export} does not take {inputs} ({first}); {hint}") from None
    shapes = {k: (1, len(class_names)) if k in task.vector_outputs else (1,) for k in task.outputs}
    if any(k not in out or tuple(out[k].shape) != shape for k, shape in shapes.items()):
        raise BdkError(f"teacher export {export} gives outputs { {k: tuple(v.shape) for k, v in out.items()} }, expected "
                       f"{shapes} for {task.name}; {hint}")


def _raw_inputs(spec) -> dict[str, str] | None:
    """{raw column: its input of the export's `predictive_seeded_rows`} for a table that encodes, else None."""
    if spec is None:
        return None
    from distill.encoder import signature_names

    return signature_names(spec)


def _shard_glob(output: str) -> str:
    """The glob of the job's shards under `output`, which must hold no soft labels yet."""
    shard_glob = FileSystems.join(output, f"{schema.SOFT_LABEL_PREFIX}-*{SHARD_SUFFIX}")
    if FileSystems.match([shard_glob])[0].metadata_list or FileSystems.exists(FileSystems.join(output, schema.MANIFEST_FILE)):
        raise BdkError(f"{output} already holds soft labels; pass an empty or new --output")
    return shard_glob


def _run_pipeline(pipeline: beam.Pipeline) -> tuple[float, dict, str]:
    """Run the pipeline to its end; returns (seconds, its options as given, its runner)."""
    options = pipeline.options.get_all_options(drop_default=True, retain_unknown_options=True)  # before runners edit them
    runner = pipeline.options.view_as(StandardOptions).runner or type(pipeline.runner).__name__
    t0 = time.perf_counter()
    with workers_die_with_job():  # local multi-process workers: killed with the job, even by kill -9
        try:
            result = pipeline.run()
        except OSError as e:  # the DaskRunner connects to its scheduler in run()
            if runner != DASK_RUNNER:
                raise
            raise BdkError(f"cannot reach the Dask scheduler ({e}); start one (`dask scheduler`) or fix --dask_client_address") from None
        try:
            result.wait_until_finish()
        finally:
            _close_dask_client(result)
    return time.perf_counter() - t0, options, runner


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """The job from its command line (run_job). Returns the manifest."""
    return run_job(parse_args(argv), test_pipeline)


def run_job(args: JobConfig, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the job, check its output against the transfer set, write manifest.json. Returns the manifest."""
    beam_args = list(args.beam_args)
    if args.samples < 2:
        raise BdkError(f"--samples must be at least 2 (the variance needs two draws), got {args.samples}")
    output = args.output.rstrip("/")
    shard_glob = _shard_glob(output)
    meta = _read_json(args.dataset_json)
    features, classes = list(meta["feature_names"]), list(meta.get("class_names", []))
    task = tasks.get(meta.get("task", "classification"))
    shape = inputs_lib.from_meta(meta).shape  # one example: (F,), or (T, C) for sequences (distill.inputs)
    spec = encoding_spec(from_meta(meta))  # a table that encodes: raw columns through the export's rows signature
    arrow_schema = soft_label_arrow_schema(feature_fields(features, spec), task)
    handler = PredictiveModelHandler(args.export, features, args.samples, args.seed, output_names=task.outputs,
                                     input_shape=shape, raw_inputs=_raw_inputs(spec))
    row_groups = _num_row_groups(args.transfer, arrow_schema, task.outputs)
    check_export(args.export, handler, arrow_schema, classes, task)
    fingerprint = export_fingerprint(args.export)

    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
    _ = pipeline | "SoftLabels" >> SoftLabelJob(args.transfer, handler, FileSystems.join(output, schema.SOFT_LABEL_PREFIX),
                                                row_groups, arrow_schema)
    seconds, options, runner = _run_pipeline(pipeline)

    shards = sorted(m.path for m in FileSystems.match([shard_glob])[0].metadata_list)
    n, rows_per_source = _check_written(shards, args.transfer)

    manifest = {
        "teacher_export": args.export,
        "teacher_fingerprint": fingerprint,
        "num_samples": args.samples,
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

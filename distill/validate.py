"""Checks of values a stage is about to trust: soft labels (readable, counted as their manifest says, finite,
normalised) and metrics (finite). Each failure is a BdkError with one line naming the file and the first bad value.

The soft-label reader (`distill.transfer`) calls `check_soft_label_arrays` on each shard's arrays; the student's
quality gate calls `check_finite_metrics`; the student and evaluate stages run `check_soft_labels` over the whole
soft-label folder before TensorFlow loads.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from distill import schema, tasks
from distill.errors import BdkError, first_line

PROB_SUM_TOLERANCE = 1e-3  # |sum_c p_c - 1| allowed in a float32 soft label
PROB_RANGE_TOLERANCE = 1e-5  # p_c may stray this far outside [0, 1] by rounding
NONNEGATIVE = ("variance", "epistemic_variance", "entropy", "expected_entropy", "mutual_information")
NONNEGATIVE_TOLERANCE = 1e-4  # e.g. mutual information = entropy - expected entropy, a small negative by rounding


def check_finite_metrics(metrics: Mapping[str, Any], what: str) -> None:
    """Raise a BdkError naming the first metric that is NaN or infinite (nested dicts and lists are searched;
    non-numeric values are skipped). `what` names the model or stage, e.g. "student"."""
    bad = _first_non_finite(metrics, "")
    if bad is not None:
        key, value = bad
        raise BdkError(f"{what}: metric {key} is {value}; a model with non-finite metrics is not published "
                       "(check the soft labels and training data for NaN or infinity, or lower the learning rate)")


def _first_non_finite(value: Any, key: str) -> tuple[str, Any] | None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _first_non_finite(v, f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_non_finite(v, f"{key}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(value, bool) or isinstance(value, str) or value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return key, value.flat[int(np.argmin(np.isfinite(value).ravel()))]
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isfinite(number) else (key, number)


def check_soft_label_arrays(arrays: Mapping[str, np.ndarray], task: tasks.Task | str, where: str) -> None:
    """One shard's predictive outputs (name -> [n] or [n, C] array, as `distill.transfer.shard_arrays` returns):
    every value finite, class probabilities in [0, 1] summing to 1 per row, variances and entropies >= 0.
    Raises a BdkError naming `where` (the shard), the output and the first bad row."""
    task = tasks.get(task) if isinstance(task, str) else task
    again = "rerun `bdk soft-labels`"
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.dtype.kind not in "fiu":
            raise BdkError(f"soft labels {where}: {name} is not numeric ({values.dtype}); {again}")
        finite = np.isfinite(values)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise BdkError(f"soft labels {where}: {name} of row {row} is {values.reshape(len(values), -1)[row].tolist()} "
                           f"(NaN or infinity); {again}")
        if name in NONNEGATIVE and values.size and values.min() < -NONNEGATIVE_TOLERANCE:
            row = int(np.argwhere(values < -NONNEGATIVE_TOLERANCE)[0][0])
            raise BdkError(f"soft labels {where}: {name} of row {row} is negative; {again}")
    probs = arrays.get("probs")
    if probs is not None and len(probs):
        probs = np.asarray(probs, np.float64)
        if probs.ndim != 2:
            raise BdkError(f"soft labels {where}: probs has shape {list(probs.shape)}, expected [rows, classes]; {again}")
        out_of_range = (probs < -PROB_RANGE_TOLERANCE) | (probs > 1 + PROB_RANGE_TOLERANCE)
        off = np.abs(probs.sum(axis=1) - 1.0) > PROB_SUM_TOLERANCE
        bad = out_of_range.any(axis=1) | off
        if bad.any():
            row = int(np.argmax(bad))
            raise BdkError(f"soft labels {where}: probs of row {row} are {np.round(probs[row], 6).tolist()} (sum "
                           f"{probs[row].sum():.6g}), not a probability vector; {again}")


def read_manifest(run: Path) -> dict:
    """RUN/soft_labels/manifest.json as a dict, or a BdkError (missing, not JSON, lacking its keys)."""
    run = Path(run)
    path = schema.soft_labels_manifest(run)
    if not path.exists():
        raise BdkError(f"{run} has no soft labels; run `bdk soft-labels --run {run}` first")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BdkError(f"{path} is not valid JSON ({first_line(e)}); rerun `bdk soft-labels --run {run}`") from None
    lacking = [k for k in ("shards", "rows", "rows_per_source") if not isinstance(manifest, dict) or k not in manifest]
    if lacking:
        raise BdkError(f"{path} lacks {lacking}; rerun `bdk soft-labels --run {run}`")
    if not isinstance(manifest["shards"], list) or not all(isinstance(s, str) and "/" not in s for s in manifest["shards"]):
        raise BdkError(f"{path}: \"shards\" must be a list of file names; rerun `bdk soft-labels --run {run}`")
    return manifest


def check_manifest_counts(manifest: Mapping[str, Any], rows: int, rows_per_source: Mapping[str, int], where: str) -> None:
    """The manifest's `rows` and `rows_per_source` against what the shards hold."""
    again = "rerun `bdk soft-labels`"
    if manifest.get("rows") != rows:
        raise BdkError(f"{where}: the manifest says {manifest.get('rows')} rows but the shards hold {rows}; {again}")
    said = {str(k): v for k, v in dict(manifest.get("rows_per_source") or {}).items() if v}
    held = {str(k): int(v) for k, v in rows_per_source.items() if v}
    if said != held:
        raise BdkError(f"{where}: the manifest's rows per source {said} differ from the shards' {held}; {again}")


def _read_parquet(path: Path, columns: list[str] | None, run: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise BdkError(f"{path} is unreadable (truncated or not Parquet: {first_line(e)}); "
                       f"rerun `bdk soft-labels --run {run}`") from None


def shard_output_arrays(table, task: tasks.Task, num_classes: int, where: str) -> dict[str, np.ndarray]:
    """The task's outputs of one soft-label Arrow table as arrays ([n, C] for vector outputs), for the checks."""
    out = {}
    for name in task.outputs:
        if name not in table.column_names:
            continue  # an older export's shards: the reader names the missing columns
        column = table.column(name).combine_chunks()
        if name in task.vector_outputs:
            try:
                values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float64)
            except Exception as e:  # not a list column
                raise BdkError(f"soft labels {where}: {name} is not a list of numbers ({first_line(e)}); "
                               "rerun `bdk soft-labels`") from None
            if len(values) != num_classes * len(table):
                raise BdkError(f"soft labels {where}: {name} rows do not all have {num_classes} classes; "
                               "rerun `bdk soft-labels`")
            out[name] = values.reshape(len(table), num_classes)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def check_soft_labels(run: Path) -> dict:
    """Read every soft-label shard of RUN once: the manifest parses, transfer.parquet and each shard are readable
    Parquet, the shards' rows match the manifest's `rows`/`rows_per_source` and the transfer set, every output is
    finite and normalised. Returns the manifest. Reads only the source column and the outputs (no features)."""
    run = Path(run)
    out = schema.soft_labels_dir(run)
    manifest = read_manifest(run)
    dataset_json = schema.data_dir(run) / "dataset.json"
    try:
        meta = json.loads(dataset_json.read_text())
    except FileNotFoundError:
        raise BdkError(f"{run} has no dataset; run `bdk teacher --out {run}` first") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BdkError(f"{dataset_json} is not valid JSON ({first_line(e)}); recreate the run with `bdk teacher`") from None
    task = tasks.get(meta.get("task", "classification"))
    num_classes = len(meta.get("class_names") or [])
    transfer_path = out / schema.TRANSFER_FILE
    if not transfer_path.exists():
        raise BdkError(f"{transfer_path} is missing (the transfer set the soft labels belong to); "
                       f"rerun `bdk soft-labels --run {run}`")
    import pyarrow.parquet as pq

    try:
        transfer_rows = pq.ParquetFile(transfer_path).metadata.num_rows
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on a truncated footer
        raise BdkError(f"{transfer_path} is unreadable (truncated or not Parquet: {first_line(e)}); "
                       f"rerun `bdk soft-labels --run {run}`") from None
    rows, per_source = 0, Counter()
    for name in manifest["shards"]:
        path = out / name
        if not path.exists():
            raise BdkError(f"soft-label shard {name} listed in {schema.soft_labels_manifest(run)} is missing; "
                           f"rerun `bdk soft-labels --run {run}`")
        import pyarrow.parquet as pq

        try:
            present = pq.read_schema(path).names
        except Exception as e:
            raise BdkError(f"{path} is unreadable (truncated or not Parquet: {first_line(e)}); "
                           f"rerun `bdk soft-labels --run {run}`") from None
        table = _read_parquet(path, [c for c in ("source", *task.outputs) if c in present], run)
        check_soft_label_arrays(shard_output_arrays(table, task, num_classes, path.name), task, path.name)
        rows += len(table)
        if "source" in table.column_names:
            per_source.update(table.column("source").to_pylist())
    where = str(schema.soft_labels_manifest(run))
    check_manifest_counts(manifest, rows, per_source, where)
    if transfer_rows != rows:
        raise BdkError(f"{where}: the shards hold {rows} rows but the transfer set {transfer_path.name} has "
                       f"{transfer_rows}; rerun `bdk soft-labels --run {run}`")
    return manifest

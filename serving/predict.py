"""Batch prediction: a CSV/Parquet table through any exported signature, one output row per input row.

The counterpart of the server for offline scoring: the same export resolution and signature specs
(`serving.server`), fed in batches instead of requests. Feature columns are picked by the names the
run recorded in RUN/data/dataset.json when the export sits in a run folder (so column order in the
file does not matter), else all numeric non-id columns in file order. A run with a feature specification
(distill.features: raw columns, text and empty cells) takes the raw columns and applies its recorded encoding
before the export, which takes the encoded vector.
"""
from __future__ import annotations

import distill  # noqa: F401  (Keras 2, quiet TensorFlow: before anything imports it)

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from distill import features as features_lib
from distill import inputs as inputs_lib
from distill import schema
from distill.schema import SEEDED_SIGNATURE, find_dataset_json, resolve_export
from distill.errors import BdkError, first_line, read_json

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _table_kind(path: Path, what: str) -> str:
    kind = TABLE_SUFFIXES.get(Path(path).suffix.lower())
    if kind is None:
        raise BdkError(f"{what} {path}: unsupported file type {Path(path).suffix!r}; use .csv or .parquet")
    return kind


def read_input(path: Path) -> pd.DataFrame:
    path = Path(path)
    kind = _table_kind(path, "input")
    if not path.is_file():
        raise BdkError(f"input {path} not found")
    try:
        df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as e:
        first = first_line(e)
        raise BdkError(f"{path}: could not read it as {kind} ({first})") from None
    if len(df) == 0:
        raise BdkError(f"{path}: the table has no rows")
    return df


def pick_columns(df: pd.DataFrame, id_column: str | None, feature_names: list[str] | None) -> tuple[str | None, list[str]]:
    """(id column or None for row numbers, feature columns) from the run's names or the numeric columns."""
    if id_column is not None and id_column not in df.columns:
        raise BdkError(f"id column {id_column!r} not found; the columns are {list(df.columns)}")
    id_col = id_column or next((c for c in schema.ID_COLUMNS if c in df.columns), None)
    if feature_names is not None:
        missing = [c for c in feature_names if c not in df.columns]
        if missing:
            raise BdkError(f"the input lacks feature column(s) {missing} that the model was trained on "
                           f"(from dataset.json); the columns are {list(df.columns)}")
        features = list(feature_names)
    else:
        features = [c for c in df.columns if c != id_col and pd.api.types.is_numeric_dtype(df[c])
                    and not pd.api.types.is_bool_dtype(df[c])]
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise BdkError(f"feature column(s) {bad} are not numeric; encode them as numbers")
    return id_col, features


def pick_raw_columns(df: pd.DataFrame, id_column: str | None, spec) -> tuple[str | None, list[str]]:
    """(id column or None for row numbers, the run's raw feature columns): text and empty cells allowed, the
    encoding (distill.features) reads them."""
    if id_column is not None and id_column not in df.columns:
        raise BdkError(f"id column {id_column!r} not found; the columns are {list(df.columns)}")
    id_col = id_column or next((c for c in schema.ID_COLUMNS if c in df.columns and c not in spec.raw_columns), None)
    missing = [c for c in spec.raw_columns if c not in df.columns]
    if missing:
        raise BdkError(f"the input lacks feature column(s) {missing} that the model was trained on "
                       f"(from dataset.json); the columns are {list(df.columns)}")
    return id_col, spec.raw_columns


def feature_matrix(df: pd.DataFrame, features: list[str]) -> np.ndarray:
    x = df[features].to_numpy(np.float64)  # [N, F]
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad) + 1
        shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        raise BdkError(f"missing or non-finite feature values in data rows {shown}; fix or drop those rows")
    return x.astype(np.float32)


def output_order(names: list[str], task: str | None) -> list[str]:
    """A signature's outputs in a fixed order, whatever order the loaded signature lists them in (it varies from
    process to process): the task's own order (tasks.Task.outputs), then the rest alphabetically."""
    from distill import tasks

    try:
        known = list(tasks.get(task or "classification").outputs)
    except Exception:  # an unknown task name in an odd dataset.json: alphabetical only
        known = []
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


def output_columns(name: str, values: np.ndarray, class_names: list[str] | None) -> dict[str, np.ndarray]:
    """[N] -> name; [N, C] -> name_<class> (class names from dataset.json when C matches, else 0..C-1)."""
    if values.ndim == 1:
        return {name: values}
    flat = values.reshape(len(values), -1)  # [N, prod(rest)]
    if values.ndim == 2 and class_names is not None and values.shape[1] == len(class_names):
        labels = list(class_names)
    else:
        labels = ["_".join(map(str, idx)) for idx in np.ndindex(*values.shape[1:])]
    return {f"{name}_{label}": flat[:, j] for j, label in enumerate(labels)}


def write_table(df: pd.DataFrame, out: Path) -> None:
    """Temp file beside `out`, then one rename: readers never see a half-written table."""
    out = Path(out)
    kind = _table_kind(out, "output")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        df.to_csv(tmp, index=False) if kind == "csv" else df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _input_rows(df: pd.DataFrame, meta: dict, input_path: Path, id_column: str | None, time_column: str | None):
    """The table's rows as the export takes them: (ids [N], x [N, F] or [N, T, C], the id column or None, the features
    (names, or the sequences' channel count)). Sequences (distill.inputs): a long table (series, time, the run's
    channels; a label is ignored), `id_column` its series column and `time_column` its time column (default: the
    run's), any length."""
    return inputs_lib.from_meta(meta).read(df, str(input_path), lambda table: _table_rows(table, meta, input_path, id_column),
                                           label_column=meta.get("label_column"), series_column=id_column,
                                           time_column=time_column, same_length=False, column_flags=True)


def _table_rows(df: pd.DataFrame, meta: dict, input_path: Path, id_column: str | None):
    """A table's rows: raw columns through the run's recorded encoding, or its numeric feature columns."""
    if features_lib.from_meta(meta) is not None:
        spec = features_lib.from_meta(meta)
        id_col, features = pick_raw_columns(df, id_column, spec)
        x = spec.encode(df, f"{input_path}: ")  # [N, F encoded]: what the export takes
    else:
        id_col, features = pick_columns(df, id_column, meta.get("feature_names"))
        x = feature_matrix(df, features)  # [N, F]
    ids = df[id_col].to_numpy() if id_col else np.arange(1, len(df) + 1)
    return ids, x, id_col, features


def _batch_signature(model, signature: str, x: np.ndarray, meta_path: Path | None, features, scalars: dict):
    """(the signature, its one batch input's name), checked against x [N, F] or [N, T, C]; `scalars` fill the
    signature's scalar inputs (num_samples, seed)."""
    from serving.server import RequestError

    try:
        sig = model.signature(signature)
    except RequestError as e:
        if scalars:
            raise BdkError(f"--samples needs a teacher export (its {SEEDED_SIGNATURE} signature); this export has "
                           f"none") from None
        raise BdkError(e.message.replace("Serving signature name", "signature")) from None
    (name, spec), *others = [(k, s) for k, s in sig.inputs.items() if k not in scalars]
    if others or spec.shape.rank != x.ndim:
        raise BdkError(f"signature {sig.name!r} takes inputs {list(sig.inputs)}; batch prediction needs one "
                       f"[batch, {'time, channels' if x.ndim == 3 else 'features'}] input (use serving_default)")
    n_features = spec.shape[-1]
    if n_features is not None and n_features != x.shape[-1]:
        source = f"the feature names in {meta_path}" if meta_path else "the numeric non-id columns"
        raise BdkError(f"the export takes {n_features} features but {source} give {x.shape[1]} ({features}); "
                       "pass a table with the training features (and --id-column for the id)")
    return sig, name


def _run_batches(sig, name: str, x: np.ndarray, batch_size: int, task: str | None, progress: bool,
                 scalars: dict | None = None) -> dict[str, list]:
    """{output: its per-batch arrays}, the outputs in the export's order for the task."""
    from tqdm import tqdm

    parts: dict[str, list[np.ndarray]] = {k: [] for k in output_order(list(sig.outputs), task)}
    with tqdm(total=len(x), unit="row", disable=not progress, desc=f"predict {sig.name}") as bar:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]  # [b, F] or [b, T, C]
            for k, v in sig.run({name: batch, **(scalars or {})}).items():
                parts[k].append(v)
            bar.update(len(batch))
    return parts


def _output_frame(sig, parts: dict[str, list], ids: np.ndarray, id_col: str | None, rows: int,
                  class_names: list[str] | None) -> pd.DataFrame:
    """The output table: the id column, then every output's column(s), one row per input row."""
    columns: dict[str, np.ndarray] = {id_col or "id": ids}
    for k, chunks in parts.items():
        values = np.concatenate(chunks, axis=0)
        if len(values) != rows:
            raise BdkError(f"output {k!r} of signature {sig.name!r} has no per-row batch dimension; pick another --signature")
        columns.update(output_columns(k, values, class_names))
    return pd.DataFrame(columns)


def predict_file(export_dir: Path, input_path: Path, out: Path, batch_size: int = 1024,
                 signature: str = "serving_default", id_column: str | None = None, time_column: str | None = None,
                 overwrite: bool = False, progress: bool = True, samples: int | None = None, seed: int = 0) -> dict:
    """Score every row of a table with one signature and write id + every output (the `bdk predict` command).
    Sequences: `id_column` is the series id column and `time_column` the time column (default: the run's).
    `samples` (a teacher export): `samples` weight draws from `seed` through `predictive_seeded` instead of the
    signature's fresh serving draws: the same file gives the same numbers, and more draws less Monte Carlo noise."""
    from serving.server import ServedModel

    out = Path(out)
    _table_kind(out, "output")
    if out.exists() and not overwrite:
        raise BdkError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    version_dir, _ = resolve_export(export_dir)  # one-line errors before TensorFlow loads
    meta_path = find_dataset_json(version_dir)
    meta = read_json(meta_path) if meta_path else {}
    ids, x, id_col, features = _input_rows(read_input(input_path), meta, input_path, id_column, time_column)

    model = ServedModel(version_dir, "predict")
    scalars = {}
    if samples is not None:
        if samples < 2:
            raise BdkError(f"--samples must be at least 2, got {samples}")
        signature, scalars = SEEDED_SIGNATURE, {"num_samples": np.int32(samples), "seed": np.int64(seed)}
    sig, name = _batch_signature(model, signature, x, meta_path, features, scalars)
    parts = _run_batches(sig, name, x, batch_size, meta.get("task"), progress, scalars)
    write_table(_output_frame(sig, parts, ids, id_col, len(x), meta.get("class_names")), out)
    return {"rows": len(x), "features": features, "outputs": list(parts), "signature": sig.name,
            "version_dir": str(version_dir), "out": str(out)}

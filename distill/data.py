"""Load a tabular classification dataset, validate it, split it and fit the [0, 1] scaler.

Every source goes through Hugging Face `datasets`: the bundled Iris and local files through its
csv/parquet loaders (offline), `hf:NAME` through the Hub. The split recipe: shuffle with the seed,
hold out a stratified 20% test split, then a stratified 20% of the rest for validation. The scaler
uses the train split's min/max only; exported models carry it, so they take raw features.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distill import schema
from distill.errors import BdkError, first_line, read_json, write_json

log = logging.getLogger(__name__)

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
# name -> (file, label column, id column)
BUNDLED = {"iris": (DATA_ROOT / "iris.csv", "Species", "Id")}
SPLITS = ("train", "val", "test")
ROW_NUMBER = "__row__"  # 1-based data row of the source file: the id when the table has no id column


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "iris"  # bundled name, a .csv/.parquet path, or hf:NAME
    label_column: str | None = None  # default: the bundled dataset's, else "label"
    id_column: str | None = None  # default: the bundled dataset's, "id"/"Id" if present, else row number
    test_fraction: float = 0.2
    val_fraction: float = 0.2  # of what remains after the test split
    drop_missing: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Scaler:
    """Min-max scaling to [0, 1] fitted on the train split; constant features get range 1."""

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> "Scaler":
        return cls(tuple(map(float, x.min(axis=0))), tuple(map(float, x.max(axis=0))))

    @property
    def scale(self) -> np.ndarray:
        span = np.asarray(self.maximum, np.float32) - np.asarray(self.minimum, np.float32)
        return np.where(span > 0, span, 1.0).astype(np.float32)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - np.asarray(self.minimum, np.float32)) / self.scale).astype(np.float32)

    def inverse(self, x_scaled: np.ndarray) -> np.ndarray:
        return (np.asarray(x_scaled, np.float32) * self.scale + np.asarray(self.minimum, np.float32)).astype(np.float32)


@dataclass
class Split:
    ids: np.ndarray  # [n] str
    x: np.ndarray  # [n, F] float32, raw features
    y: np.ndarray  # [n] int64 class index

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Dataset:
    feature_names: list[str]
    class_names: list[str]
    label_column: str
    scaler: Scaler
    splits: dict[str, Split] = field(default_factory=dict)
    source: str = ""

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def scaled(self, name: str) -> np.ndarray:
        return self.scaler.transform(self.splits[name].x)


# ---------------------------------------------------------------- reading


def read_table(source: str) -> pd.DataFrame:
    """Read a bundled name, a local .csv/.parquet file or `hf:NAME` into a DataFrame."""
    import datasets

    datasets.disable_progress_bars()
    if source in BUNDLED:
        path = BUNDLED[source][0]
        return _load_local(path)
    if source.startswith("hf:"):
        name = source[3:]
        try:
            ds = datasets.load_dataset(name, split="train")
        except Exception as e:  # the Hub raises many types: connection, offline mode, not found
            raise BdkError(
                f"could not load Hub dataset {name!r} ({type(e).__name__}); it needs a network connection to "
                "the Hugging Face Hub: download it where there is one and pass the local CSV/Parquet file instead"
            ) from None
        return ds.to_pandas()
    path = Path(source)
    if not path.exists():
        known = ", ".join(sorted(BUNDLED))
        raise BdkError(f"dataset file {source} not found; pass an existing .csv/.parquet file, hf:NAME, or one of: {known}")
    return _load_local(path)


def _load_local(path: Path) -> pd.DataFrame:
    import datasets

    kind = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower())
    if kind is None:
        raise BdkError(f"{path}: unsupported file type {path.suffix!r}; use a .csv or .parquet file")
    try:
        with tempfile.TemporaryDirectory(prefix="bdk-hf-") as cache:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True)
            return ds.to_pandas()
    except BdkError:
        raise
    except Exception as e:
        raise BdkError(f"{path}: could not read it as {kind} ({first_line(e)}); check the file is a valid {kind} table") from None


# ---------------------------------------------------------------- validating and splitting


def _columns(df: pd.DataFrame, cfg: DataConfig) -> tuple[str, str | None]:
    bundled = BUNDLED.get(cfg.dataset)
    label = cfg.label_column or (bundled[1] if bundled else "label")
    if label not in df.columns:
        raise BdkError(
            f"label column {label!r} not found; the columns are {list(df.columns)}: pass --label-column NAME"
        )
    id_col = cfg.id_column or (bundled[2] if bundled else next((c for c in schema.ID_COLUMNS if c in df.columns), None))
    if id_col is not None and id_col not in df.columns:
        raise BdkError(f"id column {id_col!r} not found; the columns are {list(df.columns)}: pass --id-column NAME")
    return label, id_col


def _row_list(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def validate(df: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, list[str], str, str | None]:
    """Check the table; return it (rows with missing cells dropped if asked), features, label, id column."""
    if len(df) == 0:
        raise BdkError(f"{cfg.dataset}: the table has no rows")
    label, id_col = _columns(df, cfg)
    features = [c for c in df.columns if c not in (label, id_col)]
    if not features:
        raise BdkError(f"{cfg.dataset}: no feature columns besides the label {label!r}")
    for c in features:
        col = df[c]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            example = next((v for v in col if isinstance(v, str) and v.strip()), col.iloc[0])
            raise BdkError(
                f"feature column {c!r} is not numeric (e.g. {example!r}); encode it as numbers or remove the column"
            )
    df = df.assign(**{ROW_NUMBER: np.arange(1, len(df) + 1)})  # the file's data row, kept through drops
    feats = df[features].astype("float64")
    missing = feats.isna().any(axis=1).to_numpy() | df[label].isna().to_numpy() | ~np.isfinite(feats.to_numpy()).all(axis=1)
    if missing.any():
        rows = np.flatnonzero(missing) + 1  # 1-based data rows (header not counted)
        if not cfg.drop_missing:
            raise BdkError(
                f"missing or non-finite values in data rows {_row_list(rows)}; fix them or pass --drop-missing to drop those rows"
            )
        log.warning("dropping %d rows with missing values: %s", len(rows), _row_list(rows))
        df = df.loc[~missing].reset_index(drop=True)
        if len(df) == 0:
            raise BdkError(f"{cfg.dataset}: every row has a missing value")
    return df, features, label, id_col


def _class_names(labels: pd.Series) -> list[str]:
    values = labels.unique()
    if pd.api.types.is_numeric_dtype(labels) and all(float(v).is_integer() for v in values):
        return [str(int(v)) for v in sorted(values)]
    return sorted(str(v) for v in values)


def _label_strings(labels: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(labels) and all(float(v).is_integer() for v in labels.unique()):
        return labels.astype("int64").astype(str).to_numpy()
    return labels.astype(str).to_numpy()


def build_dataset(df: pd.DataFrame, cfg: DataConfig) -> Dataset:
    """Validate `df`, split it with the seed (stratified) and fit the scaler on train."""
    from sklearn.model_selection import train_test_split

    df, features, label, id_col = validate(df, cfg)
    classes = _class_names(df[label])
    if len(classes) < 2:
        raise BdkError(f"label column {label!r} has {len(classes)} class ({classes}); classification needs at least 2")
    index = {name: i for i, name in enumerate(classes)}  # classes may sort numerically: no searchsorted
    y = np.array([index[v] for v in _label_strings(df[label])], dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    small = [(classes[i], int(n)) for i, n in enumerate(counts) if n < 3]
    if small:
        name, n = small[0]
        raise BdkError(
            f"class {name!r} has only {n} row(s); stratified train/val/test splits need at least 3 per class: add rows or remove the class"
        )
    ids = (df[id_col] if id_col else df[ROW_NUMBER]).astype(str).to_numpy()
    if len(set(ids)) != len(ids):
        raise BdkError(f"id column {id_col!r} has duplicate values; ids must be unique (or pass --id-column to pick another)")
    x = df[features].to_numpy(np.float32)
    idx = np.arange(len(df))
    try:
        rest, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed, shuffle=True)
        train, val = train_test_split(rest, test_size=cfg.val_fraction, stratify=y[rest], random_state=cfg.seed, shuffle=True)
    except ValueError as e:
        raise BdkError(f"cannot stratify the splits: {e}; add rows to the small classes or remove them") from None
    splits = {name: Split(ids[i], x[i], y[i]) for name, i in zip(SPLITS, (train, val, test))}
    return Dataset(features, classes, label, Scaler.fit(splits["train"].x), splits, source=cfg.dataset)


def load(cfg: DataConfig) -> Dataset:
    return build_dataset(read_table(cfg.dataset), cfg)


# ---------------------------------------------------------------- the run folder


def save(ds: Dataset, out: Path) -> None:
    """Write the dataset's description, split ids and rows so later stages need no source file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dataset.json", {
        "source": ds.source, "label_column": ds.label_column, "feature_names": ds.feature_names,
        "class_names": ds.class_names, "scaler": {"minimum": ds.scaler.minimum, "maximum": ds.scaler.maximum},
    })
    write_json(out / "split.json", {name: list(map(str, s.ids)) for name, s in ds.splits.items()})
    frames = []
    for name, s in ds.splits.items():
        f = pd.DataFrame(s.x, columns=ds.feature_names)
        f.insert(0, "id", s.ids.astype(str))
        f.insert(1, "split", name)
        f["label"] = s.y
        frames.append(f)
    pd.concat(frames, ignore_index=True).to_parquet(out / "splits.parquet", index=False)


def load_from_run(run: Path) -> Dataset:
    d = schema.data_dir(run)
    if not (d / "dataset.json").exists():
        raise BdkError(f"{run} has no dataset; run `bdk teacher --out {run}` first")
    meta = read_json(d / "dataset.json")
    rows = pd.read_parquet(d / "splits.parquet")
    feats = meta["feature_names"]
    splits = {}
    for name in SPLITS:
        r = rows[rows["split"] == name]
        splits[name] = Split(r["id"].to_numpy().astype(str), r[feats].to_numpy(np.float32), r["label"].to_numpy(np.int64))
    scaler = Scaler(tuple(meta["scaler"]["minimum"]), tuple(meta["scaler"]["maximum"]))
    return Dataset(feats, meta["class_names"], meta["label_column"], scaler, splits, source=meta["source"])

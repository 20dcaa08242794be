"""Load a tabular dataset (classification or regression), validate it, split it, fit the normalisers.

Every source goes through Hugging Face `datasets`: the bundled tables and local files through its
csv/parquet loaders (offline), `hf:NAME` through the Hub. The task is the label's likelihood
(distill.tasks): given, or inferred (a numeric label with many distinct values is regression).
Split recipe: classification holds out a stratified `test_fraction` (default 20%), then a
stratified `val_fraction` of the rest; regression does the same on a seeded random permutation
(the UCI protocol of Hernandez-Lobato & Adams 2015 with test_fraction = val_fraction = 0.1).
Normalisers see the train split only: features z-scored (min-max remains for run folders made
before), and a regression target z-scored; exports carry them, so they take raw features and
answer in the target's units.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from distill import features as features_lib
from distill import inputs as inputs_lib
from distill import schema, tasks
from distill.errors import BdkError, first_line, read_json, write_json
from distill.features import FeatureSpec
from distill.inputs import Inputs, SequenceInputs, TableInputs, kind_of_source
from distill.training import aligned_empty

log = logging.getLogger(__name__)

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
# name -> (file, label column, id column, task); provenance and licenses in data/README.md
BUNDLED = {
    "iris": (DATA_ROOT / "iris.csv", "Species", "Id", "classification"),
    "boston": (DATA_ROOT / "boston.csv", "medv", "id", "regression"),
    "concrete": (DATA_ROOT / "concrete.csv", "compressive_strength", "id", "regression"),
    # scikit-learn's bundled copies (shipped inside the package, offline): the benchmark suite
    "wine": ("sklearn:load_wine", "label", "id", "classification"),
    "breast_cancer": ("sklearn:load_breast_cancer", "label", "id", "classification"),
    "digits": ("sklearn:load_digits", "label", "id", "classification"),
}
SPLITS = ("train", "val", "test")
ROW_NUMBER = "__row__"  # 1-based data row of the source file: the id when the table has no id column


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "iris"  # bundled name, a .csv/.parquet path, or hf:NAME
    label_column: str | None = None  # default: the bundled dataset's, else "label"
    id_column: str | None = None  # default: the bundled dataset's, "id"/"Id" if present, else row number
    task: str | None = None  # classification | regression; None: the bundled dataset's, else inferred from the label
    test_fraction: float = 0.2
    val_fraction: float = 0.2  # of what remains after the test split
    drop_missing: bool = False  # an alias of missing="drop" (the flag --drop-missing)
    missing: str = "impute"  # empty feature cells: impute (train median / own category + indicator) | drop | refuse
    categorical: tuple[str, ...] = ()  # feature columns forced categorical (--categorical)
    numeric: tuple[str, ...] = ()  # feature columns forced numeric (--numeric)
    max_categories: int = features_lib.MAX_CATEGORIES  # a categorical column with more train values is refused
    # Sequences (distill.sequences): a long table's series id and time columns (default: series / time when the
    # source is a sequence source: a bundled sequence set, an .npz, or a table with --series-column)
    series_column: str | None = None
    time_column: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.missing not in features_lib.MISSING_POLICIES:
            raise BdkError(f"--missing must be one of {', '.join(features_lib.MISSING_POLICIES)}, got {self.missing!r}")
        if self.drop_missing:
            if self.missing == "refuse":
                raise BdkError("--drop-missing and --missing refuse contradict each other; pass one")
            object.__setattr__(self, "missing", "drop")
        for name in ("categorical", "numeric"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",")]
            object.__setattr__(self, name, tuple(v.strip() for v in (value or ()) if v and v.strip()))
        if self.max_categories < 2:
            raise BdkError(f"--max-categories must be at least 2, got {self.max_categories}")
        if self.task is not None and self.task not in tasks.TASKS:
            raise BdkError(f"unknown task {self.task!r}; choose one of {', '.join(tasks.TASKS)}")
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise BdkError(f"{name} must be in (0, 1), got {getattr(self, name)}")


NORMALISER_COLUMNS = 8  # columns per float64 block when fitting a normaliser


@dataclass(frozen=True)
class Normaliser:
    """x -> (x - shift) / scale per column, fitted on the train split: `minmax` maps it to [0, 1],
    `standard` to zero mean and unit variance; constant columns get scale 1."""

    kind: str
    shift: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray, kind: str) -> "Normaliser":
        if kind not in ("minmax", "standard"):
            raise BdkError(f"unknown scaling {kind!r}; choose minmax or standard")
        x = np.asarray(x).reshape(len(x), -1)
        shift, span = np.empty(x.shape[1]), np.empty(x.shape[1])  # [F] each
        for at in range(0, x.shape[1], NORMALISER_COLUMNS):  # in float64, a block of columns at a time (memory)
            cols = slice(at, at + NORMALISER_COLUMNS)
            block = np.asarray(x[:, cols], np.float64)
            if kind == "minmax":
                shift[cols], span[cols] = block.min(axis=0), block.max(axis=0) - block.min(axis=0)
            else:
                shift[cols], span[cols] = block.mean(axis=0), block.std(axis=0)
        return cls(kind, tuple(map(float, shift)), tuple(float(s) if s > 0 else 1.0 for s in span))

    def transform(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(x - shift) / scale in float32, into `out` when given (it may be x itself: normalised in place)."""
        z = np.subtract(np.asarray(x, np.float32), np.asarray(self.shift, np.float32), out=out)  # one float32 copy
        z /= np.asarray(self.scale, np.float32)
        return z

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * np.float32(self.scale) + np.float32(self.shift)).astype(np.float32)

    def to_json(self) -> dict:
        return {"kind": self.kind, "shift": list(self.shift), "scale": list(self.scale)}

    @classmethod
    def from_json(cls, d: dict) -> "Normaliser":
        if "kind" in d:
            return cls(d["kind"], tuple(d["shift"]), tuple(d["scale"]))
        if "minimum" in d:  # run folders written before the task abstraction (classification)
            lo, hi = np.asarray(d["minimum"], np.float64), np.asarray(d["maximum"], np.float64)
            return cls("minmax", tuple(map(float, lo)), tuple(float(s) if s > 0 else 1.0 for s in hi - lo))
        return cls("standard", tuple(d["mean"]), tuple(d["std"]))


@dataclass
class Split:
    ids: np.ndarray  # [n] str
    x: np.ndarray  # [n, F] float32, raw features
    y: np.ndarray  # [n] int64 class index | float32 target in its own units

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Dataset:
    task: str  # distill.tasks name
    feature_names: list[str]
    class_names: list[str]  # empty for regression
    label_column: str
    scaler: Normaliser  # features
    target_scaler: Normaliser | None = None  # regression target; None for classes
    splits: dict[str, Split] = field(default_factory=dict)
    source: str = ""
    inputs: Inputs | None = None  # distill.inputs: a table row (the default) or a sequence
    # Tables: the raw columns, their kinds and the train-fitted encoding (distill.features); feature_names are its
    # encoded names. None for sequences and for run folders made before it.
    feature_spec: FeatureSpec | None = None
    task_note: str = ""  # how the task was inferred, when it was (for the user)
    train_box: tuple[np.ndarray, np.ndarray] | None = None  # box() (lo [F], hi [F]) when the train rows are not loaded

    def __post_init__(self):
        if self.inputs is None:
            self.inputs = TableInputs(len(self.feature_names))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What the models take per example: (F,) for a table, (T, C) for sequences."""
        return self.inputs.shape

    def raw(self, name: str) -> np.ndarray:
        """A split's raw model inputs [n, *input_shape] (what the exports take)."""
        x = self.splits[name].x
        return x.reshape(len(x), *self.input_shape)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Raw flat features [n, F] -> normalised model inputs [n, *input_shape]."""
        x = np.asarray(x, np.float32)
        return self.scaler.transform(x.reshape(len(x), *self.input_shape))

    def denormalise(self, z: np.ndarray) -> np.ndarray:
        """Normalised inputs [n, ...] (flat or shaped) -> raw flat features [n, F]."""
        z = np.asarray(z, np.float32)
        return self.scaler.inverse(z.reshape(len(z), *self.input_shape)).reshape(len(z), self.num_features)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def target_shift(self) -> float:
        return self.target_scaler.shift[0] if self.target_scaler else 0.0

    @property
    def target_scale(self) -> float:
        return self.target_scaler.scale[0] if self.target_scaler else 1.0

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def scaled(self, name: str, rows: int | None = None) -> np.ndarray:
        """Normalised model inputs [n, *input_shape] (the first `rows` of them, when given), in an aligned buffer
        (training.host_tensor shares it)."""
        x = self.raw(name)[:rows]
        return self.scaler.transform(x, out=aligned_empty(x.shape))

    def target(self, name: str) -> np.ndarray:
        """The labels in the model's units: class indices, or the z-scored target [n]."""
        y = self.splits[name].y
        return y if self.target_scaler is None else self.target_scaler.transform(y[:, None])[:, 0]

    def box(self, z: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The train split's bounding box in normalised space (flat features): (lo [F], hi [F]); `z`: the normalised
        train rows [n, F] when the caller holds them. Without them, the raw rows' range normalised: the same bits
        (float32 subtraction and division by a positive scale are monotone), and no normalised copy."""
        if self.train_box is not None:  # read from the run without its train rows (train_box)
            return self.train_box
        if z is not None:
            return z.min(axis=0), z.max(axis=0)
        x = self["train"].x  # [n, F] raw
        return self.normalised_range(x.min(axis=0), x.max(axis=0))

    def normalised_range(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw per-feature bounds (lo [F], hi [F]) -> the same bounds normalised (flat [F] each)."""
        return self.normalise(lo[None])[0].reshape(-1), self.normalise(hi[None])[0].reshape(-1)


# ---------------------------------------------------------------- reading


def read_table(source: str) -> pd.DataFrame:
    """Read a bundled name, a local .csv/.parquet file or `hf:NAME` into a DataFrame."""
    import datasets

    datasets.disable_progress_bars()
    if source in BUNDLED:
        where = BUNDLED[source][0]
        return _load_sklearn(where.split(":", 1)[1]) if isinstance(where, str) else _load_local(where)
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


def _load_sklearn(loader: str) -> pd.DataFrame:
    """One of scikit-learn's bundled tables: `id` (1-based row), the features, `label` (the class name)."""
    import sklearn.datasets

    d = getattr(sklearn.datasets, loader)(as_frame=True)
    df = d.data.copy()
    df.insert(0, "id", np.arange(1, len(df) + 1))
    df["label"] = np.asarray(d.target_names)[d.target.to_numpy()].astype(str)
    return df


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
    """Check the table; return it (rows with missing cells dropped under --missing drop), features, label, id column.

    Empty feature cells: kept for the encoding to impute (`impute`), dropped with their rows (`drop`), or refused
    (`refuse`). A label with empty cells is refused unless rows are dropped; infinite values are never imputed."""
    if len(df) == 0:
        raise BdkError(f"{cfg.dataset}: the table has no rows")
    label, id_col = _columns(df, cfg)
    features = [c for c in df.columns if c not in (label, id_col)]
    if not features:
        raise BdkError(f"{cfg.dataset}: no feature columns besides the label {label!r}")
    features_lib.check_overrides(features, cfg.categorical, cfg.numeric)
    for c in features:
        if c not in cfg.categorical:
            features_lib.check_mixed(df[c], c)
    df = df.copy(deep=False)  # a new column without copying the table's (a million rows: ~0.4 GB)
    df[ROW_NUMBER] = np.arange(1, len(df) + 1)  # the file's data row, kept through drops
    empty = np.zeros(len(df), bool)  # a feature cell is empty
    infinite = np.zeros(len(df), bool)  # a numeric feature cell is +-inf
    for c in features:
        empty |= features_lib.missing_mask(df[c])
        if c not in cfg.categorical and not pd.api.types.is_bool_dtype(df[c]):
            infinite |= np.isinf(features_lib.as_numbers(df[c]))
    bad_label = features_lib.missing_mask(df[label])
    if pd.api.types.is_numeric_dtype(df[label]) and not pd.api.types.is_bool_dtype(df[label]):
        bad_label |= ~np.isfinite(df[label].to_numpy(np.float64))  # an infinite label (a regression target)
    if cfg.missing == "drop":
        drop = empty | infinite | bad_label
        if drop.any():
            rows = np.flatnonzero(drop) + 1
            log.warning("dropping %d rows with missing values: %s", len(rows), _row_list(rows))
            df = df.loc[~drop].reset_index(drop=True)
            if len(df) == 0:
                raise BdkError(f"{cfg.dataset}: every row has a missing value")
        return df, features, label, id_col
    if cfg.missing == "refuse" and (empty | infinite | bad_label).any():
        rows = np.flatnonzero(empty | infinite | bad_label) + 1  # 1-based data rows (header not counted)
        raise BdkError(f"missing or non-finite values in data rows {_row_list(rows)}; fix them, or pass --missing impute "
                       "(--missing drop, or --drop-missing, drops those rows)")
    if bad_label.any():
        rows = np.flatnonzero(bad_label) + 1
        raise BdkError(f"label column {label!r} has empty or non-finite values in data rows {_row_list(rows)}; fill or "
                       "remove those rows, or pass --missing drop to drop them")
    if infinite.any():
        rows = np.flatnonzero(infinite) + 1
        raise BdkError(f"infinite feature values in data rows {_row_list(rows)}; fix them, or pass --missing drop to "
                       "drop those rows")
    return df, features, label, id_col


def _integer_valued(labels: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(labels) and all(float(v).is_integer() for v in labels.unique())


def _class_names(labels: pd.Series) -> list[str]:
    values = labels.unique()
    if _integer_valued(labels):
        return [str(int(v)) for v in sorted(values)]
    return sorted(str(v) for v in values)


def _label_strings(labels: pd.Series) -> np.ndarray:
    if _integer_valued(labels):
        return labels.astype("int64").astype(str).to_numpy()
    return labels.astype(str).to_numpy()


MANY_VALUES = 20  # a numeric label with fractional values, or more distinct integers than this, is regression


def infer_task(labels: pd.Series) -> tuple[str, str]:
    """(task, why): a numeric label with any fractional value, or with more than MANY_VALUES distinct integers, is a
    regression target; anything else (text, booleans, few integers) is classes. `why` names the rule."""
    distinct = labels.nunique()
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    if numeric and not _integer_valued(labels):
        return "regression", f"the label is numeric with fractional values ({distinct} distinct)"
    if numeric and distinct > MANY_VALUES:
        return "regression", f"the label is numeric with {distinct} distinct integer values, more than {MANY_VALUES}"
    if numeric:
        return "classification", f"the label has {distinct} distinct integer values, at most {MANY_VALUES}"
    return "classification", f"the label is {'boolean' if pd.api.types.is_bool_dtype(labels) else 'text'} with {distinct} distinct values"


def task_note(task: str, why: str) -> str:
    """The line a command prints when it inferred the task: the rule and how to override it."""
    other = next(t for t in tasks.TASKS if t != task)
    return (f"task: {task} (inferred: {why}; a numeric label with fractional values or more than {MANY_VALUES} "
            f"distinct integers is regression, anything else classification; pass --task {other} to override)")


def _classes(df: pd.DataFrame, label: str) -> tuple[list[str], np.ndarray]:
    classes = _class_names(df[label])
    if len(classes) < 2:
        raise BdkError(f"label column {label!r} has {len(classes)} class ({classes}); classification needs at least 2")
    index = {name: i for i, name in enumerate(classes)}  # classes may sort numerically: no searchsorted
    y = np.array([index[v] for v in _label_strings(df[label])], dtype=np.int64)
    small = [(classes[i], int(n)) for i, n in enumerate(np.bincount(y, minlength=len(classes))) if n < 3]
    if small:
        name, n = small[0]
        raise BdkError(
            f"class {name!r} has only {n} row(s); stratified train/val/test splits need at least 3 per class: add rows "
            "or remove the class (or pass --task regression if the label is a number to predict)"
        )
    return classes, y


MAX_TARGET = 1e15  # |regression target| bound: squares summed over a million rows stay finite in float32


def _target(df: pd.DataFrame, label: str) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(df[label]) or pd.api.types.is_bool_dtype(df[label]):
        example = next(iter(df[label]), None)
        raise BdkError(f"label column {label!r} is not numeric (e.g. {example!r}); regression needs a numeric target "
                       "(or pass --task classification)")
    if len(df) < 10:
        raise BdkError(f"{len(df)} rows are too few for train/val/test splits of a regression target; add rows")
    y = df[label].to_numpy(np.float64)
    huge = np.flatnonzero(~(np.abs(y) <= MAX_TARGET))  # also NaN/inf, should any get here
    if len(huge):
        rows = df[ROW_NUMBER].to_numpy()[huge] if ROW_NUMBER in df.columns else huge + 1
        raise BdkError(f"label column {label!r} has values beyond ±{MAX_TARGET:g} (or non-finite) in data rows "
                       f"{_row_list(rows)}; a float32 network cannot fit them: rescale the target (other units, a log) "
                       "or remove those rows")
    return y.astype(np.float32)


def split_indices(n: int, y: np.ndarray | None, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row indices: stratified by `y` (classes), else from a seeded permutation."""
    if y is None:  # regression: the UCI recipe (test first, then validation from the rest)
        order = np.random.default_rng(cfg.seed).permutation(n)
        n_test = int(round(n * cfg.test_fraction))
        n_val = int(round((n - n_test) * cfg.val_fraction))
        return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    try:
        rest, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed, shuffle=True)
        train, val = train_test_split(rest, test_size=cfg.val_fraction, stratify=y[rest], random_state=cfg.seed, shuffle=True)
    except ValueError as e:
        raise BdkError(f"cannot stratify the splits: {e}; add rows to the small classes or remove them") from None
    return train, val, test


def build_dataset(df: pd.DataFrame, cfg: DataConfig) -> Dataset:
    """Validate `df`, choose the task, split it with the seed, fit the feature encoding and the normalisers on train."""
    df, features, label, id_col = validate(df, cfg)
    bundled = BUNDLED.get(cfg.dataset)
    note = ""
    task = cfg.task or (bundled[3] if bundled and not cfg.label_column else None)
    if task is None:
        task, why = infer_task(df[label])
        note = task_note(task, why)
    recipe = tasks.get(task)
    classes, y = _classes(df, label) if recipe.has_classes else ([], _target(df, label))
    ids = (df[id_col] if id_col else df[ROW_NUMBER]).astype(str).to_numpy()
    if len(set(ids)) != len(ids):
        raise BdkError(f"id column {id_col!r} has duplicate values; ids must be unique (or pass --id-column to pick another)")
    parts = split_indices(len(df), y if recipe.has_classes else None, cfg)  # classes: stratified
    # Kinds, vocabularies and medians from the train split only; bundled tables keep integer columns numeric.
    spec = FeatureSpec.fit(df, features, cfg.categorical, cfg.numeric, cfg.max_categories,
                           integer_codes=bundled is None, missing=cfg.missing, rows=parts[0])
    # [n, F encoded], the rows in split order: each split's rows are a view of it (a million rows: 0.2 GB, once)
    x = spec.encode(df, rows=np.concatenate(parts))
    ends = np.cumsum([len(i) for i in parts])
    splits = {name: Split(ids[i], x[end - len(i):end], y[i]) for name, i, end in zip(SPLITS, parts, ends)}
    scaler = Normaliser.fit(splits["train"].x, recipe.feature_scaling)
    target_scaler = Normaliser.fit(splits["train"].y, "standard") if recipe.normalises_target else None
    return Dataset(task, spec.encoded_names, classes, label, scaler, target_scaler, splits, source=cfg.dataset,
                   feature_spec=spec, task_note=note)


def build_sequence_dataset(ids: np.ndarray, x: np.ndarray, labels: pd.Series, channels: list[str],
                           cfg: DataConfig) -> Dataset:
    """Sequences x [N, T, C] with one label each -> a Dataset of flattened rows, classes, per-channel z-scores."""
    from distill.sequences import flat_names

    if cfg.task is not None and not tasks.get(cfg.task).has_classes:
        raise BdkError("sequence regression is not supported yet; sequences are classified (drop --task regression)")
    if len(set(ids)) != len(ids):
        raise BdkError("series ids are not unique; give every series its own id")
    label = cfg.label_column or "label"
    classes, y = _classes(pd.DataFrame({label: labels.to_numpy()}), label)
    n, length, c = x.shape
    flat = x.reshape(n, length * c)
    parts = split_indices(n, y, cfg)
    splits = {name: Split(ids[i], flat[i], y[i]) for name, i in zip(SPLITS, parts)}
    scaler = Normaliser.fit(splits["train"].x.reshape(-1, c), "standard")  # per channel, over every time step
    names = flat_names(channels, length)
    return Dataset("classification", names, classes, label, scaler, None, splits, source=cfg.dataset,
                   inputs=SequenceInputs(length, c, tuple(names), cfg.series_column, cfg.time_column))


def load(cfg: DataConfig) -> Dataset:
    return LOADERS[kind_of_source(cfg.dataset, cfg.series_column).kind](cfg)


def load_sequences(cfg: DataConfig) -> Dataset:
    from distill import sequences

    label = cfg.label_column or {"italy_power": "season"}.get(cfg.dataset, "label")
    ids, x, labels, channels = sequences.read_sequences(cfg.dataset, label, cfg.series_column, cfg.time_column)
    return build_sequence_dataset(ids, x, labels, channels, replace(cfg, label_column=label))


def load_table(cfg: DataConfig) -> Dataset:
    df = read_table(cfg.dataset)
    # Arrow's allocator keeps what it frees: the source's Arrow table once it is a frame (a million rows: ~0.2 GB),
    # then the frame's own columns (pandas holds them in Arrow's memory) once the dataset is built
    release_arrow_memory()
    ds = build_dataset(df, cfg)
    del df
    release_arrow_memory()
    return ds


LOADERS = {"table": load_table, "sequence": load_sequences}


def release_arrow_memory() -> None:
    """Hand the Arrow memory pool's freed pages back to the system (its allocator keeps them for reuse otherwise)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# ---------------------------------------------------------------- the run folder


def save(ds: Dataset, out: Path) -> None:
    """Write the dataset's description, split ids and rows so later stages need no source file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dataset.json", {
        "task": ds.task, "source": ds.source, "label_column": ds.label_column, "feature_names": ds.feature_names,
        "class_names": ds.class_names, "scaler": ds.scaler.to_json(),
        "target_scaler": ds.target_scaler.to_json() if ds.target_scaler else None,
        **ds.inputs.meta(),
        # the exports take the ENCODED vector (encoded_features, = feature_names); raw rows go through feature_spec
        **({"raw_columns": ds.feature_spec.raw_columns, "encoded_features": ds.feature_names,
            "feature_spec": ds.feature_spec.to_json()} if ds.feature_spec else {}),
    })
    write_json(out / "split.json", {name: list(map(str, s.ids)) for name, s in ds.splits.items()})
    write_splits(ds, out / "splits.parquet")


WRITE_CHUNK_ROWS = 65_536  # rows per piece written to splits.parquet


def split_frames(ds: Dataset, rows: int):
    """The splits' rows as they are stored, split by split in pieces of `rows`: frames of id, split, the features, label."""
    for name, s in ds.splits.items():
        for at in range(0, len(s), rows):
            f = pd.DataFrame(s.x[at:at + rows], columns=ds.feature_names)
            f.insert(0, "id", s.ids[at:at + rows].astype(str))
            f.insert(1, "split", name)
            f["label"] = s.y[at:at + rows]
            yield f


def write_splits(ds: Dataset, path: Path) -> None:
    """splits.parquet piece by piece (split_frames): never a frame of every split."""
    write_pieces(path, split_frames(ds, WRITE_CHUNK_ROWS))


def write_pieces(path: Path, frames, arrow_schema=None) -> None:
    """pandas frames -> one Parquet file, a row group each, through one writer (never an Arrow table of them all).
    Each frame is converted with `arrow_schema` (None: the first frame's); the file's schema is the first converted
    frame's, pandas metadata included, as `write_table` writes it. No frames: no file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for frame in frames:
            table = pa.Table.from_pandas(frame, schema=arrow_schema or (writer.schema if writer else None),
                                         preserve_index=False)
            writer = writer or pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def read_dataset_json(run: Path) -> dict:
    """RUN/data/dataset.json with its defaults filled in (older runs: classification, min-max scaler)."""
    path = schema.data_dir(run) / "dataset.json"
    if not path.exists():
        raise BdkError(f"{run} has no dataset; run `bdk teacher --out {run}` first")
    meta = read_json(path)
    meta.setdefault("task", "classification")
    meta.setdefault("target_scaler", None)
    return meta


READ_BATCH_ROWS = 65_536  # rows per record batch read from splits.parquet (50 float64 columns: 26 MB)


def split_batches(path: Path, feats: list[str], names: tuple[str, ...] = SPLITS):
    """The rows of a run's splits.parquet in file order, one record batch at a time, never the whole table: yields
    (split name, ids (Arrow) [m], x [m, F] float32, labels (Arrow) [m]) for the batch's rows of each named split."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # pre_buffer off: it would cache every column chunk read until the iteration ends (the whole file). One row group
    # at a time, on this thread, its decoded pages released after it: an iteration over the whole file decodes ahead
    # and its allocator keeps the pages (at a million rows: +0.19 GB, against +0.08 GB this way)
    file = pq.ParquetFile(path, pre_buffer=False)
    for group in range(file.num_row_groups):
        for batch in file.iter_batches(READ_BATCH_ROWS, row_groups=[group], columns=["id", "split", *feats, "label"],
                                       use_threads=False):
            for name in names:
                part = batch.filter(pc.equal(batch.column("split"), name))
                x = np.empty((part.num_rows, len(feats)), np.float32)  # [m, F]
                for j, f in enumerate(feats):
                    x[:, j] = part.column(f).to_numpy()
                yield name, part.column("id"), x, part.column("label")
        release_arrow_memory()


def read_splits(path: Path, feats: list[str], label_dtype, names: tuple[str, ...] = SPLITS) -> dict[str, Split]:
    """The named splits of a run's splits.parquet, batch by batch (split_batches) into preallocated float32 arrays."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path, pre_buffer=False)
    which = file.read(columns=["split"]).column("split")  # [N], the split column alone
    x = {name: aligned_empty((pc.sum(pc.equal(which, name)).as_py() or 0, len(feats))) for name in names}  # [n, F]
    ids, labels, filled = {name: [] for name in names}, {name: [] for name in names}, dict.fromkeys(names, 0)
    for name, batch_ids, batch_x, batch_labels in split_batches(path, feats, names):
        x[name][filled[name]:filled[name] + len(batch_x)] = batch_x
        filled[name] += len(batch_x)
        # ids as fixed-width numpy strings batch by batch: the Python str objects of a whole split (a million rows:
        # ~60 MB) never exist at once
        ids[name].append(batch_ids.to_numpy(zero_copy_only=False).astype(str))
        labels[name].append(batch_labels.to_numpy(zero_copy_only=False).astype(label_dtype))
    return {name: Split(np.concatenate(ids[name]) if ids[name] else np.array([], str), x[name],
                        np.concatenate(labels[name]) if labels[name] else np.array([], label_dtype)) for name in names}


def train_box(run: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Dataset.box() of a run's train split, read batch by batch (split_batches): the same (lo [F], hi [F])."""
    lo = hi = None  # [F] each, raw
    for _, _, x, _ in split_batches(schema.data_dir(run) / "splits.parquet", ds.feature_names, ("train",)):
        if len(x):
            lo = x.min(axis=0) if lo is None else np.minimum(lo, x.min(axis=0))
            hi = x.max(axis=0) if hi is None else np.maximum(hi, x.max(axis=0))
    return ds.normalised_range(lo, hi)


def load_from_run(run: Path, splits: tuple[str, ...] = SPLITS) -> Dataset:
    """The run's dataset with the named splits' rows (a stage reads only those it uses)."""
    meta = read_dataset_json(run)
    target = Normaliser.from_json(meta["target_scaler"]) if meta["target_scaler"] else None
    rows = read_splits(schema.data_dir(run) / "splits.parquet", meta["feature_names"],
                       tasks.get(meta["task"]).label_dtype(), splits)
    return Dataset(meta["task"], meta["feature_names"], meta["class_names"], meta["label_column"],
                   Normaliser.from_json(meta["scaler"]), target, rows, source=meta["source"],
                   inputs=inputs_lib.from_meta(meta),
                   feature_spec=feature_spec(meta))


def feature_spec(meta: dict) -> FeatureSpec | None:
    """The run's feature specification from its dataset.json (None: sequences, or a run made before it)."""
    return features_lib.from_meta(meta)

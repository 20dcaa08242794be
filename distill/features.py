"""The feature specification: the one place that knows a table's feature columns.

Each feature column gets a kind, inferred from the train split and overridable (`--categorical COL,...`,
`--numeric COL,...`):
- numeric: numbers (text cells that all parse as numbers count too);
- boolean: a bool column, or text `true`/`false` (`yes`/`no`); numbers that are only 0 and 1 stay numeric;
- categorical: text, or integer codes with 2 to MAX_CODES (10) distinct values in the train split other than 0/1
  (bundled tables keep their integer columns numeric: there they are ordered quantities such as pixel intensities or
  an index).
A column that is mostly numbers with some text cells is refused (a typo is likelier than categories): fix the cells or
pass `--categorical COL`.

Missing cells (NaN, null, empty or blank text) under `--missing impute` (the default): a numeric or boolean column is
imputed with the train median (boolean: the train mode), plus a 0/1 `COL_missing` indicator feature when the train
split had missing cells in it; a categorical column's missing cells are a category of their own (`<missing>`, when
the train split had any; otherwise they take the out-of-vocabulary bucket).

Encoding (fitted on the train split only) turns a raw frame into the numeric matrix the networks take: numeric and
boolean columns as one value (plus the indicator), categoricals one-hot over the train vocabulary plus one
out-of-vocabulary bucket (`cut=Ideal`, ..., `cut=<oov>`). The encoded names are the dataset's `feature_names`; the
SavedModel exports' `features` signatures take that ENCODED vector (the z-scores are inside them; `serving_rows` and
the teacher's `predictive_seeded_rows` encode raw rows in their graph, distill.encoder): `bdk predict`, `bdk serve`
and the student and evaluation reading the raw columns of the soft labels (distill.transfer.encoded_inputs) apply this
encoding, read from RUN/data/dataset.json (`feature_spec`), with numpy and pandas only; `decode` is its inverse, which
turns the generated transfer rows into raw columns. A table of numeric columns without missing cells encodes to
itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from distill.errors import BdkError
from distill.training import aligned_empty

KINDS = ("numeric", "categorical", "boolean")
MISSING_POLICIES = ("impute", "drop", "refuse")
MAX_CODES = 10  # an integer column with at most this many distinct train values is categorical (integer codes)
MAX_CATEGORIES = 1000  # default --max-categories
OOV = "<oov>"  # the out-of-vocabulary bucket of a categorical column
MISSING_CATEGORY = "<missing>"  # a categorical column's empty cells, when the train split had some
ROWS_SIGNATURE = "serving_rows"  # every table export's raw-row signature (distill.encoder), beside `serving_default`
MISSING_SUFFIX = "_missing"  # a numeric or boolean column's 0/1 missing-indicator feature
TRUE_WORDS, FALSE_WORDS = frozenset({"true", "yes"}), frozenset({"false", "no"})


def _rows(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def is_text(col: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col))


def missing_mask(col: pd.Series) -> np.ndarray:
    """[n] bool: NaN / None / null cells, and empty or blank text."""
    mask = col.isna().to_numpy().copy()
    if is_text(col):
        mask |= np.array([isinstance(v, str) and not v.strip() for v in col], bool)
    return mask


def as_numbers(col: pd.Series) -> np.ndarray:
    """[n] float64 with NaN for missing cells and for text that is not a number."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype("float64").to_numpy()
    if pd.api.types.is_numeric_dtype(col):
        return pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()
    values = [v.strip() if isinstance(v, str) else v for v in col]
    values = [np.nan if (isinstance(v, str) and not v) or isinstance(v, bool) else v for v in values]
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64").to_numpy()


def _category(v) -> str:
    """A cell as its category name: integral numbers without a decimal point (1 and 1.0 and "1" are one category)."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, float, np.integer, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() else repr(f)
    return str(v).strip()


def as_categories(col: pd.Series) -> np.ndarray:
    """[n] object: category names, None for missing cells."""
    missing = missing_mask(col)
    uniques = {}
    out = np.empty(len(col), dtype=object)
    for i, (v, m) in enumerate(zip(col.to_numpy(dtype=object), missing)):
        if m:
            out[i] = None
            continue
        key = (type(v), v)
        name = uniques.get(key)
        if name is None:
            name = uniques[key] = _category(v)
        out[i] = name
    return out


def as_booleans(col: pd.Series, name: str, what: str = "") -> np.ndarray:
    """[n] float64 0/1, NaN for missing cells; a cell that is not a boolean is a BdkError."""
    missing = missing_mask(col)
    out = np.full(len(col), np.nan)
    bad = []
    for i, (v, m) in enumerate(zip(col.to_numpy(dtype=object), missing)):
        if m:
            continue
        word = _category(v).lower()
        if word in TRUE_WORDS or word == "1":
            out[i] = 1.0
        elif word in FALSE_WORDS or word == "0":
            out[i] = 0.0
        else:
            bad.append(i)
    if bad:
        raise BdkError(f"{what}boolean feature column {name!r} has {col.iloc[bad[0]]!r} in data row {bad[0] + 1}; "
                       "expected true/false or 1/0 (or an empty cell)")
    return out


def _looks_boolean(col: pd.Series, present: np.ndarray) -> bool:
    if pd.api.types.is_bool_dtype(col):
        return True
    values = col[present]
    if pd.api.types.is_numeric_dtype(col):
        return False  # numbers 0/1 stay numeric: one 0/1 feature either way, and noise on it as on any number
    words = {_category(v).lower() for v in values.unique()}
    return bool(words) and words <= (TRUE_WORDS | FALSE_WORDS) and len(words) >= 1


def check_mixed(col: pd.Series, name: str) -> None:
    """A text column whose cells are mostly numbers but not all: one line naming a text cell (fix it, or
    --categorical)."""
    if not is_text(col):
        return
    present = ~missing_mask(col)
    if not present.any():
        return
    numbers = as_numbers(col)
    parsed = present & np.isfinite(numbers)
    text = present & ~np.isfinite(numbers)
    if text.any() and parsed.sum() >= text.sum():
        row = int(np.flatnonzero(text)[0])
        raise BdkError(f"feature column {name!r} mixes numbers and text (e.g. {col.iloc[row]!r} in data row {row + 1}, "
                       f"{int(text.sum())} text cell(s) among {int(present.sum())}): fix those cells (leave a missing value "
                       "empty), or pass "
                       f"--categorical {name} to treat its values as categories")


@dataclass(frozen=True)
class ColumnSpec:
    """One raw feature column: its kind and what the train split says about it."""

    name: str
    kind: str  # numeric | categorical | boolean
    fill: float = 0.0  # numeric: the train median; boolean: the train mode (0/1)
    indicator: bool = False  # numeric/boolean: a 0/1 NAME_missing feature follows (the train split had empty cells)
    vocabulary: tuple[str, ...] = ()  # categorical: train categories (numbers in order, then text); <missing> last if any
    frequencies: tuple[float, ...] = ()  # categorical: each vocabulary entry's share of the train rows

    @property
    def encoded_names(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={v}" for v in self.vocabulary] + [f"{self.name}={OOV}"]
        return [self.name] + ([self.name + MISSING_SUFFIX] if self.indicator else [])

    @property
    def width(self) -> int:
        return len(self.encoded_names)

    def to_json(self) -> dict:
        d: dict = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            d.update(vocabulary=list(self.vocabulary), frequencies=list(self.frequencies))
        else:
            d.update(fill=self.fill, indicator=self.indicator)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ColumnSpec":
        return cls(d["name"], d["kind"], float(d.get("fill", 0.0)), bool(d.get("indicator", False)),
                   tuple(d.get("vocabulary", ())), tuple(float(f) for f in d.get("frequencies", ())))

    def read(self, col: pd.Series, what: str = "") -> np.ndarray:
        """[n] raw cells -> their values, checked: categorical [n] object (category names, None for an empty cell),
        numeric and boolean [n] float64 (NaN for an empty cell). Text in a numeric column, infinities and stray
        boolean text are a BdkError."""
        if self.kind == "categorical":
            return as_categories(col)
        if self.kind == "boolean":
            return as_booleans(col, self.name, what)
        values = as_numbers(col)
        present = ~missing_mask(col)
        bad = np.flatnonzero(present & np.isnan(values))
        if len(bad):
            raise BdkError(f"{what}numeric feature column {self.name!r} has text {col.iloc[bad[0]]!r} in data row "
                           f"{bad[0] + 1}; expected a number or an empty cell")
        inf = np.flatnonzero(np.isinf(values))
        if len(inf):
            raise BdkError(f"{what}feature column {self.name!r} has infinite values in data rows {_rows(inf + 1)}; "
                           "fix or remove those rows")
        return values

    def encode(self, col: pd.Series, what: str = "") -> np.ndarray:
        """[n] raw cells -> [n, width] float32."""
        n = len(col)
        values = self.read(col, what)
        if self.kind == "categorical":
            index = {v: i for i, v in enumerate(self.vocabulary)}
            oov = len(self.vocabulary)
            missing_at = index.get(MISSING_CATEGORY, oov)
            codes = np.fromiter((missing_at if c is None else index.get(c, oov) for c in values), np.int64, n)
            out = np.zeros((n, self.width), np.float32)
            out[np.arange(n), codes] = 1.0
            return out
        gap = np.isnan(values)
        filled = np.where(gap, self.fill, values).astype(np.float32)
        if self.indicator:
            return np.column_stack([filled, gap.astype(np.float32)])
        return filled[:, None]


@dataclass(frozen=True)
class FeatureSpec:
    """The feature columns in order, with their kinds and train statistics; encodes raw frames."""

    columns: tuple[ColumnSpec, ...]
    missing: str = "impute"  # the run's --missing policy (recorded; rows were dropped/refused before fitting)
    notes: tuple[str, ...] = field(default=(), compare=False)  # how each kind was chosen (for the user)

    @property
    def raw_columns(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def encoded_names(self) -> list[str]:
        return [n for c in self.columns for n in c.encoded_names]

    @property
    def is_identity(self) -> bool:
        """Encoding a frame is picking its columns (all numeric, no indicators): raw rows are the export's input."""
        return all(c.kind == "numeric" and not c.indicator for c in self.columns)

    def blocks(self) -> list[tuple[ColumnSpec, slice]]:
        """Each column with its slice of the encoded matrix."""
        out, start = [], 0
        for c in self.columns:
            out.append((c, slice(start, start + c.width)))
            start += c.width
        return out

    def check(self, df: pd.DataFrame, what: str = "") -> None:
        """What every reader of raw rows refuses: lacking feature columns, and (a run trained with --missing refuse)
        empty cells."""
        lacking = [c for c in self.raw_columns if c not in df.columns]
        if lacking:
            raise BdkError(f"{what}the input lacks feature column(s) {lacking}; the model takes {self.raw_columns}")
        if self.missing == "refuse":  # the run refused empty cells: so do its exports' readers
            empty = np.zeros(len(df), bool)
            for c in self.raw_columns:
                empty |= missing_mask(df[c])
            if empty.any():
                raise BdkError(f"{what}missing feature values in data rows {_rows(np.flatnonzero(empty) + 1)} (the run "
                               "was trained with --missing refuse); fill them or drop those rows")

    def read(self, df: pd.DataFrame, what: str = "") -> pd.DataFrame:
        """A raw frame -> its raw columns' values, checked (`check`, `ColumnSpec.read`): categoricals object (category
        names, None for an empty cell), numbers and booleans float64 (NaN for an empty cell). `decode` gives the same
        form."""
        self.check(df, what)
        return raw_frame({c.name: c.read(df[c.name].reset_index(drop=True), what) for c in self.columns}, len(df))

    def encode(self, df: pd.DataFrame, what: str = "", rows: np.ndarray | None = None) -> np.ndarray:
        """A raw frame (the raw columns; others ignored) -> the encoded matrix [n, F] float32, written block by block
        into one aligned array (a million rows: one copy of the matrix, not two); `rows`: the frame's rows (positions)
        to encode, in that order."""
        self.check(df, what)
        out = aligned_empty((len(df) if rows is None else len(rows), len(self.encoded_names)))  # [n, F]
        for c, at in self.blocks():
            out[:, at] = c.encode(df[c.name] if rows is None else df[c.name].iloc[rows], what)
        return out

    def decode(self, x: np.ndarray) -> pd.DataFrame:
        """The encoded matrix [n, F] -> raw columns in `read`'s form (categorical: the block's largest entry, None for
        <missing>, `<oov>` for the bucket, a value outside the vocabulary; numeric/boolean: the value, NaN where the
        indicator is set): encode's inverse on encoded rows."""
        x = np.asarray(x, np.float32)
        out = {}
        for c, at in self.blocks():
            block = x[:, at]
            if c.kind == "categorical":
                names = np.array([*c.vocabulary, OOV], dtype=object)[block.argmax(axis=1)]
                out[c.name] = np.where(names == MISSING_CATEGORY, None, names)
            else:
                values = block[:, 0].astype(np.float64)
                if c.indicator:
                    values = np.where(block[:, 1] > 0.5, np.nan, values)
                out[c.name] = values
        return raw_frame(out, len(x))

    def to_json(self) -> dict:
        return {"missing": self.missing, "columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSpec":
        return cls(tuple(ColumnSpec.from_json(c) for c in d["columns"]), d.get("missing", "impute"))

    def describe(self) -> str:
        """One line for the user: the kinds and how to override them."""
        kinds = {k: [c.name for c in self.columns if c.kind == k] for k in KINDS}
        parts = [f"{len(v)} {k}" + (f" ({', '.join(v[:6])}{', ...' if len(v) > 6 else ''})" if k != "numeric" and v else "")
                 for k, v in kinds.items() if v]
        imputed = [c.name for c in self.columns if c.indicator or (c.kind == "categorical" and MISSING_CATEGORY in c.vocabulary)]
        line = f"features: {', '.join(parts)} -> {len(self.encoded_names)} encoded"
        if imputed:
            line += f"; empty cells in {', '.join(imputed[:6])}{', ...' if len(imputed) > 6 else ''} (--missing {self.missing})"
        return line + "; override with --categorical COL,... / --numeric COL,..."

    # ------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, train: pd.DataFrame, columns: list[str], categorical: tuple[str, ...] = (),
            numeric: tuple[str, ...] = (), max_categories: int = MAX_CATEGORIES, integer_codes: bool = True,
            missing: str = "impute", rows: np.ndarray | None = None) -> "FeatureSpec":
        """Kinds and statistics from the train split's raw columns (overrides win over inference). `rows`: the train
        split's positions in `train` (the whole table), so that only one column at a time is copied."""
        check_overrides(columns, categorical, numeric)
        specs = []
        for name in columns:
            col = (train[name] if rows is None else train[name].iloc[rows]).reset_index(drop=True)
            specs.append(_fit_column(col, name, _kind(col, name, categorical, numeric, integer_codes), max_categories))
        return cls(tuple(specs), missing)


def raw_frame(columns: dict[str, np.ndarray], rows: int) -> pd.DataFrame:
    """Raw column values -> a frame that keeps categoricals as object (None for an empty cell; pandas would make
    text columns strings with NaN)."""
    return pd.DataFrame({name: pd.Series(v, dtype=object if v.dtype == object else v.dtype) for name, v in columns.items()},
                        index=range(rows))


def check_overrides(columns: list[str], categorical: tuple[str, ...], numeric: tuple[str, ...]) -> None:
    for flag, names in (("--categorical", categorical), ("--numeric", numeric)):
        unknown = [c for c in names if c not in columns]
        if unknown:
            raise BdkError(f"{flag}: {unknown} are not feature columns; the feature columns are {columns}")
    both = sorted(set(categorical) & set(numeric))
    if both:
        raise BdkError(f"column(s) {both} are given both as --categorical and --numeric; choose one")


def _kind(col: pd.Series, name: str, categorical, numeric, integer_codes: bool) -> str:
    if name in categorical:
        return "categorical"
    if name in numeric:
        return "numeric"
    present = ~missing_mask(col)
    if _looks_boolean(col, present):
        return "boolean"
    if is_text(col):
        numbers = as_numbers(col)
        if present.any() and np.isfinite(numbers[present]).all():
            col = pd.Series(numbers)  # text that is all numbers: judge it as numbers
        else:
            return "categorical"
    if integer_codes:
        values = pd.to_numeric(col[present], errors="coerce").to_numpy(np.float64)
        values = values[np.isfinite(values)]
        distinct = np.unique(values)
        if 2 <= len(distinct) <= MAX_CODES and np.all(distinct == np.round(distinct)) and not set(distinct) <= {0.0, 1.0}:
            return "categorical"
    return "numeric"


def _order(v: str) -> tuple:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _fit_column(col: pd.Series, name: str, kind: str, max_categories: int) -> ColumnSpec:
    if kind == "categorical":
        cats = as_categories(col)
        missing = np.array([c is None for c in cats], bool)
        counts = pd.Series(cats[~missing], dtype=object).value_counts()
        if len(counts) > max_categories:
            raise BdkError(f"feature column {name!r} has {len(counts)} distinct values in the train split, over "
                           f"--max-categories {max_categories}: drop the column (an id or free text?), or hash it into "
                           "fewer values, or raise --max-categories")
        vocab = sorted(counts.index, key=_order)  # numbers in numeric order, then text alphabetically
        freqs = [counts[v] / len(col) for v in vocab]
        if missing.any():
            vocab.append(MISSING_CATEGORY)
            freqs.append(missing.mean())
        return ColumnSpec(name, kind, vocabulary=tuple(vocab), frequencies=tuple(float(f) for f in freqs))
    values = as_booleans(col, name) if kind == "boolean" else as_numbers(col)
    present = np.isfinite(values)
    if kind == "numeric":
        bad = np.flatnonzero(~missing_mask(col) & np.isnan(values))
        if len(bad):
            raise BdkError(f"feature column {name!r} (--numeric) has text {col.iloc[bad[0]]!r}; fix those cells or "
                           f"pass --categorical {name}")
    if not present.any():
        fill = 0.0
    elif kind == "boolean":
        fill = float(values[present].mean() >= 0.5)
    else:
        fill = float(np.median(values[present]))
    return ColumnSpec(name, kind, fill=fill, indicator=bool(np.isnan(values).any()))


def encoding_spec(spec: FeatureSpec | None) -> FeatureSpec | None:
    """The feature specification when it encodes (text, booleans or missing indicators), else None: then the stored
    features are the encoded ones, which are the raw ones (numbers-only tables) or flattened sequences."""
    return spec if spec is not None and not spec.is_identity else None


def from_meta(meta: dict) -> FeatureSpec | None:
    """A run's feature specification from its dataset.json (None: sequences, or a run made before it)."""
    return FeatureSpec.from_json(meta["feature_spec"]) if meta and meta.get("feature_spec") else None


def named_rows(rows: list, spec: FeatureSpec) -> pd.DataFrame:
    """TF Serving's `instances` as objects with named fields (one per raw column) -> a raw frame; a ValueError names
    the first instance and field that is missing, unknown or not a scalar."""
    wanted = spec.raw_columns
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"instance {i} is not an object; send every instance as {{field: value}} with the "
                             f"fields {wanted}")
        missing = [c for c in wanted if c not in row]
        if missing:
            raise ValueError(f"instance {i} lacks the field {missing[0]!r}; the model takes the fields {wanted} "
                             "(null or \"\" for an empty cell)")
        extra = [c for c in row if c not in wanted]
        if extra:
            raise ValueError(f"instance {i} has the unknown field {extra[0]!r}; the model takes the fields {wanted}")
        for c in wanted:
            if not (row[c] is None or isinstance(row[c], (str, int, float, bool))):
                raise ValueError(f"instance {i}: field {c!r} must be a number, a string, true/false or null")
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=_dtype([r[c] for r in rows])) for c in wanted})


def named_columns(columns: dict, spec: FeatureSpec) -> pd.DataFrame:
    """TF Serving's columnar `inputs` as {field: [values]} (one per raw column) -> a raw frame (ValueError as
    named_rows)."""
    wanted = spec.raw_columns
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"\"inputs\" lacks the field {missing[0]!r}; the model takes the fields {wanted}")
    extra = [c for c in columns if c not in wanted]
    if extra:
        raise ValueError(f"\"inputs\" has the unknown field {extra[0]!r}; the model takes the fields {wanted}")
    lengths = set()
    for c in wanted:
        values = columns[c]
        if not isinstance(values, list) or not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise ValueError(f"\"inputs\": field {c!r} must be a list of numbers, strings, true/false or null")
        lengths.add(len(values))
    if len(lengths) != 1:
        raise ValueError(f"\"inputs\": the fields have different lengths {sorted(lengths)}; send one value per row each")
    return pd.DataFrame({c: pd.Series(columns[c], dtype=_dtype(columns[c])) for c in wanted})


def _dtype(values: list):
    """float64 for a column of JSON numbers and nulls (so 1 and 1.5 and null are one numeric column), else object."""
    if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        return "float64"
    return object

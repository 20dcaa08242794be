"""Stage 2 inputs and outputs: the transfer set the teacher labels, and the reader of its soft labels.

Bayesian dark knowledge distils the teacher's posterior predictive on more inputs than the training
set: the student must learn where the teacher is unsure, and the training points alone sit where
it is sure. The student is queried anywhere, so the transfer set covers the query space at every
distance from the data (built in the normalised feature space, z-scores; sizes per feature in units of the train box's
width or of the train std):
- train: the training inputs (true labels kept);
- perturbed: K copies of each with Gaussian noise, copy j of std `noise[j % len(noise)]` times the feature's unit
  (box width for classes, std for regression: `noise_unit`; multi-scale; at one small scale this is the recipe of
  Korattikara et al. 2015; labels of their origin kept). At most `max_perturbed` rows: on large data a uniform
  draw of the (row, copy) pairs, so the transfer set, the Beam job and the student stay bounded;
- interpolated: M points on segments between two training inputs (mixup-style, lambda ~ U(0, 1); NO_LABEL). Pairs
  `interpolation_pairs="random"`: half between rows of one class and half between rows of any classes, between the
  clusters, where the classes meet; `"neighbour"`: a row and one of its `interpolation_neighbours` nearest training
  rows (any class; in the normalised space, among a reference sample of at most INTERPOLATION_REFERENCE rows), so
  the points stay near the data in any number of dimensions;
- uniform: U points uniform over the training box widened by `margin` times its width on each side
  (NO_LABEL);
- shell: V points uniform in the box widened by `shell_outer` minus the box widened by
  `shell_inner` (NO_LABEL): far from the data, where the teacher should say "I don't know". Its own
  random draws: the evaluation's far-shell rows are never in it;
- unlabeled: optional rows from a user table with the teacher's feature columns (NO_LABEL).
The interpolated, uniform and shell sources have fixed sizes (M, U, V) by default; with a share (`interpolation_share`,
`uniform_share`, `shell_share` > 0) a source has max(its size, share x training rows) rows, the share's part at most
MAX_SHARED_INTERPOLATIONS interpolations or `max_perturbed` uniform or shell rows (`source_rows`). Class tables from
SMALL_TABLE_ROWS training rows on have an interpolation share by default (CLASS_TABLE_DEFAULTS).
Tables with a feature specification (distill.features) are built in the encoded space and then made valid encodings
(`respect_kinds`): perturbed copies keep their origin's category with probability KEEP_CATEGORY (0.9) and otherwise
draw one from the training frequencies, instead of Gaussian noise on one-hot columns, and then take the
out-of-vocabulary bucket with probability PERTURBED_UNSEEN (0.1; unseen values near the data, so that the student
learns the teacher's answer to them, not only in the far shell); interpolations take one parent's
category (the parent of weight lambda, with probability lambda); uniform rows draw categories from the training
frequencies; far-shell rows draw them uniformly over the vocabulary and the out-of-vocabulary bucket (unseen values).
Missing indicators are the origin's (parent's) and the imputed value goes with them.
Sequences (distill.sequences) are flattened rows here (time major); their perturbed copies are also time-warped
(`time_warp` times the copy's noise std: a smooth monotone resampling of the time axis) before the noise, and the
other sources work on the flattened normalised series unchanged (interpolations are mixups of whole sequences).
No validation or test row is ever in the transfer set (every generated point derives from train rows).
Rows are stored with RAW features (the teacher export scales them itself), ids stable across runs. A table whose feature
specification encodes (text, booleans, empty cells: distill.features) stores its raw columns as users have them
(`feature_fields`: text as strings, booleans as bools, numbers as float32, an empty cell as null): the generated rows,
made in the encoded space, are decoded (`FeatureSpec.decode`: a one-hot block to its category, the out-of-vocabulary
bucket to `<oov>`, a set missing indicator to an empty cell), and the exports encode them again inside the graph (the
Beam job) or `encoded_inputs` with the same FeatureSpec (the student, the evaluation): encode(decode(x)) == x on every
generated row, bit for bit. Numbers-only tables and sequences store their (encoded = raw) float32 features as before.

`soft_label_shards` (shard by shard) and `read_soft_labels` (one frame) are how later stages get the Beam job's output: they refuse soft labels that no
longer belong to the run (teacher retrained, classes or features changed).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from distill import schema, tasks
from distill.data import Dataset, _row_list, read_table, write_pieces
from distill.errors import BdkError, read_json
from distill.features import encoding_spec, from_meta

NOISE_UNITS = ("box", "std", "neighbour")
# Copy j's noise scale by unit: box widths and stds per feature; for "neighbour", multiples of the median distance
# from a training row to its nearest other training row, spread evenly over the features (the perturbation's length,
# not each feature's std, is that multiple), so that copies stay near the data in any number of dimensions.
DEFAULT_NOISE = {"box": (0.05, 0.2, 0.5), "std": (0.05, 0.2, 0.5), "neighbour": (0.5, 1.0, 2.0)}
NEIGHBOUR_SAMPLE = 2000  # training rows whose nearest-neighbour distance estimates the median
NEIGHBOUR_REFERENCE = 100_000  # the rows searched for their neighbours (on larger data the estimate is an upper bound)
INTERPOLATION_PAIRS = ("random", "neighbour")
INTERPOLATION_REFERENCE = 50_000  # neighbour pairs: partners among at most this many training rows (a uniform sample)
ROW_GROUP_ROWS = 16_384  # transfer.parquet row groups: Beam splits its read by row group (~1 MB each)


@dataclass(frozen=True)
class TransferConfig:
    perturbations: int | None = None  # K noisy copies of each training input; None: by table (TABLE_DEFAULTS)
    noise: tuple[float, ...] | None = None  # std of copy j's noise: noise[j % len(noise)], in `noise_unit`s (DEFAULT_NOISE)
    noise_unit: str | None = None  # "box" (per feature: the train box's width) | "std" (the train std) | "neighbour"
    # (the nearest-neighbour distance, see DEFAULT_NOISE); None: the task's
    max_perturbed: int = 500_000  # at most this many perturbed rows (a uniform draw of the (row, copy) pairs beyond)
    interpolations: int | None = None  # M points between pairs of training inputs (with a share: at least this many)
    # > 0: M = max(interpolations, share x training rows), the share's part at most MAX_SHARED_INTERPOLATIONS
    # (source_rows); None: by table (CLASS_TABLE_DEFAULTS)
    interpolation_share: float | None = None
    interpolation_pairs: str = "random"  # "random" (half of one class) | "neighbour" (a row and a near neighbour)
    interpolation_neighbours: int = 10  # "neighbour": the partner is one of the row's this many nearest training rows
    uniform: int = 2000  # U points uniform over the widened training box (with a share: at least this many)
    uniform_share: float = 0.0  # > 0: U = max(uniform, share x training rows)
    margin: float = 0.1  # widening of the box on each side, box widths
    time_warp: float = 0.5  # sequences: copy j is also time-warped with strength time_warp * noise[j] (sequences.time_warp)
    shell: int | None = None  # V points in the far shell (with a share: at least this many)
    shell_share: float = 0.0  # > 0: V = max(shell, share x training rows)
    shell_inner: float = 0.25  # the shell lies outside the box widened by this (box widths)...
    shell_outer: float = 3.0  # ...and inside the box widened by this
    unlabeled: str | None = None  # optional .csv/.parquet with the teacher's feature columns
    seed: int = 0

    def __post_init__(self):
        if self.noise is not None:
            object.__setattr__(self, "noise", tuple(float(v) for v in np.atleast_1d(self.noise)))
        if self.noise_unit not in (None, *NOISE_UNITS):
            raise BdkError(f"--noise-unit must be one of {', '.join(NOISE_UNITS)}, got {self.noise_unit!r}")
        for name in ("perturbations", "interpolations", "uniform", "shell", "max_perturbed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise BdkError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.interpolation_pairs not in INTERPOLATION_PAIRS:
            raise BdkError(f"--interpolation-pairs must be one of {', '.join(INTERPOLATION_PAIRS)}, "
                           f"got {self.interpolation_pairs!r}")
        if self.interpolation_neighbours < 1:
            raise BdkError(f"--interpolation-neighbours must be >= 1, got {self.interpolation_neighbours}")
        for name in ("interpolation_share", "uniform_share", "shell_share"):
            if getattr(self, name) is not None and not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise BdkError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")
        for name, value in (("noise", 0.0 if self.noise is None else min(self.noise, default=-1.0)), ("margin", self.margin),
                            ("shell_inner", self.shell_inner), ("shell_outer", self.shell_outer)):
            if not np.isfinite(value) or value < 0:
                raise BdkError(f"--{name.replace('_', '-')} must be finite numbers >= 0, got {getattr(self, name)}")
        if self.shell != 0 and not self.shell_outer > self.shell_inner:
            raise BdkError(f"--shell-outer ({self.shell_outer}) must exceed --shell-inner ({self.shell_inner})")


@dataclass(frozen=True)
class SoftLabelConfig:
    """Stage 2 as a whole: the transfer set plus how the Beam job samples the teacher."""

    transfer: TransferConfig = field(default_factory=TransferConfig)
    samples: int | None = None  # S independent weight draws per row; None: by table (resolved_soft_labels)
    # rows per `predictive` call (the transfer set's row groups; bench/bench_soft_labels.py); None: at most
    # BATCH_ROWS, and at most CALL_ROW_DRAWS / S, since a call holds its S draws' outputs ([S, rows, C] each)
    batch_size: int | None = None

    def __post_init__(self):
        if self.samples is not None and self.samples < 2:
            raise BdkError(f"--samples must be at least 2 (the variance needs two draws), got {self.samples}")
        if self.batch_size is not None and self.batch_size < 1:
            raise BdkError(f"--batch-size must be >= 1, got {self.batch_size}")


# ---------------------------------------------------------------- building the transfer set


def check_feature_names(feature_names: list[str], task: tasks.Task) -> None:
    """Soft-label columns and features share one table: a feature may not take a reserved name."""
    reserved = schema.soft_label_columns([], task.outputs)
    clash = sorted(set(feature_names) & set(reserved))
    if clash:
        raise BdkError(f"feature column(s) {clash} clash with the soft-label columns {reserved}; "
                       "rename them in the dataset and retrain the teacher")


def read_unlabeled(path: str, ds: Dataset) -> tuple[np.ndarray, np.ndarray | pd.DataFrame]:
    """A user table of extra inputs -> (ids [n] str, raw x [n, F] float32), checked against the teacher; a table with
    an encoding feature specification: (ids, its raw columns as read, `FeatureSpec.read`)."""
    df = read_table(str(path))
    if len(df) == 0:
        raise BdkError(f"unlabeled file {path} has no rows")
    return ds.inputs.read(df, f"unlabeled file {path}", lambda table: (*_unlabeled_rows(table, ds, path), None, None),
                          label_column=ds.label_column)[:2]


def _unlabeled_rows(df: pd.DataFrame, ds: Dataset, path: str) -> tuple[np.ndarray, np.ndarray]:
    """A table's unlabeled rows -> (ids [n] str, raw x [n, F] float32), its columns checked against the teacher's."""
    if encoding_spec(ds.feature_spec) is not None:  # raw columns through the run's encoding
        raw = ds.feature_spec.raw_columns
        id_col = next((c for c in schema.ID_COLUMNS if c in df.columns and c not in raw), None)
        missing = [f for f in raw if f not in df.columns]
        extra = [c for c in df.columns if c not in raw and c not in (id_col, ds.label_column)]
        if missing or extra:
            raise BdkError(f"unlabeled file {path}: its columns do not match the teacher's raw features "
                           f"(missing {missing}, unexpected {extra}); it needs exactly {raw}, plus an optional id column")
        x = ds.feature_spec.read(df, f"unlabeled file {path}: ")
        ids = (df[id_col].astype(str) if id_col else pd.Series(np.arange(1, len(df) + 1)).astype(str)).to_numpy()
        if len(set(ids)) != len(ids):
            raise BdkError(f"unlabeled file {path}: id column {id_col!r} has duplicate values; ids must be unique")
        return ids, x
    features = ds.feature_names
    id_col = next((c for c in schema.ID_COLUMNS if c in df.columns), None)
    missing = [f for f in features if f not in df.columns]
    extra = [c for c in df.columns if c not in features and c not in (id_col, ds.label_column)]
    if missing or extra:
        raise BdkError(f"unlabeled file {path}: its columns do not match the teacher's features "
                       f"(missing {missing}, unexpected {extra}); it needs exactly {features}, plus an optional id column")
    for c in features:
        if not (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])):
            raise BdkError(f"unlabeled file {path}: feature column {c!r} is not numeric; encode it as numbers")
    x = df[features].to_numpy(np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise BdkError(f"unlabeled file {path}: missing or non-finite values in data rows "
                       f"{_row_list(np.flatnonzero(bad) + 1)}; fix or remove those rows")
    ids = (df[id_col].astype(str) if id_col else pd.Series(np.arange(1, len(df) + 1)).astype(str)).to_numpy()
    if len(set(ids)) != len(ids):
        raise BdkError(f"unlabeled file {path}: id column {id_col!r} has duplicate values; ids must be unique")
    return ids, x.astype(np.float32)


# The far shell that OOD is scored on (evaluation: test rows vs the shell at the run's seed; the teacher's own
# validation check: validation rows vs the shell at VALIDATION_SHELL_SEED), in widths of the train box.
FAR_SHELL_INNER, FAR_SHELL_OUTER, FAR_SHELL_ROWS = 0.5, 2.0, 500
VALIDATION_SHELL_SEED = 777


def box_shell(lo: np.ndarray, hi: np.ndarray, rows: int, inner: float, outer: float,
              rng: np.random.Generator) -> np.ndarray:
    """[rows, F] normalised points uniform in the box [lo, hi] widened by `outer` times its width on each
    side, minus the box widened by `inner` (rejection sampling; in box units [-outer, 1 + outer]^F minus
    [-inner, 1 + inner]^F)."""
    kept, have = [], 0
    while have < rows:
        u = rng.uniform(-outer, 1 + outer, (rows * 2, len(lo)))  # [2 rows, F] in units of the box
        u = u[((u < -inner) | (u > 1 + inner)).any(axis=1)]
        kept.append(u)
        have += len(u)
    u = np.concatenate(kept)[:rows] if kept else np.zeros((0, len(lo)))
    return (lo + u * (hi - lo)).astype(np.float32)


def far_uniform(ds: Dataset, rows: int, inner: float, outer: float, seed: int) -> np.ndarray:
    """Raw-feature rows uniform in the train box widened by `outer` times its width on each side, minus
    the box widened by `inner` (box_shell with its own seed: the evaluation's or the teacher's validation check).
    Tables with categorical or boolean columns: the shell is over the numeric columns only, and the other columns are
    valid encodings of unseen values (respect_kinds, unseen): categories uniform over the vocabulary and the
    out-of-vocabulary bucket, booleans fair coins (numeric extremes in one-hot columns are no input a user can send)."""
    rng = np.random.default_rng(seed)
    lo, hi = ds.box()  # [F] each, normalised
    spec = encoding_spec(ds.feature_spec)
    if spec is None:
        return ds.denormalise(box_shell(lo, hi, rows, inner, outer, rng))
    numeric = [at.start for c, at in spec.blocks() if c.kind == "numeric"]
    z = np.tile(((lo + hi) / 2).astype(np.float32), (rows, 1))  # [rows, F]; non-numeric columns are set below
    if numeric:
        z[:, numeric] = box_shell(lo[numeric], hi[numeric], rows, inner, outer, rng)
    return respect_kinds(ds.denormalise(z), spec, ds["train"].x, np.random.default_rng([seed, KIND_SEED]), unseen=True)


def neighbour_distance(z: np.ndarray, rng: np.random.Generator, sample: int = NEIGHBOUR_SAMPLE) -> float:
    """The median distance from a training row [n, F] to its nearest other training row (over a sample of rows)."""
    from sklearn.neighbors import NearestNeighbors

    if len(z) < 2:
        return 1.0
    rows = rng.choice(len(z), min(sample, len(z)), replace=False)
    # Neighbours among at most NEIGHBOUR_REFERENCE rows (the sampled ones included): a million rows need not be indexed
    reference = np.union1d(rows, rng.choice(len(z), min(NEIGHBOUR_REFERENCE, len(z)), replace=False))
    distances, _ = NearestNeighbors(n_neighbors=2).fit(z[reference]).kneighbors(z[rows])  # [s, 2]: itself, neighbour
    d = float(np.median(distances[:, 1]))
    return d if d > 0 else 1.0


def _pairs(y: np.ndarray, rows: int, same_class: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`rows` pairs of training-row indices (a, b): two rows of one class if `same_class`, else any two."""
    a = rng.integers(0, len(y), rows)
    if not same_class:
        return a, rng.integers(0, len(y), rows)
    b = np.empty_like(a)
    for c in np.unique(y[a]):
        members = np.flatnonzero(y == c)
        at = np.flatnonzero(y[a] == c)
        b[at] = members[rng.integers(0, len(members), len(at))]
    return a, b


def neighbour_pairs(z: np.ndarray, rows: int, neighbours: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`rows` pairs of training-row indices (a, b) for z [n, F]: a uniform over a reference sample of at most
    INTERPOLATION_REFERENCE rows, b uniform among a's `neighbours` nearest other rows of that sample (Euclidean, in
    the space of z). Only the anchors drawn are searched for, so the cost is at most (anchors x reference) distances."""
    from sklearn.neighbors import NearestNeighbors

    n = len(z)
    if rows == 0 or n < 2:
        a = rng.integers(0, max(n, 1), rows)
        return a, a.copy()
    reference = np.sort(rng.choice(n, min(n, INTERPOLATION_REFERENCE), replace=False))  # [R] training-row indices
    k = min(neighbours, len(reference) - 1)
    anchor = rng.integers(0, len(reference), rows)  # [M] positions in the reference
    queried, inverse = np.unique(anchor, return_inverse=True)
    _, found = NearestNeighbors(n_neighbors=k + 1).fit(z[reference]).kneighbors(z[reference[queried]])  # [Q, k + 1]
    # Each row's k nearest others: the row itself moved last (it is usually first; exact duplicates may displace it)
    order = np.argsort(found == queried[:, None], axis=1, kind="stable")  # [Q, k + 1]
    others = np.take_along_axis(found, order, axis=1)[:, :k]  # [Q, k] positions in the reference
    partner = others[inverse, rng.integers(0, k, rows)]  # [M] positions in the reference
    return reference[anchor], reference[partner]


# Transfer-set defaults (the fields left None) by table. Small class tables (fewer than SMALL_TABLE_ROWS training rows)
# get a large, densely labelled transfer set, cheap there; larger tables, regression and sequences the plain one.
# Chosen on validation, KL(teacher || student) on the validation rows and on the teacher stage's validation shell:
# - the far shell (experiments/shell-sweep): on the suite (iris, wine, breast cancer, digits x seeds 0-2; 90-1,078
#   training rows) the mean shell KL was 0.0318 with 2,000 points, 0.0275 with 8,000, 0.0252 with 32,000. On the 10k
#   scaling problem (6,400 training rows, 50 features) 32,000 points made the student worse on validation (NLL
#   0.9721 -> 0.9834, the teacher's 0.9733): its (64, 64) network spent capacity off the data that the data needs;
# - 40 perturbed copies and 20,000 interpolations with 1,000 draws per soft label (experiments/small-table-sweep, the
#   KL from a 4,000-draw teacher): mean validation KL 0.0028 -> 0.0011 (digits 0.0102 -> 0.0042), shell KL 0.0132 ->
#   0.0062 (digits 0.032 -> 0.018), every dataset better or level;
# - then 80 copies and 40,000 interpolations (same sweep, the suite's teachers of commit 346160c): validation KL on
#   digits 0.0038 -> 0.0021 (better on each seed), its validation NLL gap to the teacher 0.0032 -> -0.0004; the
#   other datasets level; digits' shell KL 0.0175 -> 0.0189 (two seeds worse, one better). Digits' student trains
#   in 27 s instead of 16.
# The bound sits between the measured sizes; tables in between were not measured.
# - larger class tables (from SMALL_TABLE_ROWS training rows) get interpolations in proportion to their training rows,
#   CLASS_INTERPOLATION_SHARE of them, at most MAX_SHARED_INTERPOLATIONS (experiments/interpolation-share, the scaling
#   problem's validation rows against a 4,000-draw teacher, seeds 0-2 at 10k rows and 0-1 at 100k): 2,000 points
#   left the student's validation KL at 0.038 (10k) and 0.043 (100k), and its validation NLL 0.025 and 0.013 above
#   the teacher's; at a share of 10 (64,000 points at 10k; 200,000, the cap, at 100k) 0.014 and 0.007, 0.010 and
#   -0.003 (20,000 points at 10k: 0.017, 0.011; 200,000: 0.008, 0.009 at 2.6x the student's time). Regression tables
#   were level (Boston, Concrete, Friedman 20k at a share of 12.5: NLL gap 0.0069 -> 0.0058, far-shell KL 0.062 ->
#   0.063), so they keep the fixed count. The cap keeps the million-row pipeline in its time budget (200,000 more
#   rows for the Beam job).
SMALL_TABLE_ROWS = 2_500
CLASS_INTERPOLATION_SHARE = 10.0
TABLE_DEFAULTS = dict(perturbations=10, interpolations=2000, interpolation_share=0.0, shell=2000)
CLASS_TABLE_DEFAULTS = {**TABLE_DEFAULTS, "interpolation_share": CLASS_INTERPOLATION_SHARE}
SMALL_TABLE_DEFAULTS = dict(perturbations=80, interpolations=40_000, interpolation_share=0.0, shell=32_000)
MAX_SHARED_INTERPOLATIONS = 200_000
# The teacher's draws per soft label. Off the data its draws disagree, and the mean of 100 of them is a noisy target:
# on digits' far shell two 100-draw estimates differ by a KL of 0.046, and the student copies that noise. 1,000 draws
# on the small tables above (shell KL 0.0132 -> 0.0065 at the plain perturbations and interpolations); 1,000 on the
# 1M scaling problem's 1.03M transfer rows would cost ~10 min.
SAMPLES, SMALL_TABLE_SAMPLES = 100, 1000
# Rows per call of the Beam job: 16,384 at 100 draws. At 1,000 draws a call of 16,384 rows held 1,000 x 16,384 x C
# floats per output (Iris run: 1.0 -> 1.7 GB); the rows shrink so that rows x draws stays at 16,384 x 100 (the
# soft labels then differ from 16,384-row calls' in their last bits only: < 1e-6 in 0.04% of the values).
BATCH_ROWS, CALL_ROW_DRAWS = 16_384, 1_638_400


def small_class_table(task: tasks.Task, ds: Dataset) -> bool:
    """A class table of fewer than SMALL_TABLE_ROWS training rows: a large transfer set with many draws is cheap."""
    return task.has_classes and ds.inputs.has_shell and len(ds["train"]) < SMALL_TABLE_ROWS


def resolved_transfer(cfg: TransferConfig, task: tasks.Task, ds: Dataset) -> TransferConfig:
    """The fields left None (perturbations, interpolations and their share, shell) set for this table:
    SMALL_TABLE_DEFAULTS or CLASS_TABLE_DEFAULTS for tables of classes (by their training rows), else TABLE_DEFAULTS."""
    class_table = task.has_classes and ds.inputs.has_shell
    defaults = (TABLE_DEFAULTS if not class_table else SMALL_TABLE_DEFAULTS if small_class_table(task, ds)
                else CLASS_TABLE_DEFAULTS)
    return replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})


def resolved_soft_labels(cfg: SoftLabelConfig, task: tasks.Task, ds: Dataset) -> SoftLabelConfig:
    """The transfer set resolved (resolved_transfer), S (SMALL_TABLE_SAMPLES on small class tables, else SAMPLES) and
    the rows per call (at most BATCH_ROWS and CALL_ROW_DRAWS / S)."""
    samples = cfg.samples if cfg.samples is not None else SMALL_TABLE_SAMPLES if small_class_table(task, ds) else SAMPLES
    batch = cfg.batch_size if cfg.batch_size is not None else max(1, min(BATCH_ROWS, CALL_ROW_DRAWS // samples))
    return replace(cfg, samples=samples, batch_size=batch, transfer=resolved_transfer(cfg.transfer, task, ds))


def source_rows(count: int, share: float, n: int, cap: int) -> int:
    """A source's size: `count` without a share; with one, max(count, share x n rows), the share's part at most `cap`."""
    return count if share <= 0 else max(count, min(int(round(share * n)), cap))


KEEP_CATEGORY = 0.9  # a perturbed row keeps its origin's category (and boolean) with this probability
PERTURBED_UNSEEN = 0.1  # ...and takes the out-of-vocabulary bucket with this one: unseen values near the data
KIND_SEED = 25  # the stream of the categorical, boolean and missing-indicator draws


def mix_rng_pick(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """[M] bool: take parent a (weight lambda in the mix) with probability lambda."""
    return rng.uniform(0.0, 1.0, len(lam)) < lam


def respect_kinds(x: np.ndarray, spec, train_x: np.ndarray, rng: np.random.Generator, origin: np.ndarray | None = None,
                  pick: np.ndarray | None = None, unseen: bool = False) -> np.ndarray:
    """Rows made by numeric operations in the encoded space [n, F] -> valid encodings of the feature specification
    (distill.features): each categorical block one-hot, booleans 0/1, missing indicators 0/1 (with the imputed value
    where set). Numeric values are kept.
    - origin [n] (perturbed copies: their train row): keep the origin's category / boolean with prob KEEP_CATEGORY,
      else resample it from the training frequencies; then the OOV bucket with prob PERTURBED_UNSEEN; the missing
      indicator is the origin's;
    - pick [n] (interpolations: the parent chosen): that parent's category, boolean and indicator;
    - neither (uniform box rows): drawn from the training frequencies; `unseen` (the far shell): categories uniform
      over the vocabulary and the out-of-vocabulary bucket, booleans fair coins, no missing values."""
    x = np.array(x, np.float32, copy=True)
    n = len(x)
    source = origin if origin is not None else pick
    for c, at in spec.blocks():
        if c.kind == "categorical":
            width = at.stop - at.start
            freq = train_x[:, at].astype(np.float64).mean(axis=0)
            freq = freq / freq.sum() if freq.sum() > 0 else np.full(width, 1.0 / width)
            if unseen and source is None:
                codes = rng.integers(0, width, n)
            else:
                drawn = rng.choice(width, size=n, p=freq)
                if source is None:
                    codes = drawn
                else:
                    codes = train_x[source, at].argmax(axis=1)
                    if origin is not None:
                        codes = np.where(rng.uniform(0.0, 1.0, n) < KEEP_CATEGORY, codes, drawn)
                        unseen_here = rng.uniform(0.0, 1.0, n) < PERTURBED_UNSEEN  # near the data, an unseen value
                        codes = np.where(unseen_here, width - 1, codes)  # the block's last column: the OOV bucket
            x[:, at] = np.eye(width, dtype=np.float32)[codes]
            continue
        value = at.start
        if c.kind == "boolean":
            share = float(train_x[:, value].mean())
            drawn = (rng.uniform(0.0, 1.0, n) < (0.5 if unseen else share)).astype(np.float32)
            if source is None:
                x[:, value] = drawn
            else:
                own = train_x[source, value]
                x[:, value] = own if origin is None else np.where(rng.uniform(0.0, 1.0, n) < KEEP_CATEGORY, own, drawn)
        if c.indicator:
            flag = at.start + 1
            if source is not None:
                gap = train_x[source, flag] > 0.5
            elif unseen:
                gap = np.zeros(n, bool)
            else:
                gap = rng.uniform(0.0, 1.0, n) < float(train_x[:, flag].mean())
            x[:, flag] = gap.astype(np.float32)
            x[gap, value] = c.fill
    return x


def build_transfer_set(cfg: TransferConfig, ds: Dataset) -> pd.DataFrame:
    """The transfer set as a table: TRANSFER_KEYS then the stored features (`feature_fields`; see the module
    docstring)."""
    task = tasks.get(ds.task)
    check_feature_names([f.name for f in feature_fields(ds.feature_names, ds.feature_spec)], task)
    parts = generated_parts(cfg, ds, task)
    if cfg.unlabeled:
        ids, x = read_unlabeled(cfg.unlabeled, ds)
        parts.append((np.char.add("unlabeled:", ids), "unlabeled", np.full(len(ids), task.no_label), x))
    return _table(parts, ds, task)


def generated_parts(cfg: TransferConfig, ds: Dataset, task: tasks.Task) -> list[tuple]:
    """The train rows and the generated sources, each (ids [n], source, labels [n], encoded rows [n, F] in raw units):
    made in the encoded space, valid encodings of the feature specification (`respect_kinds`). The sizes left None
    are the table's (resolved_transfer)."""
    cfg = resolved_transfer(cfg, task, ds)
    train = ds["train"]
    z = ds.scaled("train").reshape(len(train), -1)  # [n, F] normalised (sequences: flattened, time major)
    n, f = z.shape
    m, n_uniform, n_shell = (source_rows(count, share, n, cap) for count, share, cap in
                             ((cfg.interpolations, cfg.interpolation_share, MAX_SHARED_INTERPOLATIONS),
                              (cfg.uniform, cfg.uniform_share, cfg.max_perturbed),
                              (cfg.shell, cfg.shell_share, cfg.max_perturbed)))
    # One generator per source, so changing one source's size leaves the others' rows (and ids) unchanged.
    perturb_rng, mix_rng, uniform_rng, shell_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(4))

    lo, hi = ds.box(z)  # [F] each, normalised
    noisy, rows, copies = _perturbed(cfg, ds, task, z, lo, hi, perturb_rng)
    mixed, a, b, lam = _interpolated(cfg, task, train.y, z, m, mix_rng)
    widen = cfg.margin * (hi - lo)
    box = lo - widen + uniform_rng.uniform(0.0, 1.0, size=(n_uniform, f)) * (hi - lo + 2 * widen)  # [U, F]
    shell = box_shell(lo, hi, n_shell, cfg.shell_inner, cfg.shell_outer, shell_rng)  # [V, F]
    perturbed_x, mixed_x, box_x, shell_x = (ds.denormalise(v) for v in (noisy, mixed, box, shell))
    spec = encoding_spec(ds.feature_spec)
    if spec is not None:  # one-hot blocks, booleans, missing indicators: valid encodings
        kind_rng = np.random.default_rng([cfg.seed, KIND_SEED])  # its own stream: numeric rows stay as they were
        perturbed_x = respect_kinds(perturbed_x, spec, train.x, kind_rng, origin=rows)
        parent = np.where(mix_rng_pick(kind_rng, lam[:, 0]), a, b)  # the parent with weight lambda, with prob lambda
        mixed_x = respect_kinds(mixed_x, spec, train.x, kind_rng, pick=parent)
        box_x = respect_kinds(box_x, spec, train.x, kind_rng)
        shell_x = respect_kinds(shell_x, spec, train.x, kind_rng, unseen=True)
    none = task.no_label
    parts = [
        (np.char.add("train:", train.ids.astype(str)), "train", train.y, train.x),
        (np.char.add(np.char.add("perturbed:", train.ids[rows].astype(str)), np.char.add(":", copies.astype(str))),
         "perturbed", train.y[rows], perturbed_x),
        (np.array([f"interpolated:{i}" for i in range(m)], dtype=str), "interpolated", np.full(m, none), mixed_x),
        (np.array([f"uniform:{i}" for i in range(n_uniform)], dtype=str), "uniform", np.full(n_uniform, none), box_x),
        (np.array([f"shell:{i}" for i in range(n_shell)], dtype=str), "shell", np.full(n_shell, none), shell_x),
    ]
    return parts


def _perturbed(cfg: TransferConfig, ds: Dataset, task, z: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K noisy copies of the normalised train rows z [n, F] (a uniform draw of the (row, copy) pairs beyond
    max_perturbed) -> (rows [P, F], their train row [P], their copy number [P])."""
    n, f = z.shape
    k = cfg.perturbations
    noise_unit = cfg.noise_unit or task.noise_unit
    unit = {"box": lambda: hi - lo, "std": lambda: z.std(axis=0),
            "neighbour": lambda: np.full(f, neighbour_distance(z, rng) / np.sqrt(f))}[noise_unit]()  # [F]
    scales = np.resize(np.asarray(cfg.noise or DEFAULT_NOISE[noise_unit], np.float32), k)  # [K]: copy j's noise std, in units
    if n * k <= cfg.max_perturbed:  # every (row, copy) pair: p = row * K + copy
        pairs = np.arange(n * k)
        eps = rng.standard_normal((n, k, f)).reshape(n * k, f)  # [n K, F]
    else:  # bounded: a uniform draw of the pairs (large data: the student needs coverage, not K copies of every row)
        pairs = np.sort(rng.choice(n * k, cfg.max_perturbed, replace=False))
        eps = rng.standard_normal((len(pairs), f))
    rows, copies = pairs // max(k, 1), pairs % max(k, 1)  # [P] each
    base = z[rows]  # [P, F]
    base = ds.inputs.warp(base, cfg.time_warp * scales[copies], rng)  # sequences: each copy's time axis warped a little
    return (base + (scales[copies, None] * unit[None, :]) * eps).astype(np.float32), rows, copies


def _interpolated(cfg: TransferConfig, task, y: np.ndarray, z: np.ndarray, m: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """M mixups lam z[a] + (1 - lam) z[b] -> (rows [M, F], a [M], b [M], lam [M, 1]): b among a's nearest training
    rows, or a random row (classes: half of them of a's class)."""
    if cfg.interpolation_pairs == "neighbour":  # a row and one of its nearest training rows (any class)
        a, b = neighbour_pairs(z, m, cfg.interpolation_neighbours, rng)
    else:
        same = m // 2 if task.has_classes else 0
        a_same, b_same = _pairs(y, same, True, rng)
        a_any, b_any = _pairs(y, m - same, False, rng)
        a, b = np.concatenate([a_same, a_any]), np.concatenate([b_same, b_any])  # [M] each
    lam = rng.uniform(0.0, 1.0, (m, 1))
    return lam * z[a] + (1 - lam) * z[b], a, b, lam


def _table(parts: list, ds: Dataset, task) -> pd.DataFrame:
    """(ids, source, labels, rows) per source -> one frame: id, source, label, then the stored features
    (`feature_fields`): rows are encoded [n, F] (decoded for a table whose specification encodes) or raw frames.
    Encoded rows that are stored as they are (numbers-only tables, sequences) are copied once, into one float32 block."""
    spec = encoding_spec(ds.feature_spec)
    if spec is None and not any(isinstance(x, pd.DataFrame) for *_, x in parts):
        x = np.concatenate([np.asarray(x, np.float32).reshape(len(ids), ds.num_features) for ids, _, _, x in parts])
        table = pd.DataFrame(x, columns=ds.feature_names, copy=False)  # [N, F]
    else:
        table = pd.concat([x.reset_index(drop=True) if isinstance(x, pd.DataFrame) else spec.decode(x)
                           for *_, x in parts], ignore_index=True)  # raw columns as read, or decoded
    table.insert(0, "id", pd.array(np.concatenate([np.asarray(ids, object) for ids, _, _, _ in parts]), dtype=object))
    table.insert(1, "source", np.repeat([source for _, source, _, _ in parts], [len(ids) for ids, _, _, _ in parts]))
    table.insert(2, "label", np.concatenate([np.asarray(labels, task.label_dtype()) for _, _, labels, _ in parts]))
    assert table["id"].is_unique, "transfer ids must be unique"
    return table


RAW_ARROW_TYPES = {"categorical": "string", "boolean": "bool", "numeric": "float32"}  # a raw column's stored type


def feature_fields(feature_names: list[str], spec=None) -> list:
    """The input columns of the transfer set and the soft labels, as Arrow fields: the raw columns of a table whose
    feature specification encodes (text as string, booleans as bool, numbers as float32; an empty cell is null), else
    `feature_names` as float32."""
    import pyarrow as pa

    spec = encoding_spec(spec)
    if spec is None:
        return [pa.field(name, pa.float32()) for name in feature_names]
    return [pa.field(c.name, pa.type_for_alias(RAW_ARROW_TYPES[c.kind])) for c in spec.columns]


def meta_fields(meta: dict) -> list:
    """`feature_fields` of a run from its dataset.json."""
    return feature_fields(meta["feature_names"], from_meta(meta))


def _fields(features: list) -> list:
    """Feature names (float32) or Arrow fields -> Arrow fields."""
    import pyarrow as pa

    return [f if isinstance(f, pa.Field) else pa.field(f, pa.float32()) for f in features]


def encoded_inputs(frame: pd.DataFrame, ds: Dataset) -> np.ndarray:
    """Transfer or soft-label rows (a frame with the stored features, `feature_fields`) -> the encoded inputs [n, F]
    float32 that the exports' `features` take: the run's FeatureSpec encodes raw columns (the one encoder of the
    dataset, `bdk predict` and `--unlabeled`)."""
    spec = encoding_spec(ds.feature_spec)
    if spec is None:
        return frame[ds.feature_names].to_numpy(np.float32)
    return spec.encode(frame, "soft labels: ")


def transfer_arrow_schema(features: list, task: tasks.Task):
    """id, source, label, then the features: names (float32) or Arrow fields (`feature_fields`)."""
    import pyarrow as pa

    label = pa.int64() if task.label_dtype() is np.int64 else pa.float32()
    return pa.schema([("id", pa.string()), ("source", pa.string()), ("label", label)] + _fields(features))


def output_arrays(soft: pd.DataFrame, task: tasks.Task) -> dict[str, np.ndarray]:
    """The teacher's outputs in (rows of) a soft-label frame as arrays: vector outputs [N, C], the rest [N]."""
    return {k: np.stack(soft[k].to_numpy()) if k in task.vector_outputs else soft[k].to_numpy() for k in task.outputs}


def soft_label_arrow_schema(features: list, task: tasks.Task):
    """The soft-label shards' schema: the transfer columns, then the teacher's predictive for S draws
    (the task's outputs: list<float> [C] for vector outputs, float otherwise) and num_samples."""
    import pyarrow as pa

    outputs = [pa.field(name, pa.list_(pa.float32()) if name in task.vector_outputs else pa.float32())
               for name in task.outputs]
    return pa.schema(list(transfer_arrow_schema(features, task)) + outputs + [pa.field("num_samples", pa.int32())])


def write_transfer_set(table: pd.DataFrame, path: Path, features: list, task: tasks.Task,
                       row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """Parquet in row groups of `row_group_rows` (the Beam job's batch: it reads one row group per
    batch), so parallel runners read it in parallel splits. `features`: names (float32) or `feature_fields`."""
    fields = _fields(features)
    columns, arrow_schema = schema.transfer_columns([f.name for f in fields]), transfer_arrow_schema(fields, task)
    write_pieces(path, (table.iloc[at:at + row_group_rows][columns] for at in range(0, max(len(table), 1), row_group_rows)),
                 arrow_schema)  # a row group at a time: no Arrow copy of the set
    return Path(path)


# ---------------------------------------------------------------- the teacher export's identity


def soft_labels_digest(run: Path) -> str:
    """sha256 of RUN/soft_labels/manifest.json: ties a student to the soft labels it learned from."""
    return hashlib.sha256(schema.soft_labels_manifest(Path(run)).read_bytes()).hexdigest()


def export_fingerprint(export: str | Path) -> str:
    """sha256 over the export's files (relative path, size, bytes; in path order).

    Soft labels record it; retraining or re-exporting the teacher changes it, which is how a reader
    knows the soft labels are stale. gs:// and other Beam filesystems work too (for Dataflow runs).
    """
    root = str(export).rstrip("/")
    if "://" in root:
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        files = [(m.path, m.size_in_bytes) for m in FileSystems.match([root + "/**"])[0].metadata_list]
        opener = lambda p: FileSystems.open(p, compression_type=CompressionTypes.UNCOMPRESSED)  # noqa: E731
    else:
        files = [(str(p), p.stat().st_size) for p in Path(root).rglob("*") if p.is_file()]
        opener = lambda p: open(p, "rb")  # noqa: E731
    if not files:
        raise BdkError(f"teacher export {root} has no files; run `bdk teacher` first")
    digest = hashlib.sha256()
    for path, size in sorted(files):
        digest.update(f"{path[len(root) + 1:]}\0{size}\0".encode())
        with opener(path) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- reading the soft labels


def soft_label_shards(run: Path):
    """The soft-label shards of a run, one Arrow table each, in transfer-set order (shard i labels the transfer
    set's row group i), with every check of `read_soft_labels`; one shard in memory at a time.

    Raises BdkError when they are missing or stale (teacher export, classes or features changed).
    """
    import pyarrow.parquet as pq

    run = Path(run)
    out = schema.soft_labels_dir(run)
    again = f"rerun `bdk soft-labels --run {run}`"
    if not schema.soft_labels_manifest(run).exists():
        raise BdkError(f"{run} has no soft labels; run `bdk soft-labels --run {run}` first")
    manifest = read_json(schema.soft_labels_manifest(run))
    dataset_json = schema.data_dir(run) / "dataset.json"
    if not dataset_json.exists():
        raise BdkError(f"{run} has no dataset; run `bdk teacher --out {run}` first")
    meta = read_json(dataset_json)
    for key in ("class_names", "feature_names"):
        if list(manifest.get(key, [])) != list(meta[key]):
            raise BdkError(f"the soft labels in {out} were made for {key} {manifest.get(key)} but {dataset_json} has "
                           f"{meta[key]}; {again}")
    export = schema.teacher_export(run)
    if not (export / "saved_model.pb").exists():
        raise BdkError(f"{run} has no teacher export at {export}; run `bdk teacher --out {run}` first")
    if export_fingerprint(export) != manifest.get("teacher_fingerprint"):
        raise BdkError(f"the teacher export {export} changed since the soft labels were made (teacher retrained?); {again}")
    shards = [out / name for name in manifest["shards"]]
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise BdkError(f"soft-label shards {missing} listed in {schema.soft_labels_manifest(run)} are missing; {again}")
    task = tasks.get(meta.get("task", "classification"))
    columns = schema.soft_label_columns([f.name for f in meta_fields(meta)], task.outputs)
    transfer = pq.ParquetFile(out / schema.TRANSFER_FILE)
    if transfer.num_row_groups != len(shards):
        raise BdkError(f"soft labels in {out} do not match its transfer set row for row; {again}")

    def tables():
        for i, shard in enumerate(shards):
            table = pq.read_table(shard)
            lacking = [c for c in columns if c not in table.column_names]
            if lacking:  # made by an older teacher export (e.g. before mean_log_probs): its outputs differ
                raise BdkError(f"soft labels in {out} lack the columns {lacking}: the teacher export predates them; retrain "
                               f"it with `bdk teacher --out {run} --overwrite`, then rerun `bdk soft-labels --run {run}`")
            if not table.column("id").equals(transfer.read_row_group(i, columns=["id"]).column("id")):
                raise BdkError(f"soft labels in {out} do not match its transfer set row for row; {again}")
            yield table.select(columns)

    return tables(), manifest, task, len(meta["class_names"])


def shard_arrays(table, task: tasks.Task, num_classes: int) -> dict[str, np.ndarray]:
    """One soft-label table's outputs as arrays (vector outputs [n, C] float32, the rest [n]), no Python objects."""
    out = {}
    for name in task.outputs:
        column = table.column(name).combine_chunks()
        if name in task.vector_outputs:
            values = column.flatten().to_numpy(zero_copy_only=False)
            if len(values) != num_classes * len(table):
                raise BdkError(f"soft labels: {name} rows do not all have {num_classes} classes; rerun `bdk soft-labels`")
            out[name] = values.astype(np.float32).reshape(len(table), num_classes)  # [n, C]
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def sample_soft_labels(run: Path, sources: tuple[str, ...], rows: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """At most `rows` soft-label rows of each source (a seeded uniform draw, in file order), one shard in memory at a
    time: what the evaluation scores, without a frame of the whole transfer set."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = schema.soft_labels_dir(Path(run))
    transfer = pq.ParquetFile(out / schema.TRANSFER_FILE)
    source = transfer.read(columns=["source"]).column("source")  # [N], file order (Arrow: no Python strings)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(source), bool)
    for src in sources:
        at = np.flatnonzero(pc.equal(source, src).to_numpy(zero_copy_only=False))
        keep[np.sort(rng.choice(at, rows, replace=False)) if len(at) > rows else at] = True
    shards, _, task, num_classes = soft_label_shards(run)
    parts, start = [], 0
    for table in shards:
        mine = keep[start:start + len(table)]
        start += len(table)
        parts.append(table.filter(pa.array(mine)))
    frame = _soft_label_frame(parts, run, task, num_classes)
    return {src: frame[frame["source"] == src].reset_index(drop=True) for src in sources}


def read_soft_labels(run: Path) -> tuple[pd.DataFrame, dict]:
    """The soft-label dataset of a run as one frame, in transfer-set order, and its manifest (stages that can work
    shard by shard use `soft_label_shards`).

    Columns: schema.soft_label_columns(feature_names, task.outputs). A vector output (classes: `probs`,
    `variance`) holds one float32 [C] row of an [N, C] array each: `np.stack(df["probs"].to_numpy())`
    gives the [N, C] array back; regression outputs (mean, variance, epistemic_variance) are floats.
    """
    shards, manifest, task, num_classes = soft_label_shards(run)
    return _soft_label_frame(list(shards), run, task, num_classes), manifest


def _soft_label_frame(tables: list, run: Path, task: tasks.Task, num_classes: int) -> pd.DataFrame:
    """Soft-label Arrow tables as one frame (their schema's columns even without tables); vector outputs as row
    views of one [N, C] array each."""
    import pyarrow as pa

    if not tables:
        meta = read_json(schema.data_dir(Path(run)) / "dataset.json")
        tables = [soft_label_arrow_schema(meta_fields(meta), task).empty_table()]
    table = pa.concat_tables(tables)
    df = table.drop_columns(list(task.vector_outputs)).to_pandas()
    for name, matrix in shard_arrays(table, task, num_classes).items():
        if name in task.vector_outputs:
            df[name] = pd.Series(list(matrix), index=df.index, dtype=object)  # row views of the [N, C] array
    return df[table.column_names]

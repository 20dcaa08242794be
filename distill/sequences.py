"""Sequence data: [time, channels] series read, checked and turned into rows the rest of the pipeline carries.

A sequence dataset is stored like a table whose features are the flattened series (`CHANNEL@tINDEX`, time
major): the run folder, the transfer set, the Beam job and the soft-label shards need no second layout.
The models and exports see [batch, time, channels] (`Dataset.normalise` reshapes), and the normaliser is
per channel (z-scores over every time step of the train split), so exports take raw sequences.

Sources:
- a CSV/Parquet table in long format: one row per (series, time step) with a series id column, a time
  column (sorts the steps), the channel columns and the label (constant within a series);
- a NumPy `.npz` with `x` [N, T, C] and `y` [N] (optional `ids` [N], `channels` [C]);
- bundled: `italy_power` (UCR ItalyPowerDemand, 1,096 days x 24 hours, 2 seasons; data/README.md) and
  `regimes` (synthetic, seeded: two-channel oscillators of three periods, `regime_sequences`).
Every series has the same length (ragged lengths are refused with the series named).

`shifted_regime` makes the out-of-distribution sequences the report scores: in-regime sequences whose
second half switches to a regime never seen in training (a fast, large oscillation with a drift).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from distill.errors import BdkError

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
BUNDLED_SEQUENCES = {"italy_power": DATA_ROOT / "italy_power_demand.csv", "regimes": "synthetic:regimes"}
SERIES_COLUMNS = ("series", "series_id")  # the long table's series id column when none is given
TIME_COLUMNS = ("time", "t", "step")  # its time column when none is given
REGIME_PERIODS = (6.0, 12.0, 24.0)  # the synthetic classes' oscillation periods (time steps)


def is_sequence_source(source: str, series_column: str | None) -> bool:
    return source in BUNDLED_SEQUENCES or series_column is not None or str(source).lower().endswith(".npz")


def flat_names(channels: list[str], length: int) -> list[str]:
    """The flattened feature names, time major: c@t0 for every channel, then c@t1, ..."""
    return [f"{c}@t{t}" for t in range(length) for c in channels]


def shape_from_names(feature_names: list[str]) -> tuple[int, list[str]]:
    """(length T, channel names) back from `flat_names`."""
    channels = [n.rsplit("@t", 1)[0] for n in feature_names if n.endswith("@t0")]
    return len(feature_names) // max(len(channels), 1), channels


def regime_sequences(n: int = 900, length: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic set: class k is a noisy two-channel oscillator (sin, cos) of period REGIME_PERIODS[k] with a
    random phase, amplitude (0.7-1.3) and a slowly varying offset. -> (x [n, T, 2] float32, y [n] int)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(REGIME_PERIODS)
    t = np.arange(length)[None, :]  # [1, T]
    period = np.asarray(REGIME_PERIODS)[y][:, None] * rng.uniform(0.9, 1.1, (n, 1))  # [n, 1]
    phase = rng.uniform(0, 2 * np.pi, (n, 1)) + 2 * np.pi * t / period  # [n, T]
    amp = rng.uniform(0.7, 1.3, (n, 1))
    offset = np.cumsum(rng.normal(0, 0.03, (n, length)), axis=1)  # [n, T] a slow random walk
    x = np.stack([amp * np.sin(phase), amp * np.cos(phase)], -1) + offset[..., None]  # [n, T, 2]
    x += rng.normal(0, 0.15, x.shape)
    return x.astype(np.float32), y


def shifted_regime(z: np.ndarray, rng: np.random.Generator, start: float = 0.5) -> np.ndarray:
    """Normalised sequences [n, T, C] whose steps from `start` * T on switch to an unseen regime: an
    oscillation of period 3 and amplitude 2.5 (train stds) around a drift of 0.1 per step, plus noise."""
    n, length, channels = z.shape
    t0 = int(start * length)
    t = np.arange(length - t0)[None, :, None]  # [1, T - t0, 1]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
    out = z.copy()
    out[:, t0:] = 2.5 * np.sin(2 * np.pi * t / 3.0 + phase) + 0.1 * t + rng.normal(0, 0.2, (n, length - t0, channels))
    return out.astype(np.float32)


def time_warp(z: np.ndarray, strength: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each sequence [n, T, C] resampled along a smooth monotone warp of its time axis: t -> t + a sin(pi t / (T-1))
    (T - 1) / pi with a ~ U(-strength, strength) per sequence (|a| < 1 keeps it monotone), by linear interpolation.
    `strength` [n]. The first and last steps stay in place."""
    n, length, channels = z.shape
    t = np.linspace(0.0, 1.0, length)  # [T]
    a = rng.uniform(-1.0, 1.0, n) * np.clip(strength, 0.0, 0.9)  # [n]
    warped = (t[None] + a[:, None] * np.sin(np.pi * t)[None] / np.pi) * (length - 1)  # [n, T] positions in steps
    lo = np.clip(np.floor(warped).astype(int), 0, length - 1)
    hi = np.clip(lo + 1, 0, length - 1)
    w = (warped - lo)[..., None]  # [n, T, 1]
    rows = np.arange(n)[:, None]
    return ((1 - w) * z[rows, lo] + w * z[rows, hi]).astype(np.float32)


def _pick(df: pd.DataFrame, given: str | None, candidates: tuple[str, ...], what: str, flag: str | None) -> str:
    """The `given` column, else the first of `candidates` present. `flag` is the option that names the column, or
    None where the column is the run's (a command without the option: the error says to rename the column)."""
    names = [given] if given is not None else list(candidates)
    found = next((c for c in names if c in df.columns), None)
    if found is not None:
        return found
    if flag is None:
        raise BdkError(f"no {what} column ({' or '.join(map(repr, names))}) in {list(df.columns)}; "
                       f"the run reads its sequences with it: rename yours to {names[0]!r}")
    if given is not None:
        raise BdkError(f"{what} column {given!r} not found; the columns are {list(df.columns)}: pass {flag} NAME")
    raise BdkError(f"no {what} column ({' or '.join(candidates)}) in {list(df.columns)}: pass {flag} NAME")


def _sortable_time(values: pd.Series, column: str) -> pd.Series:
    """The time column as numbers or dates, which sort in time order (text would put t10 before t2)."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        return values
    for convert in (pd.to_numeric, lambda v: pd.to_datetime(v, format="mixed")):
        try:
            return convert(values)
        except (ValueError, TypeError):
            pass
    example = values[pd.to_numeric(values, errors="coerce").isna()].iloc[0]
    raise BdkError(f"time column {column!r} is neither numeric nor dates (e.g. {example!r}); give it numbers or dates "
                   "(text would sort t10 before t2)")


def _channel_columns(df: pd.DataFrame, series: str, time: str, label: str | None, channels: list[str] | None) -> list:
    """The table's channel columns: `channels` (a run's, checked against the table) or every column but series, time
    and label; each numeric."""
    if channels is None:
        channels = [c for c in df.columns if c not in (series, time, label)]
    else:
        missing = [c for c in channels if c not in df.columns]
        extra = [c for c in df.columns if c not in (series, time, label, *channels)]
        if missing or extra:
            raise BdkError(f"the sequences' channels do not match the model's: missing {missing}, unexpected {extra}; "
                           f"it needs the channel columns {channels}")
    if not channels:
        raise BdkError(f"no channel columns besides {series!r}, {time!r} and the label")
    bad = [c for c in channels if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise BdkError(f"channel column {bad[0]!r} is not numeric; encode it as numbers or remove the column")
    return channels


def _series_labels(df: pd.DataFrame, series: str, label: str) -> pd.Series:
    """Each series' one label [N], in the (sorted) table's series order."""
    unlabelled = df[label].isna().to_numpy()
    if unlabelled.any():
        raise BdkError(f"series {df[series].iloc[np.flatnonzero(unlabelled)[0]]!r} has rows without a label in "
                       f"column {label!r}; label every row of a series or remove the series")
    per_series = df.groupby(series, sort=False)[label]
    varying = per_series.nunique(dropna=False) > 1
    if varying.any():
        raise BdkError(f"series {varying.index[varying][0]!r} has more than one label; a series has one label")
    return per_series.first().reset_index(drop=True)


def from_long_table(df: pd.DataFrame, label: str | None, series_column: str | None, time_column: str | None,
                    channels: list[str] | None = None, column_flags: bool = True,
                    ) -> tuple[np.ndarray, np.ndarray, pd.Series | None, list[str]]:
    """A long table -> (series ids [N] str, x [N, T, C] float32, labels [N] (None when `label` is None), channels).

    `channels` fixes the channel columns (a run's); by default every column but series, time and label.
    `column_flags`: the command has --series-column and --time-column (else a missing column is to be renamed)."""
    if len(df) == 0:
        raise BdkError("the table has no rows; a long table has one row per series and time step")
    series = _pick(df, series_column, SERIES_COLUMNS, "series id", "--series-column" if column_flags else None)
    time = _pick(df, time_column, TIME_COLUMNS, "time", "--time-column" if column_flags else None)
    if label is not None and label not in df.columns:
        raise BdkError(f"label column {label!r} not found; the columns are {list(df.columns)}: pass --label-column NAME")
    channels = _channel_columns(df, series, time, label, channels)
    for column, what in ((series, "series id"), (time, "time")):
        empty = np.flatnonzero(df[column].isna().to_numpy())  # positions: data rows - 1 (header not counted)
        if len(empty):
            raise BdkError(f"{what} column {column!r} is empty in data row {empty[0] + 1}"
                           f"{f' and {len(empty) - 1} more' if len(empty) > 1 else ''}; give every row a {what}")
    df = df.assign(**{time: _sortable_time(df[time], time)})
    df = df.sort_values([series, time], kind="stable")
    if df.duplicated([series, time]).any():
        s = df.loc[df.duplicated([series, time]), series].iloc[0]
        raise BdkError(f"series {s!r} has two rows at one time step; each (series, time) pair must appear once")
    lengths = df.groupby(series, sort=False).size()
    if lengths.nunique() > 1:
        common = int(lengths.mode().iloc[0])
        odd = lengths[lengths != common]
        raise BdkError(f"ragged sequences: series {odd.index[0]!r} has {int(odd.iloc[0])} time steps, most have "
                       f"{common} ({len(odd)} series differ); pad or trim every series to one length")
    n, length = len(lengths), int(lengths.iloc[0])
    values = df[channels].to_numpy(np.float64).reshape(n, length, len(channels))
    nonfinite = ~np.isfinite(values).all(axis=(1, 2))
    if nonfinite.any():
        names = [str(s) for s in lengths.index[nonfinite][:5]]
        raise BdkError(f"missing or non-finite values in series {', '.join(names)}"
                       f"{f' and {nonfinite.sum() - 5} more' if nonfinite.sum() > 5 else ''}; fix or remove those series")
    labels = _series_labels(df, series, label) if label is not None else None
    return lengths.index.astype(str).to_numpy(), values.astype(np.float32), labels, list(map(str, channels))


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, pd.Series, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise BdkError(f"{path}: could not read it as a NumPy .npz ({type(e).__name__}); save it with np.savez(x=..., y=...)") from None
    if "x" not in arrays or "y" not in arrays:
        raise BdkError(f"{path}: a sequence .npz needs arrays `x` [N, T, C] and `y` [N]; it has {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "biuf":
        raise BdkError(f"{path}: x has dtype {x.dtype}; it needs numbers (save the sequences as floats)")
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or y.ndim != 1 or len(y) != len(x):
        raise BdkError(f"{path}: x has shape {list(x.shape)} and y {list(y.shape)}; they need [N, T, C] and [N]")
    if 0 in x.shape:
        raise BdkError(f"{path}: x has shape {list(x.shape)}; sequences need at least one series, time step and "
                       "channel ([N, T, C] with N, T, C >= 1)")
    if pd.isna(y).any():
        raise BdkError(f"{path}: y is missing for sequences {', '.join(map(str, np.flatnonzero(pd.isna(y))[:5]))}; "
                       "label them or remove them")
    for name, size, what in (("ids", len(x), "sequences"), ("channels", x.shape[2], "channels")):
        if name in arrays and arrays[name].shape != (size,):
            raise BdkError(f"{path}: `{name}` has shape {list(arrays[name].shape)} but x has {size} {what}; "
                           f"give one {name[:-1]} per {what[:-1]} (or leave `{name}` out)")
    x = x.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
    if len(bad):
        raise BdkError(f"{path}: missing or non-finite values in sequences {', '.join(map(str, bad[:5]))}; fix or remove them")
    ids = arrays["ids"].astype(str) if "ids" in arrays else np.arange(1, len(x) + 1).astype(str)
    channels = list(map(str, arrays["channels"])) if "channels" in arrays else [f"c{i}" for i in range(x.shape[2])]
    return ids, x.astype(np.float32), pd.Series(y), channels


def read_sequences(source: str, label: str, series_column: str | None, time_column: str | None):
    """A sequence source -> (ids [N], x [N, T, C], labels [N], channel names)."""
    where = BUNDLED_SEQUENCES.get(source)
    if where == "synthetic:regimes":
        x, y = regime_sequences()
        return np.arange(1, len(x) + 1).astype(str), x, pd.Series(np.asarray(["fast", "medium", "slow"])[y]), ["x", "y"]
    path = Path(where or source)
    if not path.exists():
        raise BdkError(f"sequence file {source} not found; pass an existing long-format .csv/.parquet or an .npz")
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    from distill.data import read_table

    df = read_table(str(path))
    if len(df) == 0:
        raise BdkError(f"{path}: the table has no rows")
    return from_long_table(df, label, series_column, time_column)


def run_sequences(df: pd.DataFrame, feature_names: list[str], label_column: str | None, series_column: str | None,
                  time_column: str | None, what: str, same_length: bool = True,
                  column_flags: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """New sequences for a run (unlabeled, OOD, to predict) -> (series ids [N] str, x [N, T, C] float32): a long table
    with the run's channels, read with the run's series and time columns (None: the defaults); a label column is
    ignored. Errors start with `what` (e.g. "unlabeled file X"); `same_length` refuses lengths other than the run's.
    `column_flags`: as `from_long_table`'s."""
    length, channels = shape_from_names(feature_names)
    try:
        ids, x, _, _ = from_long_table(df.drop(columns=[label_column], errors="ignore"), None, series_column,
                                       time_column, channels, column_flags)
    except BdkError as e:
        raise BdkError(f"{what}: {e}") from None
    if same_length and x.shape[1] != length:
        raise BdkError(f"{what}: its sequences have {x.shape[1]} time steps, the teacher's {length}; "
                       "pad or trim them to that length")
    return ids, x

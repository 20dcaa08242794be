"""What one example is: a row of a table, or a multichannel sequence. The one place that knows the difference.

`Dataset.inputs` is a `TableInputs` or a `SequenceInputs`; stages ask it (its shape, how new examples are read,
its default OOD set, how a perturbation warps it) instead of branching on the kind of input. Where a stage owns
code per kind (its model builders), it keys a table by `inputs.kind`.

Both are stored the same way (distill.sequences: a sequence's features are its flattened series), so the run
folder, the transfer set, the Beam job and the soft labels carry one layout; only the models and the exports see
[batch, time, channels].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

from distill.errors import BdkError

Reader = Callable[[pd.DataFrame], tuple]  # a stage's reader of new table rows: (ids, x, id column, features)


@dataclass(frozen=True)
class TableInputs:
    """A row of F numbers (the encoded features of distill.features)."""

    num_features: int
    kind: ClassVar[str] = "table"
    default_teacher: ClassVar[str] = "flipout"
    ood_name: ClassVar[str] = "far-away uniform"
    has_shell: ClassVar[bool] = True  # a box around the data, so a far shell off it (validation shell, OOD rows)
    over_time: ClassVar[bool] = False  # no time axis to read uncertainty along

    @property
    def shape(self) -> tuple[int, ...]:
        """One example as the models take it: (F,)."""
        return (self.num_features,)

    @property
    def signature_shape(self) -> tuple | None:
        """The exports' batch input beyond the batch axis, when not [B, F] (None: the flat features)."""
        return None

    @property
    def dense_features(self) -> int | None:
        """The width a dense first layer reads (FLOPs and parameter counts), or None where it is not a dense net."""
        return self.num_features

    def meta(self) -> dict:
        """What dataset.json records about the inputs (tables: nothing beyond the feature specification)."""
        return {}

    def read(self, df: pd.DataFrame, what: str, table: Reader, **sequence_options) -> tuple:
        """New examples from a user table -> (ids [N], raw x [N, F], the id column, the features): a table's rows
        through the stage's own `table` reader, which returns those four."""
        return table(df)

    def default_ood(self, ds, rows: int, inner: float, outer: float, seed: int) -> np.ndarray:
        """The evaluation's OOD examples when none are given (raw, flat): far-away uniform rows in a shell."""
        from distill.transfer import far_uniform

        return far_uniform(ds, rows, inner, outer, seed)

    def warp(self, base: np.ndarray, strength: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A perturbation's change to each copy's layout before the noise: none for a table."""
        return base

    def refuse_teacher(self, kind: str) -> str:
        return (f"the {kind} teacher takes sequences [time, channels]; pass a long-format table with --series-column "
                "(and --time-column), an .npz, or a bundled sequence set (italy_power, regimes)")


@dataclass(frozen=True)
class SequenceInputs:
    """A [T, C] series; stored flattened, time major (distill.sequences.flat_names), normalised per channel."""

    length: int
    channels: int
    feature_names: tuple[str, ...]  # the flattened names, c@tN
    # The long table's series id and time columns as the run was given them (None: distill.sequences' defaults);
    # new sequences (predict, unlabeled, OOD) are read with them.
    series_column: str | None = None
    time_column: str | None = None
    kind: ClassVar[str] = "sequence"
    default_teacher: ClassVar[str] = "brnn"
    ood_name: ClassVar[str] = "shifted regime"
    has_shell: ClassVar[bool] = False
    over_time: ClassVar[bool] = True  # uncertainty can be read along the time axis (bdk.evaluate.epistemic_over_time)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.length, self.channels)

    @property
    def signature_shape(self) -> tuple | None:
        return (None, self.channels)  # sequences of any length

    @property
    def dense_features(self) -> int | None:
        return None  # recurrent and convolutional networks: not counted

    def meta(self) -> dict:
        return {"sequence_shape": [self.length, self.channels], "series_column": self.series_column,
                "time_column": self.time_column}

    def read(self, df: pd.DataFrame, what: str, table: Reader | None = None, label_column: str | None = None,
             series_column: str | None = None, time_column: str | None = None, same_length: bool = True,
             column_flags: bool = False) -> tuple:
        """New sequences from a long table -> (series ids [N], raw x [N, T*C] flat ([N, T', C] when not
        `same_length`), the series column, the channel names), read with the run's series and time columns unless
        given; a label column is ignored. Errors start with `what`."""
        from distill.sequences import run_sequences, shape_from_names

        series = series_column or self.series_column
        ids, x = run_sequences(df, list(self.feature_names), label_column, series, time_column or self.time_column,
                               what, same_length, column_flags)  # [N, T, C]
        return ids, (x.reshape(len(x), -1) if same_length else x), series or "series", shape_from_names(
            list(self.feature_names))[1]

    def default_ood(self, ds, rows: int, inner: float, outer: float, seed: int) -> np.ndarray:
        """The test sequences switching to an unseen regime halfway (distill.sequences.shifted_regime), raw, flat."""
        from distill.sequences import shifted_regime

        return ds.denormalise(shifted_regime(ds.scaled("test"), np.random.default_rng(seed)))

    def warp(self, base: np.ndarray, strength: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A small warp of each copy's time axis: base [P, T*C] -> [P, T*C]."""
        from distill.sequences import time_warp

        return time_warp(base.reshape(len(base), *self.shape), strength, rng).reshape(len(base), -1)

    def refuse_teacher(self, kind: str) -> str:
        return f"the dataset holds sequences; the {kind} teacher takes tables: pass --kind brnn"


Inputs = TableInputs | SequenceInputs


def from_meta(meta: dict) -> Inputs:
    """A run's inputs from its dataset.json (or the Beam job's copy of it; {}: a table of unknown width)."""
    if meta.get("sequence_shape"):
        length, channels = meta["sequence_shape"]
        return SequenceInputs(length, channels, tuple(meta["feature_names"]), meta.get("series_column"),
                              meta.get("time_column"))
    return TableInputs(len(meta.get("feature_names") or ()))


def kind_of_source(source: str, series_column: str | None) -> type[TableInputs] | type[SequenceInputs]:
    """What a source holds before it is read: sequences (a bundled sequence set, an .npz, or a long table given its
    series column) or a table."""
    from distill.sequences import is_sequence_source

    return SequenceInputs if is_sequence_source(source, series_column) else TableInputs


def check_kind(inputs: Inputs, takes: str, teacher_kind: str) -> None:
    """One clear error before training when a teacher family takes the other kind of input."""
    if inputs.kind != takes:
        raise BdkError(inputs.refuse_teacher(teacher_kind))

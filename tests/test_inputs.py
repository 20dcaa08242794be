"""distill.inputs: a table row and a sequence, the one place that knows the difference (no training here)."""
import numpy as np
import pandas as pd
import pytest

from distill import inputs
from distill.errors import BdkError
from distill.inputs import SequenceInputs, TableInputs
from distill.sequences import flat_names


def test_the_run_folder_records_and_restores_each_kind():
    names = flat_names(["a", "b"], 3)
    seq = SequenceInputs(3, 2, tuple(names), "sid", None)
    meta = {"feature_names": names, **seq.meta()}
    assert inputs.from_meta(meta) == seq
    assert meta["sequence_shape"] == [3, 2] and meta["series_column"] == "sid"
    table = inputs.from_meta({"feature_names": ["x", "y", "z"]})
    assert table == TableInputs(3) and table.meta() == {}
    assert inputs.from_meta({}) == TableInputs(0)  # a bare export: a table of unknown width


def test_shapes_and_what_each_kind_can_do():
    seq, table = SequenceInputs(24, 2, ()), TableInputs(5)
    assert (table.shape, table.signature_shape, table.dense_features) == ((5,), None, 5)
    assert (seq.shape, seq.signature_shape, seq.dense_features) == ((24, 2), (None, 2), None)
    assert (table.default_teacher, seq.default_teacher) == ("flipout", "brnn")
    assert table.has_shell and not seq.has_shell and seq.over_time and not table.over_time


def test_the_source_decides_the_kind():
    assert inputs.kind_of_source("italy_power", None) is SequenceInputs
    assert inputs.kind_of_source("data.npz", None) is SequenceInputs
    assert inputs.kind_of_source("long.csv", "series") is SequenceInputs
    assert inputs.kind_of_source("iris", None) is TableInputs


def test_a_table_is_not_warped_and_a_sequence_is():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 24 * 2)).astype(np.float32)  # [P, T*C]
    assert TableInputs(48).warp(base, np.full(4, 0.3), np.random.default_rng(1)) is base
    warped = SequenceInputs(24, 2, ()).warp(base, np.full(4, 0.3), np.random.default_rng(1))
    assert warped.shape == base.shape and not np.allclose(warped, base)
    assert np.allclose(SequenceInputs(24, 2, ()).warp(base, np.zeros(4), np.random.default_rng(1)), base)


def test_new_examples_go_through_the_stage_reader_for_tables_and_the_long_format_for_sequences():
    df = pd.DataFrame({"series": np.repeat(["s1", "s2"], 3), "time": np.tile([0, 1, 2], 2),
                       "a": np.arange(6.0), "label": 0})
    seq = SequenceInputs(3, 1, tuple(flat_names(["a"], 3)))
    ids, x, series, channels = seq.read(df, "test file", label_column="label")
    assert list(ids) == ["s1", "s2"] and series == "series" and channels == ["a"]
    np.testing.assert_array_equal(x, [[0, 1, 2], [3, 4, 5]])  # [N, T*C] flat, time major
    with pytest.raises(BdkError, match="^test file: its sequences have 3 time steps, the teacher's 4"):
        SequenceInputs(4, 1, tuple(flat_names(["a"], 4))).read(df, "test file", label_column="label")
    seen = []
    out = TableInputs(1).read(df, "test file", lambda frame: seen.append(frame) or ("ids", "x", None, ["a"]))
    assert out == ("ids", "x", None, ["a"]) and seen[0] is df


def test_a_teacher_of_the_other_kind_is_refused():
    with pytest.raises(BdkError, match="holds sequences; the flipout teacher takes tables"):
        inputs.check_kind(SequenceInputs(3, 1, ()), "table", "flipout")
    with pytest.raises(BdkError, match="the brnn teacher takes sequences"):
        inputs.check_kind(TableInputs(3), "sequence", "brnn")
    inputs.check_kind(TableInputs(3), "table", "flipout")

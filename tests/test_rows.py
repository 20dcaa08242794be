"""The student's streamed rows (student.rows): the same rows as reading every shard into memory, each once per epoch."""
import numpy as np
import pyarrow as pa
import pytest

from student import rows as rows_lib
from student.rows import TransferRows, holdout_mask


def shards(n_shards=5, per_shard=1000, features=3, classes=4, seed=0):
    """Arrow tables with an id column, and the arrays `row_arrays` gives for each: (x, targets, labels, score)."""
    rng = np.random.default_rng(seed)
    tables, arrays = [], []
    for s in range(n_shards):
        x = rng.normal(size=(per_shard, features)).astype(np.float32)
        targets = rng.dirichlet(np.ones(classes), per_shard).astype(np.float32)
        labels = rng.integers(-1, classes, per_shard)
        score = rng.normal(2.0, 3.0, per_shard)
        ids = [f"src:{s}:{i}" for i in range(per_shard)]
        tables.append(pa.table({"id": ids}))
        arrays.append((x, targets, labels, score))
    lookup = {id(t): a for t, a in zip(tables, arrays)}
    return tables, (lambda table: lookup[id(table)]), arrays


def in_memory(arrays, tables, holdout):
    """The reference: every shard concatenated, split by the held-out mask, the score normalised over all rows."""
    cols = [np.concatenate(c) for c in zip(*arrays)]
    hold = np.concatenate([holdout_mask(t.column("id").to_pylist(), holdout) for t in tables])
    score = (cols[3] - cols[3].mean()) / cols[3].std()
    full = (cols[0], cols[1], cols[2], score)
    return tuple(c[~hold] for c in full), tuple(c[hold] for c in full)


def as_sorted_records(columns):
    """Rows as one float64 matrix sorted lexicographically (a multiset of rows, order-free)."""
    m = np.column_stack([np.asarray(c, np.float64).reshape(len(c), -1) for c in columns])
    return m[np.lexsort(m.T[::-1])]


@pytest.mark.parametrize("bucket_rows", [700, 10_000])  # several buckets, and one
def test_streamed_rows_are_the_in_memory_rows(tmp_path, monkeypatch, bucket_rows):
    monkeypatch.setattr(rows_lib, "BUCKET_ROWS", bucket_rows)
    tables, row_arrays, arrays = shards()
    rows = TransferRows.write(tables, row_arrays, 5000, 0.1, tmp_path / "b", (3,), 4, np.int64, center_scores=True)
    fit_ref, held_ref = in_memory(arrays, tables, 0.1)
    assert rows.fit_rows == len(fit_ref[0]) and len(rows.held_out[0]) == len(held_ref[0]) > 0
    assert len(rows.buckets) == -(-5000 // bucket_rows)
    np.testing.assert_allclose(as_sorted_records(rows.all_rows()), as_sorted_records(fit_ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(as_sorted_records(rows.held_out), as_sorted_records(held_ref), rtol=1e-6, atol=1e-6)
    assert rows.all_rows()[2].dtype == np.int64

    rng = np.random.default_rng(0)
    epochs = [np.concatenate([b[0] for b in rows.blocks(rng)]) for _ in range(2)]
    for x in epochs:  # every fitted row once per epoch
        np.testing.assert_array_equal(as_sorted_records([x]), as_sorted_records([fit_ref[0]]))
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch


def test_without_a_held_out_slice_every_row_is_fitted(tmp_path):
    tables, row_arrays, arrays = shards(n_shards=2, per_shard=50)
    rows = TransferRows.write(tables, row_arrays, 100, None, tmp_path, (3,), 4, np.int64, center_scores=False)
    assert rows.fit_rows == 100 and rows.held_out == () and rows.epistemic_shift == 0.0

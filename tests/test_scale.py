"""Defaults that adapt to the data size (issue 14): batch sizes, step budgets, chunked evaluation, bounded report work."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from distill.training import LARGE_BATCH, epochs_for_steps, scaled_batch, steps_per_epoch
from student.config import StudentConfig
from teacher.config import TeacherConfig


def test_batch_size_keeps_the_small_data_recipe_and_grows_to_a_cap():
    for n in (96, 227, 364, 1150):  # the suite's train splits: the validated recipes are untouched
        assert scaled_batch(32, n) == 32 and scaled_batch(16, n) == 16
    sizes = [scaled_batch(32, n) for n in (6_400, 64_000, 640_000, 6_400_000)]
    assert sizes == sorted(sizes) and sizes[1] == 256 and sizes[-1] == LARGE_BATCH
    assert all(s & (s - 1) == 0 for s in sizes)  # powers of two


def test_teacher_step_budget_buys_several_epochs_of_a_million_rows():
    small = TeacherConfig().resolved("classification", 96)
    assert small.batch_size == 32 and small.max_epochs(96) == 6667  # 3 steps per epoch: 20k steps
    assert small.hidden == (64, 64)
    big = TeacherConfig().resolved("classification", 640_000)
    assert big.batch_size == LARGE_BATCH and big.max_epochs(640_000) == 26  # 625 steps per epoch: 16k steps
    assert big.hidden == (128, 128) and big.learning_rate_decay == "cosine"  # wider, a decayed rate on large data
    assert TeacherConfig(hidden=(8,)).resolved("classification", 640_000).hidden == (8,)  # explicit wins
    assert TeacherConfig(batch_size=64).resolved("classification", 640_000).batch_size == 64  # explicit wins
    assert TeacherConfig(kind="ensemble").resolved("classification", 640_000).batch_size == LARGE_BATCH


def test_teacher_patience_is_epochs_or_steps_whichever_comes_first():
    assert TeacherConfig().resolved("classification", 96).patience == 100  # 3 steps an epoch: the epochs count
    assert TeacherConfig().resolved("classification", 640_000).patience == 10  # 625 steps an epoch: 6,000 steps
    regression = TeacherConfig().resolved("regression", 300_000)  # regression waits longer: 10,000 steps
    per_epoch = steps_per_epoch(300_000, regression.batch_size)
    assert regression.patience * per_epoch >= 10_000 > (regression.patience - 1) * per_epoch
    assert TeacherConfig(patience=7).resolved("classification", 640_000).patience == 7  # explicit wins
    assert TeacherConfig(kind="ensemble").resolved("classification", 640_000).patience == 30  # epochs: its own recipe


def test_student_schedule_grows_with_the_transfer_set():
    from student.train import Schedule

    cfg = StudentConfig().resolved("classification")
    small = Schedule.for_rows(4_000, cfg, 3e-3)  # Iris-sized: the 256-row batch, the 300-epoch cap
    assert (small.batch_size, small.epochs) == (256, 300)
    big = Schedule.for_rows(1_150_000, cfg, 3e-3)  # a million rows: the largest batch, at least min_epochs passes
    assert big.batch_size == LARGE_BATCH and big.epochs >= cfg.min_epochs
    assert big.epochs * -(-1_150_000 // big.batch_size) >= cfg.steps
    assert big.patience >= 3 and small.patience * -(-4_000 // 256) >= cfg.patience_steps  # patience counts steps
    assert Schedule.for_rows(10, cfg, 1e-3, max_epochs=4).epochs == 4  # the cap wins
    # the patient minimum ends at min_epochs_rows rows seen (the student's; the baseline keeps its min_epochs)
    seen = Schedule.for_rows(1_150_000, cfg, 3e-3, min_epochs_rows=cfg.min_epochs_rows)
    assert seen.epochs == max(-(-cfg.min_epochs_rows // 1_150_000), epochs_for_steps(1_150_000, LARGE_BATCH, cfg.steps))
    assert cfg.min_epochs > seen.epochs and seen.epochs * 1_150_000 >= cfg.min_epochs_rows
    assert Schedule.for_rows(115_000, cfg, 3e-3, min_epochs_rows=cfg.min_epochs_rows).epochs >= cfg.min_epochs  # 100k
    assert epochs_for_steps(10, 256, 1) == 1


def test_in_chunks_matches_one_call():
    import tensorflow as tf

    from distill.training import in_chunks

    x = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32)
    fn = lambda t: {"row": 2.0 * t, "draws": tf.stack([t, -t])}  # noqa: E731  [B, F] and [S=2, B, F]
    whole = {k: v.numpy() for k, v in fn(tf.constant(x)).items()}
    np.testing.assert_array_equal(in_chunks(lambda t: {"row": fn(t)["row"]}, x, rows=5)["row"], whole["row"])
    np.testing.assert_array_equal(in_chunks(lambda t: {"draws": fn(t)["draws"]}, x, axis=1, rows=5)["draws"], whole["draws"])
    # no rows: an output with zero rows on its row axis
    assert in_chunks(lambda t: {"row": fn(t)["row"]}, x[:0], rows=5)["row"].shape == (0, 4)
    assert in_chunks(lambda t: {"draws": np.stack([t, -t])}, x[:0], axis=1, rows=5)["draws"].shape == (2, 0, 4)


def test_box_from_the_raw_range_is_the_normalised_rows_range(iris, regression_csv):
    """Dataset.box() normalises the raw rows' range instead of the rows: the same bits as the range of the normalised
    copy, under z-scores and min-max alike."""
    from distill import data as data_lib

    for ds in (iris, data_lib.load(data_lib.DataConfig(dataset=str(regression_csv), label_column="y",
                                                                     task="regression"))):
        z = ds.scaled("train").reshape(len(ds["train"]), -1)
        for got, want in zip(ds.box(), (z.min(axis=0), z.max(axis=0))):
            np.testing.assert_array_equal(got, want)
        head = ds.scaled("train", 7)  # the first rows only (the teacher's per-epoch validation rows)
        assert head.shape[0] == 7
        np.testing.assert_array_equal(head.reshape(7, -1), z[:7])
        minmax = replace(ds, scaler=data_lib.Normaliser.fit(ds["train"].x, "minmax"))
        z = minmax.scaled("train")
        for got, want in zip(minmax.box(), (z.min(axis=0), z.max(axis=0))):
            np.testing.assert_array_equal(got, want)


def test_host_tensor_shares_an_aligned_buffer_and_copies_any_other_once():
    from distill.training import TENSOR_ALIGNMENT, aligned_empty, host_tensor

    rng = np.random.default_rng(0)
    a = aligned_empty((1000, 7))
    a[...] = rng.normal(size=a.shape)
    assert a.ctypes.data % TENSOR_ALIGNMENT == 0 and a.flags.c_contiguous
    t = host_tensor(a)
    np.testing.assert_array_equal(t.numpy(), a)
    a[3, 2] = 42.0  # one buffer: the tensor sees the write
    assert float(t[3, 2]) == 42.0
    for other in (rng.normal(size=(999, 7)).astype(np.float32)[1:], rng.normal(size=(5, 7)).T,  # misaligned, strided
                  rng.integers(0, 9, 17), np.zeros((0, 3), np.float32)):
        np.testing.assert_array_equal(host_tensor(other).numpy(), other)
        assert host_tensor(other).dtype.as_numpy_dtype == other.dtype.type
    assert host_tensor(np.array(["a", ""])).numpy().tolist() == [b"a", b""]  # strings: TensorFlow's own copy


def test_normalising_into_a_buffer_or_in_place_gives_the_same_bits():
    from distill.data import Normaliser

    x = np.random.default_rng(1).normal(3.0, 2.0, size=(257, 5)).astype(np.float32)
    scaler = Normaliser.fit(x, "standard")
    expected = scaler.transform(x)
    in_place = x.copy()
    assert scaler.transform(in_place, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)

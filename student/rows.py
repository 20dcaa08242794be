"""The student's training rows, streamed: the soft labels read once, shard by shard, into bucket files on disk.

A transfer set of a million rows must not cost a million rows of memory. The soft-label shards are read one at a
time; each row is turned into the student's arrays (normalised inputs, soft targets, label, epistemic score) and
appended to one of B bucket files chosen at random, so every bucket is a uniform sample of the whole transfer set
(every source mixed in). Training reads one bucket at a time (at most about BUCKET_ROWS rows in memory), in a new
random order each epoch, and shuffles its rows: the same stream of minibatches an in-memory permutation would give,
up to the bucket boundaries. The held-out slice (by a hash of the row ids, `holdout_mask`) stays in memory:
it is scored after every epoch, and is at most `holdout` of the rows.

Bucket files are raw float32 records [rows, D] with D = input width + target width + 2 (label, raw score), in the
stage's temporary folder, deleted with it.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

BUCKET_ROWS = 262_144  # rows per bucket file (about 64 MB at 60 float32 columns): the peak a training block costs


def holdout_mask(ids, fraction: float) -> np.ndarray:
    """The held-out slice of the transfer set [N] bool: rows whose id hashes below `fraction` (stable across runs,
    sizes and sources; every source contributes in proportion)."""
    return np.array([zlib.crc32(str(i).encode()) / 2 ** 32 < fraction for i in ids], bool)


@dataclass
class TransferRows:
    """The fitted rows in bucket files and the held-out rows in memory, as (x [n, *input], targets [n, K],
    labels [n], score [n]) tuples; `score` is normalised by (score - epistemic_shift) / epistemic_scale."""

    buckets: list[Path]
    input_shape: tuple[int, ...]
    target_width: int
    label_dtype: type
    fit_rows: int
    held_out: tuple[np.ndarray, ...]
    epistemic_shift: float
    epistemic_scale: float

    @classmethod
    def write(cls, shards, row_arrays, expected_rows: int, holdout: float | None, folder: Path, input_shape: tuple,
              target_width: int, label_dtype, center_scores: bool, seed: int = 0) -> "TransferRows":
        """Read `shards` (Arrow tables) once: `row_arrays(table)` -> (x, targets, labels, score) of its rows; rows whose
        id hashes below `holdout` stay in memory, the others go to random buckets (about `expected_rows` in all).
        The epistemic score's mean (when `center_scores`) and std over every row normalise it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        count = max(1, -(-expected_rows // BUCKET_ROWS))
        paths = [folder / f"bucket-{i:04d}.f32" for i in range(count)]
        files = [open(p, "wb") for p in paths]
        rng = np.random.default_rng([seed, 1])
        held, fit_rows, n, mean, m2 = [], 0, 0, 0.0, 0.0  # the score's count, mean and sum of squared deviations
        try:
            for table in shards:
                x, targets, labels, score = row_arrays(table)
                n, mean, m2 = _merge_moments(n, mean, m2, np.asarray(score, np.float64))
                hold = holdout_mask(table.column("id").to_pylist(), holdout) if holdout else np.zeros(len(score), bool)
                if hold.any():
                    held.append((x[hold], targets[hold], labels[hold], score[hold]))
                keep = ~hold
                records = _records(x[keep], targets[keep], labels[keep], score[keep])  # [m, D]
                where = rng.integers(0, count, len(records))
                for b in np.unique(where):
                    files[b].write(records[where == b].tobytes())
                fit_rows += len(records)
        finally:
            for f in files:
                f.close()
        std = float(np.sqrt(m2 / max(n, 1))) or 1.0
        shift = mean if center_scores else 0.0
        held_out = tuple(np.concatenate(c) for c in zip(*held)) if held else ()
        if held_out:
            held_out = (*held_out[:3], ((held_out[3] - shift) / std).astype(np.float32))
        return cls(paths, tuple(input_shape), target_width, label_dtype, fit_rows, held_out, shift, std)

    def release_held_out(self) -> int:
        """Drop the held-out rows once training is over (a million-row transfer set: ~30 MB); returns their count."""
        count = len(self.held_out[0]) if self.held_out else 0
        self.held_out = ()
        return count

    @property
    def record_width(self) -> int:
        """float32 columns of a bucket record: the flattened input, the targets, the label and the raw score."""
        return int(np.prod(self.input_shape)) + self.target_width + 2

    def _read(self, path: Path) -> np.ndarray:
        return np.fromfile(path, np.float32).reshape(-1, self.record_width)  # [rows, D]

    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimiser steps in one epoch: each bucket ends in its own partial batch."""
        return sum(-(-(p.stat().st_size // (4 * self.record_width)) // batch_size) for p in self.buckets) or 1

    def blocks(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        """One epoch: each bucket once, in a random order, its rows in a random order."""
        for b in rng.permutation(len(self.buckets)):
            records = self._read(self.buckets[b])
            if len(records):
                yield self._split(records[rng.permutation(len(records))])

    def epoch_function(self, step, batch_size: int, variables, optimizer):
        """fn(rng) -> [batches, k]: one epoch of `step` over every bucket (distill.training.graph_steps)."""
        from distill.training import graph_steps, host_tensor

        run = graph_steps(step, batch_size, variables, optimizer)
        return lambda rng: np.concatenate([run(np.arange(len(block[0])), *map(host_tensor, block)) for block in self.blocks(rng)])

    def all_rows(self) -> tuple[np.ndarray, ...]:
        """Every fitted row in bucket order (tests; small sets)."""
        return self._split(np.concatenate([self._read(p) for p in self.buckets]))

    def _split(self, records: np.ndarray) -> tuple[np.ndarray, ...]:
        width = int(np.prod(self.input_shape))
        x = np.ascontiguousarray(records[:, :width]).reshape(len(records), *self.input_shape)
        targets = np.ascontiguousarray(records[:, width:width + self.target_width])
        labels = records[:, -2].astype(self.label_dtype)
        score = ((records[:, -1] - self.epistemic_shift) / self.epistemic_scale).astype(np.float32)
        return x, targets, labels, score


@dataclass
class InMemoryRows:
    """Rows already in memory (x, *columns), each [n, ...]: the same interface as TransferRows."""

    arrays: tuple

    @property
    def fit_rows(self) -> int:
        return len(self.arrays[0])

    def steps_per_epoch(self, batch_size: int) -> int:
        from distill.training import steps_per_epoch

        return steps_per_epoch(self.fit_rows, batch_size)

    def epoch_function(self, step, batch_size: int, variables, optimizer):
        from distill.training import graph_epoch

        return graph_epoch(step, self.arrays, batch_size, variables, optimizer)


def _merge_moments(n: int, mean: float, m2: float, x: np.ndarray) -> tuple[int, float, float]:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations) with a batch x: exact for a
    constant score (its std stays 0), unlike E[x^2] - E[x]^2."""
    if not len(x):
        return n, mean, m2
    bn, bmean = len(x), float(x.mean())
    bm2, total = float(np.square(x - bmean).sum()), n + len(x)
    delta = bmean - mean
    return total, mean + delta * bn / total, m2 + bm2 + delta * delta * n * bn / total


def _records(x, targets, labels, score) -> np.ndarray:
    """[m, D] float32: flattened input, targets, label (float32 holds class ids exactly, and regression labels), score."""
    m = len(score)
    return np.concatenate([np.asarray(x, np.float32).reshape(m, -1), np.asarray(targets, np.float32),
                           np.asarray(labels, np.float32).reshape(m, 1), np.asarray(score, np.float32).reshape(m, 1)], axis=1)

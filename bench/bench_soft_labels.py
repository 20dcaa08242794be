"""Soft-label benchmark (prints figures; not a test): the Beam job vs a plain in-process loop.

    .venv/bin/python bench/bench_soft_labels.py --run runs/iris [--rows 200000 --samples 100]
        [--sizes 50000,200000] [--repeats 2] [--batch-sizes 4096,16384,65536] [--tune-rows 60000] [-- beam options]

Both sides do the same work on the same transfer set (Parquet in, teacher `predictive` with S draws,
Parquet out with the soft-label schema): the Beam job (beam_pipelines.soft_labels.run, default
FnApiRunner) and a loop over Arrow record batches calling the SavedModel in-process. Each
measurement runs in a fresh child process, so its peak RSS (ru_maxrss of the child and of its own
children: Beam's multi-process workers) is its own. Printed: a batch-size sweep for the Beam job,
then per size rows/s, the Beam / loop wall-time ratio and peak memory; flat memory across sizes
shows the job streams rather than materialising the dataset.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import distill  # noqa: E402,F401  (Keras 2, quiet TensorFlow: before anything imports it)

from distill import schema  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children: less sensitive than wall time to other
    jobs on a shared machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    """High-water RSS of this process and of its (waited-for) children, in MB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def make_transfer(run: Path, rows: int, out: Path) -> Path:
    """A realistic mix: train rows, K=10 perturbed copies, the rest uniform over the widened box."""
    from distill import data as data_lib
    from distill.transfer import TransferConfig, build_transfer_set, write_transfer_set

    ds = data_lib.load_from_run(run)
    base = len(ds["train"]) * 11
    table = build_transfer_set(TransferConfig(perturbations=10, uniform=max(rows - base, 0)), ds)
    return write_transfer_set(table.iloc[:rows], out, ds.feature_names)


# ---------------------------------------------------------------- the two contenders (in child processes)


def child_inprocess(run: Path, transfer: Path, out: Path, samples: int, batch_size: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    from distill.errors import read_json
    from distill.transfer import soft_label_arrow_schema

    features = read_json(schema.data_dir(run) / "dataset.json")["feature_names"]
    arrow_schema = soft_label_arrow_schema(features)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    fn = tf.saved_model.load(str(schema.teacher_export(run))).signatures["predictive"]
    rows = 0
    with pq.ParquetWriter(str(out / "part-00000-of-00001.parquet"), arrow_schema) as writer:
        for batch in pq.ParquetFile(transfer).iter_batches(batch_size=batch_size):
            x = np.stack([batch.column(f).to_numpy() for f in features], axis=1)  # [B, F]
            pred = fn(features=tf.constant(x), num_samples=tf.constant(samples))
            cols = {name: batch.column(name) for name in batch.schema.names}
            for name in ("probs", "variance"):
                v = pred[name].numpy()  # [B, C]
                cols[name] = pa.FixedSizeListArray.from_arrays(v.ravel(), v.shape[1]).cast(pa.list_(pa.float32()))
            for name in ("entropy", "expected_entropy", "mutual_information"):
                cols[name] = pa.array(pred[name].numpy())
            cols["num_samples"] = pa.array(np.full(len(x), samples, np.int32))
            writer.write_table(pa.table([cols[f.name] for f in arrow_schema], schema=arrow_schema))
            rows += len(x)
    return {"rows": rows, "seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - cpu0}


def child_beam(run: Path, transfer: Path, out: Path, samples: int, batch_size: int, beam_args: list[str]) -> dict:
    import tensorflow as tf  # noqa: F401  (imported before the clock starts, as in the loop)

    from beam_pipelines import soft_labels

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    m = soft_labels.run(["--transfer", str(transfer), "--export", str(schema.teacher_export(run).resolve()),
                         "--dataset_json", str(schema.data_dir(run) / "dataset.json"), "--output", str(out),
                         "--num_samples", str(samples), "--batch_size", str(batch_size), *beam_args])
    # Count what run() adds around the job too (export check, read-back of the shards, manifest).
    return {"rows": m["rows"], "seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - cpu0,
            "job_seconds": m["job_seconds"], "shards": len(m["shards"])}


def best_of(repeats: int, *args) -> dict:
    """Repeats: the fastest wall time (the least disturbed by other jobs) and CPU time, the highest memory."""
    runs = [measure(*args) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "cpu": min(r["cpu"] for r in runs)}


def measure(mode: str, run: Path, transfer: Path, samples: int, batch_size: int, beam_args: list[str]) -> dict:
    """Run one measurement in a fresh process; returns its figures plus its peak memory."""
    with tempfile.TemporaryDirectory(prefix="bench-out-") as out:
        cmd = [sys.executable, __file__, "--child", mode, "--run", str(run), "--transfer", str(transfer),
               "--out", out, "--samples", str(samples), "--batch-size", str(batch_size), "--", *beam_args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    argv = sys.argv[1:]
    beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/iris"), help="Run folder with a trained teacher.")
    p.add_argument("--rows", type=int, default=200_000, help="Largest transfer-set size.")
    p.add_argument("--sizes", default=None, help="Comma-separated sizes (default: rows/4 and rows).")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16_384, help="Rows per predictive call, both sides.")
    p.add_argument("--batch-sizes", default="4096,16384,65536", help="Beam batch sizes to sweep ('' to skip).")
    p.add_argument("--tune-rows", type=int, default=60_000, help="Rows for the batch-size sweep.")
    p.add_argument("--repeats", type=int, default=1, help="Measure each point this many times, keep the fastest.")
    p.add_argument("--child", choices=["beam", "inprocess"], help=argparse.SUPPRESS)
    p.add_argument("--transfer", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child:
        if a.child == "beam":
            result = child_beam(a.run, a.transfer, a.out, a.samples, a.batch_size, beam_args)
        else:
            result = child_inprocess(a.run, a.transfer, a.out, a.samples, a.batch_size)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return

    if not (schema.teacher_export(a.run) / "saved_model.pb").exists():
        sys.exit(f"{a.run} has no teacher export; run `bdk teacher --out {a.run}` first")
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else [a.rows // 4, a.rows]
    print(f"teacher {schema.teacher_export(a.run)}, S={a.samples} draws, batch {a.batch_size}, "
          f"beam options {beam_args or '(FnApiRunner)'}, best of {a.repeats}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        if a.batch_sizes:
            transfer = make_transfer(a.run, a.tune_rows, Path(tmp) / "tune.parquet")
            print(f"\nbatch-size sweep, Beam job, {a.tune_rows} rows:")
            for bs in [int(b) for b in a.batch_sizes.split(",")]:
                r = best_of(a.repeats, "beam", a.run, transfer, a.samples, bs, beam_args)
                print(f"  batch {bs:6d}: {r['rows'] / r['seconds']:8.0f} rows/s ({r['seconds']:.1f} s wall, {r['cpu']:.1f} s CPU)")
        print(f"\n{'rows':>8} {'loop rows/s':>12} {'beam rows/s':>12} {'wall beam/loop':>15} {'CPU beam/loop':>14}"
              f" {'loop MB':>8} {'beam MB':>8}")
        for n in sizes:
            transfer = make_transfer(a.run, n, Path(tmp) / f"transfer-{n}.parquet")
            runs = {"inprocess": [], "beam": []}
            for _ in range(a.repeats):  # interleaved, so both see the same background load
                for mode in runs:
                    runs[mode].append(measure(mode, a.run, transfer, a.samples, a.batch_size, beam_args if mode == "beam" else []))
            loop, job = (min(runs[m], key=lambda r: r["seconds"]) for m in ("inprocess", "beam"))
            mem = {m: max(r["peak_rss_mb"] for r in runs[m]) for m in runs}
            assert loop["rows"] == job["rows"] == n, (loop, job)
            print(f"{n:8d} {n / loop['seconds']:12.0f} {n / job['seconds']:12.0f} {job['seconds'] / loop['seconds']:15.2f}"
                  f" {job['cpu'] / loop['cpu']:14.2f} {mem['inprocess']:8.0f} {mem['beam']:8.0f}"
                  f"   (loop {loop['seconds']:.1f} s, beam {job['seconds']:.1f} s of which the job {job['job_seconds']:.1f} s)")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

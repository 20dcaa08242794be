"""Soft-label benchmark (prints figures; not a test): the teacher's predictive in-process, the Beam job, serving latency.

    .venv/bin/python bench/bench_soft_labels.py --run runs/iris [--rows 200000 --samples 100 --batch-size 16384]
        [--sizes 50000,200000] [--repeats 2] [--batch-sizes 4096,16384,65536] [--tune-rows 60000]
        [--calls 5] [--latency-calls 2000] [--skip compute,latency,sweep,jobs] [-- beam options]

Printed, each part measured in a fresh child process (so its peak RSS, ru_maxrss of the child and of
its own children, is its own):
- compute: the export's `predictive` signature called on one in-memory batch of `--batch-size` rows
  with S = `--samples` draws: rows/s, achieved GFLOP/s (FLOPs per row and draw = 2 * sum(in * out)
  over one sampled network's layers, read from the export's variables) and that as a fraction of a
  matmul peak measured in the same process (tf.matmul of 2048 x 2048 float32, best of a few, before
  and after the predictive calls: GFLOP/s = 2 n^3 / t);
- latency: single-row `serving_default` (the export's serving draws) p50/p95/p99 and process CPU per
  call, the same through the restored tf.function (`serve`) to separate the signature's Python
  overhead, and an eager tf.identity as the floor of any call on the machine at that moment;
- sweep: the Beam job's rows/s per batch size (the transfer set's row-group size IS the job's batch:
  distill.transfer.write_transfer_set(..., row_group_rows));
- jobs: per transfer-set size, the Beam job (beam_pipelines.soft_labels.run, default FnApiRunner) vs
  a plain in-process loop doing the same work (Parquet row groups in, one `predictive_seeded` call per
  row group with the job's seed, Parquet out with the soft-label schema): rows/s, wall and CPU ratios,
  peak memory (flat across sizes = the job streams), and whether both wrote bit-identical soft labels.
Goals (issue 11): Beam wall / loop wall <= 1.2, Beam peak RSS <= 3 GB, serving p95 <= 1.0 ms.
Timings on a shared machine are noisy: the load average is printed with each part.
"""
from __future__ import annotations

import argparse
import hashlib
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
from distill.errors import read_json  # noqa: E402

MATMUL_N = 2048  # the peak reference: tf.matmul of two MATMUL_N x MATMUL_N float32 matrices
GOAL_WALL_RATIO, GOAL_RSS_MB, GOAL_P95_MS = 1.2, 3072, 1.0


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


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


_TABLES: dict = {}


def make_transfer(run: Path, rows: int, out: Path, row_group_rows: int) -> Path:
    """A realistic mix: train rows, K=10 perturbed copies, the rest uniform over the widened box,
    written in row groups of `row_group_rows` (the Beam job's batch)."""
    from distill import data as data_lib
    from distill import tasks
    from distill.transfer import TransferConfig, build_transfer_set, write_transfer_set

    if run not in _TABLES or len(_TABLES[run][1]) < rows:  # build once for the largest size, slice the rest
        ds = data_lib.load_from_run(run)
        base = len(ds["train"]) * 11
        _TABLES[run] = (ds, build_transfer_set(TransferConfig(perturbations=10, interpolations=0, shell=0,
                                                                 uniform=max(rows - base, 0)), ds))
    ds, table = _TABLES[run]
    return write_transfer_set(table.iloc[:rows], out, ds.feature_names, tasks.get(ds.task), row_group_rows)


# ---------------------------------------------------------------- helpers of the child processes


def network_layers(model, num_features: int) -> list[tuple[int, int]]:
    """(in, out) of each layer of ONE sampled network, from the export's variables: the 2-D kernels
    (a Flipout layer's posterior loc, not its scale; a Dense kernel), divided among the ensemble's
    members (each draw runs one member)."""
    kernels = [tuple(v.shape) for v in model.model_variables
               if v.shape.rank == 2 and "scale" not in v.name]
    chains = sum(1 for k in kernels if k[0] == num_features) or 1
    return [(int(a), int(b)) for a, b in kernels[:len(kernels) // chains]]


def flops_per_row_draw(layers: list[tuple[int, int]]) -> int:
    return 2 * sum(a * b for a, b in layers)


def matmul_peak(repeats: int = 5) -> float:
    """GFLOP/s of a float32 tf.matmul of MATMUL_N x MATMUL_N, best of `repeats` (eager CPU ops run synchronously)."""
    import tensorflow as tf

    a, b = tf.random.normal([MATMUL_N, MATMUL_N]), tf.random.normal([MATMUL_N, MATMUL_N])
    tf.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * MATMUL_N ** 3 / best / 1e9


def run_meta(run: Path) -> tuple[list[str], object]:
    from distill import tasks
    from distill.data import read_dataset_json

    meta = read_dataset_json(run)
    return list(meta["feature_names"]), tasks.get(meta["task"])


def features_of(table, features: list[str]):
    import numpy as np

    return np.stack([table.column(f).to_numpy().astype(np.float32, copy=False) for f in features], axis=1)  # [B, F]


def soft_labels_digest(folder: Path, task) -> str:
    """sha256 of the predictive columns of every shard in `folder`, rows ordered by id: equal digests =
    bit-identical soft labels, whatever the sharding. Computed after the clock stops."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = sorted(folder.glob(f"{schema.SOFT_LABEL_PREFIX}-*.parquet"))
    table = pa.concat_tables([pq.read_table(s) for s in shards]).sort_by("id")
    h = hashlib.sha256()
    for name in (*task.outputs, "num_samples"):
        col = table.column(name).combine_chunks()
        h.update((pc.list_flatten(col) if name in task.vector_outputs else col).to_numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- the measurements (in child processes)


def child_compute(run: Path, transfer: Path, samples: int, batch_size: int, calls: int) -> dict:
    """`predictive` on one in-memory batch, bracketed by matmul-peak measurements."""
    import pyarrow.parquet as pq
    import tensorflow as tf

    features, _ = run_meta(run)
    model = tf.saved_model.load(str(schema.teacher_export(run)))
    fn = model.signatures["predictive"]
    layers = network_layers(model, len(features))
    x = tf.constant(features_of(pq.read_table(transfer).slice(0, batch_size), features))
    s = tf.constant(samples, tf.int32)
    peak_before = matmul_peak()
    fn(features=x, num_samples=s)  # warm-up: the first call optimises the graph
    seconds, cpu = [], []
    for _ in range(calls):
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = fn(features=x, num_samples=s)
        {k: v.numpy() for k, v in out.items()}
        seconds.append(time.perf_counter() - t0), cpu.append(cpu_seconds() - c0)
    peak_after = matmul_peak()
    return {"rows": int(x.shape[0]), "seconds": seconds, "cpu": cpu, "layers": layers,
            "flops_per_row_draw": flops_per_row_draw(layers), "peak_gflops": [peak_before, peak_after]}


def child_latency(run: Path, calls: int) -> dict:
    """Single-row serving_default: per-call wall times (ms) through the signature and the restored tf.function."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    features, _ = run_meta(run)
    model = tf.saved_model.load(str(schema.teacher_export(run)))
    row = pd.read_parquet(schema.data_dir(run) / "splits.parquet", columns=features).to_numpy(np.float32)[:1]  # [1, F]
    x = tf.constant(row)
    sig = model.signatures["serving_default"]
    ways = {"serving_default": lambda: sig(features=x)}
    if hasattr(model, "serve"):
        ways["serve (tf.function)"] = lambda: model.serve(x)
    ways["eager tf.identity"] = lambda: tf.identity(x)  # the floor of any call on this machine right now
    out = {}
    for name, call in ways.items():
        for _ in range(min(200, calls)):  # warm-up
            call()
        ms, c0 = [], time.process_time()
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            call()
            ms.append((time.perf_counter_ns() - t0) / 1e6)
        out[name] = {q: float(np.percentile(ms, p)) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
        # Process CPU per call (all threads; includes TensorFlow's thread-pool spinning): less sensitive
        # than wall time to other jobs taking the cores.
        out[name].update(mean=float(np.mean(ms)), cpu=(time.process_time() - c0) * 1e3 / calls)
    return {"latency": out}


def child_inprocess(run: Path, transfer: Path, out: Path, samples: int, seed: int) -> dict:
    """The plain loop: per row group one predictive_seeded call, then a Parquet row group out."""
    import pyarrow.parquet as pq
    import tensorflow as tf
    from apache_beam.ml.inference.base import PredictionResult

    from beam_pipelines.predictive_handler import to_soft_label_table
    from distill.transfer import soft_label_arrow_schema

    features, task = run_meta(run)
    arrow_schema = soft_label_arrow_schema(features, task)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    model = tf.saved_model.load(str(schema.teacher_export(run)))
    fn = model.signatures["predictive_seeded"]
    s, sd = tf.constant(samples, tf.int32), tf.constant(seed, tf.int64)
    rows, src = 0, pq.ParquetFile(transfer)
    with pq.ParquetWriter(str(out / f"{schema.SOFT_LABEL_PREFIX}-00000-of-00001.parquet"), arrow_schema) as writer:
        for g in range(src.num_row_groups):
            table = src.read_row_group(g)
            pred = fn(features=tf.constant(features_of(table, features)), num_samples=s, seed=sd)
            # The same table assembly as the Beam job's workers: only the runner differs.
            result = PredictionResult(table, {name: pred[name].numpy() for name in task.outputs})
            writer.write_table(to_soft_label_table(result, samples, arrow_schema))
            rows += table.num_rows
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"rows": rows, "seconds": seconds, "cpu": cpu, "row_groups": src.num_row_groups,
            "digest": soft_labels_digest(out, task)}


def child_beam(run: Path, transfer: Path, out: Path, samples: int, seed: int, beam_args: list[str]) -> dict:
    import tensorflow as tf  # noqa: F401  (imported before the clock starts, as in the loop)

    from beam_pipelines import soft_labels

    _, task = run_meta(run)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    m = soft_labels.run(["--transfer", str(transfer), "--export", str(schema.teacher_export(run).resolve()),
                         "--dataset_json", str(schema.data_dir(run) / "dataset.json"), "--output", str(out),
                         "--samples", str(samples), "--seed", str(seed), *beam_args])
    # Count what run() adds around the job too (export check, read-back of the shards, manifest).
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"rows": m["rows"], "seconds": seconds, "cpu": cpu, "job_seconds": m["job_seconds"],
            "shards": len(m["shards"]), "digest": soft_labels_digest(out, task)}


# ---------------------------------------------------------------- the launcher


def measure(mode: str, a: argparse.Namespace, transfer: Path | None, beam_args: list[str] = ()) -> dict:
    """Run one measurement in a fresh process; returns its figures plus its peak memory."""
    with tempfile.TemporaryDirectory(prefix="bench-out-") as out:
        cmd = [sys.executable, __file__, "--child", mode, "--run", str(a.run), "--out", out,
               "--samples", str(a.samples), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
               "--calls", str(a.calls), "--latency-calls", str(a.latency_calls)]
        if transfer is not None:
            cmd += ["--transfer", str(transfer)]
        done = subprocess.run([*cmd, "--", *beam_args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(repeats: int, mode: str, a, transfer, beam_args=()) -> dict:
    """Repeats: the fastest wall time (the least disturbed by other jobs) and CPU time, the highest memory."""
    runs = [measure(mode, a, transfer, beam_args) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "cpu": min(r["cpu"] for r in runs)}


def report_compute(a, tmp: Path) -> int:
    transfer = make_transfer(a.run, a.batch_size, tmp / "compute.parquet", a.batch_size)
    r = measure("compute", a, transfer)
    flops, n = r["flops_per_row_draw"], r["rows"]
    peak = max(r["peak_gflops"])
    best, median = min(r["seconds"]), sorted(r["seconds"])[len(r["seconds"]) // 2]
    gflops = n * a.samples * flops / best / 1e9
    net = "-".join([str(r["layers"][0][0])] + [str(o) for _, o in r["layers"]])
    print(f"\n(a) in-process `predictive`, one batch of {n} rows, S={a.samples}, {a.calls} calls ({load()}):")
    print(f"  network {net}: {flops} FLOP per row and draw ({flops / 1e3:.1f} kFLOP)")
    print(f"  rows/s {n / best:.0f} (best call {best:.2f} s, median {median:.2f} s, "
          f"CPU {min(r['cpu']):.2f} s per call on {os.cpu_count()} cores)")
    print(f"  achieved {gflops:.2f} GFLOP/s = {gflops / peak:.1%} of the matmul peak "
          f"{peak:.1f} GFLOP/s ({MATMUL_N}^2 float32, before/after: "
          f"{r['peak_gflops'][0]:.1f}/{r['peak_gflops'][1]:.1f})   peak RSS {r['peak_rss_mb']:.0f} MB")
    return flops


def report_latency(a) -> float | None:
    r = measure("latency", a, None)
    draws = read_json(schema.teacher_dir(a.run) / "config.json").get("teacher", {}).get("serving_samples", "?")
    print(f"\n(c) single-row latency, serving_default ({draws} draws), {a.latency_calls} calls after warm-up ({load()}):")
    for name, q in r["latency"].items():
        print(f"  {name:22s} p50 {q['p50']:.3f} ms  p95 {q['p95']:.3f} ms  p99 {q['p99']:.3f} ms  mean {q['mean']:.3f} ms"
              f"  (CPU {q['cpu']:.3f} ms per call)")
    return r["latency"]["serving_default"]["p95"]


def report_sweep(a, tmp: Path, beam_args: list[str]) -> None:
    print(f"\nbatch-size sweep, Beam job, {a.tune_rows} rows, S={a.samples} ({load()}):")
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        transfer = make_transfer(a.run, a.tune_rows, tmp / f"tune-{bs}.parquet", bs)
        r = best_of(a.repeats, "beam", a, transfer, beam_args)
        print(f"  batch {bs:6d}: {r['rows'] / r['seconds']:8.0f} rows/s ({r['seconds']:.1f} s wall, "
              f"job {r['job_seconds']:.1f} s, {r['cpu']:.1f} s CPU, {r['peak_rss_mb']:.0f} MB)")


def report_jobs(a, tmp: Path, beam_args: list[str], flops: int | None) -> dict:
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else [a.rows // 4, a.rows]
    print(f"\n(b) Beam job vs in-process loop, batch (row group) {a.batch_size}, S={a.samples}, seed {a.seed}, "
          f"best of {a.repeats}:")
    print(f"{'rows':>8} {'loop rows/s':>12} {'beam rows/s':>12} {'wall beam/loop':>15} {'CPU beam/loop':>14}"
          f" {'loop MB':>8} {'beam MB':>8} {'same labels':>12}")
    worst = {"ratio": 0.0, "rss": 0.0, "largest": None}
    for n in sizes:
        transfer = make_transfer(a.run, n, tmp / f"transfer-{n}.parquet", a.batch_size)
        runs = {"inprocess": [], "beam": []}
        for _ in range(a.repeats):  # interleaved, so both see the same background load
            for mode in runs:
                runs[mode].append(measure(mode, a, transfer, beam_args if mode == "beam" else []))
        loop, job = (min(runs[m], key=lambda r: r["seconds"]) for m in ("inprocess", "beam"))
        mem = {m: max(r["peak_rss_mb"] for r in runs[m]) for m in runs}
        assert loop["rows"] == job["rows"] == n, (loop, job)
        same = len({r["digest"] for rs in runs.values() for r in rs}) == 1
        ratio = job["seconds"] / loop["seconds"]
        worst = {"ratio": max(worst["ratio"], ratio), "rss": max(worst["rss"], mem["beam"]), "largest": (n, ratio)}
        gf = f", loop {n * a.samples * flops / loop['seconds'] / 1e9:.2f} GFLOP/s" if flops else ""
        print(f"{n:8d} {n / loop['seconds']:12.0f} {n / job['seconds']:12.0f} {ratio:15.2f}"
              f" {job['cpu'] / loop['cpu']:14.2f} {mem['inprocess']:8.0f} {mem['beam']:8.0f} {'yes' if same else 'NO':>12}"
              f"   (loop {loop['seconds']:.1f} s; beam {job['seconds']:.1f} s, of which the job {job['job_seconds']:.1f} s,"
              f" job-only ratio {job['job_seconds'] / loop['seconds']:.2f}{gf}; {load()})")
    return worst


def main() -> None:
    argv = sys.argv[1:]
    beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/iris"), help="Run folder with a trained teacher.")
    p.add_argument("--rows", type=int, default=200_000, help="Largest transfer-set size.")
    p.add_argument("--sizes", default=None, help="Comma-separated sizes (default: rows/4 and rows).")
    p.add_argument("--samples", type=int, default=100, help="S, weight draws per row.")
    p.add_argument("--seed", type=int, default=0, help="The Beam job's seed (the loop uses the same).")
    p.add_argument("--batch-size", type=int, default=16_384,
                   help="Rows per predictive call: the transfer set's row-group size, both sides.")
    p.add_argument("--batch-sizes", default="4096,16384,65536", help="Beam batch sizes to sweep ('' to skip).")
    p.add_argument("--tune-rows", type=int, default=60_000, help="Rows for the batch-size sweep.")
    p.add_argument("--repeats", type=int, default=1, help="Measure each job point this many times, keep the fastest.")
    p.add_argument("--calls", type=int, default=5, help="Timed `predictive` calls in the compute part.")
    p.add_argument("--latency-calls", type=int, default=2000, help="Timed single-row serving calls.")
    p.add_argument("--skip", default="", help="Comma-separated parts to skip: compute, latency, sweep, jobs.")
    p.add_argument("--child", choices=["beam", "inprocess", "compute", "latency"], help=argparse.SUPPRESS)
    p.add_argument("--transfer", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child:
        if a.child == "beam":
            result = child_beam(a.run, a.transfer, a.out, a.samples, a.seed, beam_args)
        elif a.child == "inprocess":
            result = child_inprocess(a.run, a.transfer, a.out, a.samples, a.seed)
        elif a.child == "compute":
            result = child_compute(a.run, a.transfer, a.samples, a.batch_size, a.calls)
        else:
            result = child_latency(a.run, a.latency_calls)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return

    if not (schema.teacher_export(a.run) / "saved_model.pb").exists():
        sys.exit(f"{a.run} has no teacher export; run `bdk teacher --out {a.run}` first")
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    unknown = skip - {"compute", "latency", "sweep", "jobs"}
    if unknown:
        sys.exit(f"--skip: unknown part(s) {sorted(unknown)}")
    print(f"teacher {schema.teacher_export(a.run)}, S={a.samples} draws, batch {a.batch_size}, "
          f"beam options {beam_args or '(FnApiRunner)'}; {os.cpu_count()} cores, {load()}")
    flops, p95, worst = None, None, None
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        tmp = Path(tmp)
        if "compute" not in skip:
            flops = report_compute(a, tmp)
        if "latency" not in skip:
            p95 = report_latency(a)
        if a.batch_sizes and "sweep" not in skip:
            report_sweep(a, tmp, beam_args)
        if "jobs" not in skip:
            worst = report_jobs(a, tmp, beam_args, flops)
    goals = []
    if worst:
        n, ratio = worst["largest"]
        goals.append(f"Beam wall / loop wall {ratio:.2f} at {n} rows, worst {worst['ratio']:.2f} over sizes "
                     f"(goal <= {GOAL_WALL_RATIO}: {'met' if ratio <= GOAL_WALL_RATIO else 'NOT met'} at {n} rows)")
        goals.append(f"Beam peak RSS {worst['rss']:.0f} MB (goal <= {GOAL_RSS_MB}: "
                     f"{'met' if worst['rss'] <= GOAL_RSS_MB else 'NOT met'})")
    if p95 is not None:
        goals.append(f"serving p95 {p95:.3f} ms (goal <= {GOAL_P95_MS}: {'met' if p95 <= GOAL_P95_MS else 'NOT met'})")
    if goals:
        print("\ngoals: " + "; ".join(goals))
    print(f"{load()} at the end")


if __name__ == "__main__":
    main()

"""The soft-label job on Beam's DaskRunner against a real `distributed` cluster on loopback: a scheduler and two
worker processes, driven through `bdk soft-labels -- --runner=DaskRunner --dask_client_address=...`. Its rows
must be the embedded runner's, bit for bit (the job's seed fixes the teacher's draws), and the cluster must be
gone afterwards.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distill import schema, tasks
from bdk.cli import app
from distill.transfer import read_soft_labels

CLS = tasks.get("classification")
S = 10
BATCH = 40  # rows per row group: the ~400-row transfer set below is about ten Dask tasks
SMALL = ["--perturbations", "2", "--interpolations", "20", "--uniform", "30", "--shell", "20", "--samples", str(S),
         "--batch-size", str(BATCH), "--no-progress"]


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture
def dask_cluster(tmp_path):
    """A `distributed` scheduler and two single-threaded workers, each its own process (no nanny), on 127.0.0.1.

    Yields the scheduler address as soon as the scheduler is up: the workers import what the job's tasks need
    (--preload: Beam and TensorFlow, ~20 s on 2 busy cores) while the test does other work, and register after.
    Afterwards shuts the cluster down and checks that all three processes exited."""
    import distributed
    import psutil

    scheduler_file, logs = tmp_path / "scheduler.json", tmp_path / "dask-logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT)

    try:
        start("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(scheduler_file))
        deadline = time.time() + 60
        while not (scheduler_file.exists() and scheduler_file.stat().st_size):
            assert procs["scheduler"].poll() is None and time.time() < deadline, _log_tail(logs / "scheduler.log")
            time.sleep(0.1)
        for i in range(2):  # started after the scheduler, which would otherwise start as slowly as they do
            start(f"worker{i}", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                  "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(tmp_path / f"worker{i}"),
                  "--preload", "beam_pipelines.predictive_handler", "--preload", "tensorflow")
        yield json.loads(scheduler_file.read_text())["address"]

        children = [c.pid for p in procs.values() if p.poll() is None for c in psutil.Process(p.pid).children()]
        assert [p.poll() for p in procs.values()] == [None] * 3 and not children, (procs, children)
        # The scheduler tells its workers to close, then closes. (SIGTERM to workers and scheduler at once can
        # leave a worker hung in its close: distributed 2026.8.)
        distributed.Client(scheduler_file=str(scheduler_file), timeout=30).shutdown()
        for p in procs.values():
            p.wait(timeout=30)
        mine = [q.pid for q in psutil.process_iter(["cmdline"]) if str(scheduler_file) in " ".join(q.info["cmdline"] or [])]
        assert not mine, mine  # no process of this cluster is left anywhere
    finally:
        for p in procs.values():  # after a failure: make sure nothing outlives the test
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def test_dask_runner_gives_the_embedded_runners_rows(copy_run, dask_cluster):
    import distributed
    import pandas as pd
    import pyarrow.parquet as pq

    from beam_pipelines.soft_labels import DASK_RUNNER

    def label(run: Path, *beam_args: str) -> tuple[pd.DataFrame, dict]:
        result = CliRunner().invoke(app, ["soft-labels", "--run", str(run), *SMALL, "--", *beam_args])
        assert result.exit_code == 0, (result.output, result.stderr)
        return read_soft_labels(run)

    reference = copy_run("embedded")
    base, embedded = label(reference)  # in-process, while the Dask workers warm up
    assert embedded["runner"] == "FnApiRunner"
    with distributed.Client(dask_cluster, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    run = copy_run("dask")
    beam_args = ("--runner=DaskRunner", f"--dask_client_address={dask_cluster}")
    df, manifest = label(run, *beam_args)
    with pytest.raises(ValueError):
        distributed.default_client()  # the job closed its client
    assert manifest["runner"] == DASK_RUNNER and manifest["beam_args"] == list(beam_args)
    assert manifest["pipeline_options"]["partition_size"] == 1  # one Dask task per row group
    groups = pq.ParquetFile(schema.transfer_path(run)).metadata.num_row_groups
    assert groups >= 8 and len(manifest["shards"]) == groups  # one shard per row group, none lost

    # The same transfer set (same seed), labelled with the same draws: the same rows and the same bits.
    pd.testing.assert_frame_equal(pd.read_parquet(schema.transfer_path(run)), pd.read_parquet(schema.transfer_path(reference)))
    assert manifest["rows"] == embedded["rows"] == len(df) and manifest["seed"] == embedded["seed"]
    assert list(df["id"]) == list(base["id"]) and list(df["source"]) == list(base["source"])
    cols = ["label", *manifest["feature_names"]]
    np.testing.assert_array_equal(df[cols].to_numpy(), base[cols].to_numpy())
    for k in CLS.outputs:
        a, b = (np.stack(d[k].to_numpy()) if k in CLS.vector_outputs else d[k].to_numpy() for d in (df, base))
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert (df["num_samples"] == S).all()

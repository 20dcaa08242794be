"""The soft-label job on Beam's DaskRunner against a real `distributed` cluster on loopback: a scheduler and two
worker processes, driven through `bdk soft-labels -- --runner=DaskRunner --dask_client_address=...`. Its rows
must be the embedded runner's, bit for bit (the job's seed fixes the teacher's draws), and the cluster must be
gone afterwards.
"""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distill import schema, tasks
from distill.cli import app
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
    Yields the scheduler address; afterwards checks that every one of those processes has exited."""
    import distributed
    import psutil

    scheduler_file, logs = tmp_path / "scheduler.json", tmp_path / "dask-logs"
    logs.mkdir()
    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs.append((name, subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT)))

    try:
        start("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(scheduler_file))
        deadline = time.time() + 60
        while not (scheduler_file.exists() and scheduler_file.stat().st_size):
            assert procs[0][1].poll() is None and time.time() < deadline, _log_tail(logs / "scheduler.log")
            time.sleep(0.1)
        for i in range(2):
            start(f"worker{i}", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                  "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(tmp_path / f"worker{i}"))
        with distributed.Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield address
        tree = [psutil.Process(p.pid) for _, p in procs if p.poll() is None]
        tree += [c for p in tree for c in p.children(recursive=True)]
    finally:
        for _, p in reversed(procs):  # workers first, then the scheduler
            p.terminate()
        for name, p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
                pytest.fail(f"dask {name} ignored SIGTERM: {_log_tail(logs / f'{name}.log')}")
    assert len(tree) == 3, [p.cmdline() for p in tree]  # they were all still up, and had no children
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [p.pid for p in alive]


def test_dask_runner_gives_the_embedded_runners_rows(copy_run, dask_cluster, tmp_path):
    import distributed
    import pandas as pd
    import pyarrow.parquet as pq

    from beam_pipelines import soft_labels as job

    run = copy_run("dask")
    beam_args = ["--runner=DaskRunner", f"--dask_client_address={dask_cluster}"]
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["soft-labels", "--run", str(run), *SMALL, "--", *beam_args])
    assert result.exit_code == 0, (result.output, result.stderr)
    dask_seconds = time.perf_counter() - started
    df, manifest = read_soft_labels(run)
    assert manifest["runner"] == job.DASK_RUNNER and manifest["beam_args"] == beam_args
    assert manifest["pipeline_options"]["partition_size"] == 1  # one Dask task per row group
    transfer = schema.transfer_path(run)
    groups = pq.ParquetFile(transfer).metadata.num_row_groups
    assert groups >= 8 and len(manifest["shards"]) == groups  # one shard per row group, none lost
    with pytest.raises(ValueError):
        distributed.default_client()  # the job closed its client

    # The embedded runner on the same transfer file, with the same draws and seed.
    m = job.run(["--transfer", str(transfer), "--export", str(schema.teacher_export(run)),
                 "--dataset_json", str(schema.data_dir(run) / "dataset.json"), "--output", str(tmp_path / "embedded"),
                 "--num_samples", str(S), "--seed", str(manifest["seed"])])
    assert m["runner"] == "FnApiRunner" and m["rows"] == manifest["rows"] == len(df)
    base = pd.concat([pd.read_parquet(tmp_path / "embedded" / s) for s in m["shards"]]).set_index("id").loc[df["id"]]
    np.testing.assert_array_equal(df["source"].to_numpy(), base["source"].to_numpy())
    cols = ["label", *manifest["feature_names"]]
    np.testing.assert_array_equal(df[cols].to_numpy(), base[cols].to_numpy())
    for k in CLS.outputs:  # one seed, one batching: the same bits on both runners
        a, b = (np.stack(d[k].to_numpy()) if k in CLS.vector_outputs else d[k].to_numpy() for d in (df, base))
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert (df["num_samples"] == S).all()
    print(f"dask job via the CLI: {dask_seconds:.1f} s, {manifest['job_seconds']:.1f} s in the job; "
          f"embedded job {m['job_seconds']:.1f} s")

"""The red-team list of issue 26, one test (or a few) per defect: safe --overwrite, whole-stage flock locks with
real processes and SIGKILL, a gate that refuses non-finite or non-normalised values, one-line errors, workers that
die with the job, deterministic fingerprints, stable output columns. Fast: they reuse the session's runs."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bdk.cli import app
from distill.errors import RUN_MARKER, BdkError, atomic_dir, check_output_folder, lock_file, path_lock

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(r, *needles: str) -> str:
    """Exit code 1, exactly one `error:` line, no traceback; returns that line."""
    assert r.exit_code == 1, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def regression_copy(regression_run, tmp_path):
    """A private copy of the session's whole regression run (teacher, soft labels, student, report)."""
    dst = tmp_path / "run"
    shutil.copytree(regression_run, dst)
    return dst


# ---------------------------------------------------------------- 4: --overwrite replaces only a run folder


def test_overwrite_refuses_a_folder_bdk_did_not_make(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "important.txt").write_text("x")
    one_error(cli("teacher", "--dataset", "iris", "--out", d, "--overwrite"), "not a bdk run folder", RUN_MARKER)
    assert (d / "important.txt").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    f = tmp_path / "file"
    f.write_text("y")
    one_error(cli("teacher", "--dataset", "iris", "--out", f, "--overwrite"), "is a file")
    assert f.read_text() == "y"


def test_overwrite_of_the_current_folder_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path)):
        one_error(cli("teacher", "--dataset", "iris", "--out", out, "--overwrite"), "current folder")
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_overwrite_accepts_run_folders_old_and_new_and_empty_ones(tmp_path, teacher_run):
    assert (teacher_run / RUN_MARKER).is_file()  # every run folder a stage makes carries the marker
    check_output_folder(teacher_run, overwrite=True)
    old = tmp_path / "old"  # a run folder made before the marker: recognised by its layout
    (old / "data").mkdir(parents=True)
    (old / "data" / "dataset.json").write_text("{}")
    check_output_folder(old, overwrite=True)
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", overwrite=True)
    with pytest.raises(BdkError, match="already exists"):
        check_output_folder(teacher_run, overwrite=False)


def test_run_folders_have_the_users_mode_not_0700(teacher_run, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(teacher_run.stat().st_mode) == 0o777 & ~umask
    with atomic_dir(tmp_path / "stage") as tmp:
        (tmp / "x").write_text("ok")
    assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == 0o777 & ~umask


def test_an_output_folder_on_a_read_only_parent_is_one_line(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes through 0555: make the permission check see what any other user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    try:
        one_error(cli("teacher", "--dataset", "iris", "--out", ro / "run"), "cannot write into", "permission denied")
        (tmp_path / "file").write_text("not a folder")
        one_error(cli("teacher", "--dataset", "iris", "--out", tmp_path / "file" / "run"), "cannot create")
    finally:
        ro.chmod(0o755)
    assert not (ro / "run").exists()


def test_os_errors_while_writing_a_stage_folder_are_one_line(tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(BdkError, match="cannot write .*Permission denied"):
        with atomic_dir(tmp_path / "x"):
            pass


# ---------------------------------------------------------------- 3, 6: flock locks, real processes, SIGKILL

HOLDER = """
import sys, time
from pathlib import Path
from distill.errors import path_lock
with path_lock(Path(sys.argv[1]), shared=sys.argv[2] == "shared"):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold(target: Path, shared: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), "shared" if shared else "exclusive"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_lock_is_free_the_moment_its_holder_is_killed(tmp_path):
    target = tmp_path / "soft_labels"
    writer = hold(target)
    try:
        with pytest.raises(BdkError, match=rf"being written by another bdk process \(pid {writer.pid} "):
            with path_lock(target):
                pass
        with pytest.raises(BdkError, match="being written"):  # a reader is refused too
            with path_lock(target, shared=True):
                pass
    finally:
        kill(writer)
    assert lock_file(target).exists()  # SIGKILL left the file; the kernel dropped the lock
    t0 = time.monotonic()
    with path_lock(target):
        pass
    assert time.monotonic() - t0 < 0.5 and not lock_file(target).exists()


def test_readers_share_and_keep_writers_out(tmp_path):
    target = tmp_path / "soft_labels"
    reader = hold(target, shared=True)
    try:
        with path_lock(target, shared=True):  # a second reader is welcome
            pass
        with pytest.raises(BdkError, match="in use by another bdk process"):
            with path_lock(target):
                pass
    finally:
        kill(reader)
    with path_lock(target):
        pass


# the same ids in every xdist worker (a pid in a parameter would differ between them): the live pid is filled in below
@pytest.mark.parametrize("content", ["", "garbage\x00\xff", "1 " + os.uname().nodename, "{pid} otherhost"],
                         ids=["empty", "garbage", "pid-1", "live-pid-other-host"])
def test_a_left_over_lock_file_never_blocks(tmp_path, content):
    """Empty, garbage, pid 1 of another pid namespace, a live (reused) pid: only a held flock blocks."""
    target = tmp_path / "student"
    lock_file(target).write_text(content.replace("{pid}", str(os.getpid())), errors="surrogateescape")
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("ok")
    assert (target / "x").read_text() == "ok" and not lock_file(target).exists()


STAGE = """
import sys, time
from pathlib import Path
import student.train
def reading(cfg, run, progress=True):
    print("reading", flush=True)
    time.sleep(120)
student.train.distil_student = reading
from bdk.pipeline import student_stage
from student.config import StudentConfig
student_stage(StudentConfig(), Path(sys.argv[1]), progress=False)
"""


def test_a_stage_holds_its_locks_from_reading_its_inputs_to_the_end(regression_copy):
    """While `student` reads the soft labels (a real process, stopped mid-read): a second student, a soft-labels run
    that would replace its labels and a teacher --overwrite of the run are each refused with one line."""
    run = regression_copy
    manifest = (run / "soft_labels" / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", STAGE, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "reading"
        one_error(cli("student", "--run", run), "being written by another bdk process", f"pid {proc.pid}")
        one_error(cli("soft-labels", "--run", run, "--seed", "7"), "in use by another bdk process")
        one_error(cli("teacher", "--dataset", "iris", "--out", run, "--overwrite"), "in use by another bdk process")
        assert (run / "soft_labels" / "manifest.json").read_bytes() == manifest
    finally:
        kill(proc)
    with path_lock(run), path_lock(run / "soft_labels"), path_lock(run / "student"):
        pass  # all free again after SIGKILL


# ---------------------------------------------------------------- 2: the gate checks values


def _edit_shard(run: Path, edit) -> Path:
    import pyarrow.parquet as pq

    manifest = json.loads((run / "soft_labels" / "manifest.json").read_text())
    shard = run / "soft_labels" / manifest["shards"][0]
    table = pq.read_table(shard)
    pq.write_table(edit(table), shard)
    return shard


def test_a_nan_soft_label_fails_the_student_with_one_line(regression_copy):
    import pyarrow as pa

    def nan_row(table):
        mean = table.column("mean").to_numpy().copy()
        mean[3] = np.nan
        return table.set_column(table.column_names.index("mean"), "mean", pa.array(mean, table.schema.field("mean").type))

    _edit_shard(regression_copy, nan_row)
    before = sorted(p.name for p in (regression_copy / "student").iterdir())
    one_error(cli("student", "--run", regression_copy, "--no-gate"), "mean of row 3", "NaN")
    one_error(cli("evaluate", "--run", regression_copy), "NaN")
    assert sorted(p.name for p in (regression_copy / "student").iterdir()) == before


def test_soft_label_values_are_checked():
    from distill import tasks
    from distill.validate import check_soft_label_arrays

    cat = tasks.get("classification")
    good = {"probs": np.array([[0.2, 0.8], [0.5, 0.5]], np.float32), "entropy": np.array([0.5, 0.69], np.float32)}
    check_soft_label_arrays(good, cat, "part-0")
    for bad, match in (({**good, "probs": np.array([[0.2, 0.7], [0.5, 0.5]])}, "not a probability vector"),
                       ({**good, "probs": np.array([[1.5, -0.5], [0.5, 0.5]])}, "not a probability vector"),
                       ({**good, "probs": np.array([[np.nan, 1.0], [0.5, 0.5]])}, "NaN or infinity"),
                       ({**good, "entropy": np.array([0.5, np.inf])}, "entropy of row 1"),
                       ({**good, "entropy": np.array([-1.0, 0.5])}, "negative")):
        with pytest.raises(BdkError, match=match):
            check_soft_label_arrays(bad, cat, "part-0")


def test_non_finite_metrics_are_named():
    from distill.validate import check_finite_metrics

    check_finite_metrics({"val/nll": 0.3, "gate": {"passed": True, "failures": []}, "task": "classification"}, "student")
    with pytest.raises(BdkError, match=r"student: metric val/nll is nan"):
        check_finite_metrics({"val/accuracy": 0.9, "val/nll": float("nan"), "val/ece": float("inf")}, "student")
    with pytest.raises(BdkError, match=r"metric cost.latency\[1\] is inf"):
        check_finite_metrics({"cost": {"latency": [1.0, np.float32("inf")]}}, "report")


# ---------------------------------------------------------------- 8, 10: one-line errors on broken soft labels


def _truncate(run):
    manifest = json.loads((run / "soft_labels" / "manifest.json").read_text())
    shard = run / "soft_labels" / manifest["shards"][0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _garbage(run):
    manifest = json.loads((run / "soft_labels" / "manifest.json").read_text())
    (run / "soft_labels" / manifest["shards"][0]).write_bytes(b"PAR1 not parquet at all" * 10)


def _bad_manifest(run):
    (run / "soft_labels" / "manifest.json").write_text('{"shards": ["part-0')


def _no_transfer(run):
    (run / "soft_labels" / "transfer.parquet").unlink()


def _edit_manifest(key, change):
    def edit(run):
        path = run / "soft_labels" / "manifest.json"
        m = json.loads(path.read_text())
        m[key] = change(m[key])
        path.write_text(json.dumps(m))
    return edit


@pytest.mark.parametrize("breakage,needles", [
    (_truncate, ["unreadable", "truncated"]),
    (_garbage, ["unreadable"]),
    (_bad_manifest, ["manifest.json is not valid JSON"]),
    (_no_transfer, ["transfer.parquet is missing"]),
    (_edit_manifest("rows", lambda n: n + 1), ["rows but the shards hold"]),
    (_edit_manifest("rows_per_source", lambda d: {**d, "uniform": d["uniform"] + 5, "train": d["train"] - 5}),
     ["rows per source"]),
], ids=["truncated-shard", "garbage-shard", "invalid-manifest", "missing-transfer", "rows", "rows-per-source"])
def test_broken_soft_labels_are_one_line(regression_copy, breakage, needles):
    breakage(regression_copy)
    one_error(cli("student", "--run", regression_copy, "--no-gate"), *needles)
    one_error(cli("evaluate", "--run", regression_copy), *needles)


# ---------------------------------------------------------------- 8: one-line errors on bad data, before training


@pytest.mark.parametrize("value,needles", [("inf", ["non-finite values in data rows 5"]),
                                           ("-inf", ["non-finite values in data rows 5"]),
                                           ("1e30", ["beyond ±1e+15", "data rows 5"])])
def test_a_regression_target_with_inf_or_1e30_is_one_line_before_training(tmp_path, value, needles):
    from conftest import regression_frame

    df = regression_frame(60)
    df["y"] = df["y"].astype(object)
    df.loc[4, "y"] = value
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    t0 = time.monotonic()
    one_error(cli("teacher", "--dataset", path, "--label-column", "y", "--task", "regression", "--out", tmp_path / "run"),
              *needles)
    assert time.monotonic() - t0 < 5 and not (tmp_path / "run").exists()


def test_an_npz_with_an_empty_time_axis_is_one_line(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((60, 0, 2), np.float32), y=np.arange(60) % 2)
    one_error(cli("teacher", "--dataset", path, "--out", tmp_path / "run"), "[60, 0, 2]", "at least one")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 10: fingerprints without the random uuid

EXPORT = """
import sys
import numpy as np
import distill
from distill import tasks
from teacher.export import MonteCarloModule, flipout_per_row, flipout_sampler
from teacher.model import build_flipout, dense_layers
m = build_flipout(4, 3, 96, (8,), 1.0, 1.0, -5.0, "normal", 0)
layers = dense_layers(m)
MonteCarloModule(tasks.get("classification"), flipout_sampler(layers), [m], np.zeros(4), np.ones(4),
                 per_row=flipout_per_row(layers)).save(sys.argv[1])
"""


def test_identical_teachers_share_one_fingerprint(tmp_path):
    """Two processes export the same teacher: byte-identical folders, fingerprint.pb included (TensorFlow's random
    uuid is replaced by a digest of the graph and the variables), hence one export fingerprint."""
    from tensorflow.core.protobuf import fingerprint_pb2

    from distill.transfer import export_fingerprint

    procs = [subprocess.Popen([sys.executable, "-c", EXPORT, str(tmp_path / name)], cwd=REPO,
                              stderr=subprocess.DEVNULL) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    a, b = ((tmp_path / n / "fingerprint.pb").read_bytes() for n in "ab")
    assert a == b and export_fingerprint(tmp_path / "a") == export_fingerprint(tmp_path / "b")
    proto = fingerprint_pb2.FingerprintDef()
    proto.ParseFromString(a)
    assert proto.uuid and proto.saved_model_checksum  # still a valid fingerprint, with TF's own hashes


# ---------------------------------------------------------------- 7: Beam workers die with the job


def _workers_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if ppid == pid and b"sdk_worker_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie is dead, awaiting its reaper


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_multi_process_beam_workers_die_with_a_killed_job(copy_run):
    run = copy_run()
    bdk = Path(sys.executable).parent / "bdk"
    job = subprocess.Popen([str(bdk), "soft-labels", "--run", str(run), "--samples", "5", "--perturbations", "1",
                            "--interpolations", "10", "--uniform", "100000", "--shell", "10", "--no-progress", "--",
                            "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
            workers = _workers_of(job.pid)
        assert len(workers) == 2, "the job did not start its two workers"
        assert all(os.getpgid(w) == os.getpgid(job.pid) for w in workers)  # in the job's process group
        job.send_signal(signal.SIGKILL)
        job.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived the killed job"
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


# ---------------------------------------------------------------- 10: bdk predict's columns in one order


def test_predict_writes_its_columns_in_one_order_in_every_process(teacher_run, tmp_path):
    from serving.predict import output_order

    assert output_order(["mutual_information", "variance", "probs", "zeta", "alpha"], "classification") == [
        "probs", "variance", "mutual_information", "alpha", "zeta"]
    bdk = Path(sys.executable).parent / "bdk"
    rows = tmp_path / "rows.csv"
    rows.write_text("SepalLengthCm,SepalWidthCm,PetalLengthCm,PetalWidthCm\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
    procs = [subprocess.Popen([str(bdk), "predict", str(teacher_run / "teacher" / "export"), str(rows), "--out",
                               str(tmp_path / f"out{seed}.csv"), "--no-progress"], cwd=REPO,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    headers = [(tmp_path / f"out{seed}.csv").read_text().splitlines()[0] for seed in (1, 2)]
    assert headers[0] == headers[1] and headers[0].split(",")[1] == "probs_Iris-setosa", headers

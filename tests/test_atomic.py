"""Crash hygiene of every stage's output folder (distill.errors.atomic_dir), with real processes: a writer
killed with SIGKILL leaves its temp folder, the next writer removes it; two writers of one folder at once
are refused, naming the other's pid; a lock whose process is gone is taken over."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import BdkError, atomic_dir

WRITER = """
import sys, time
from pathlib import Path
from distill.errors import atomic_dir
with atomic_dir(Path(sys.argv[1]), overwrite=True) as tmp:
    (tmp / "half.txt").write_text("half-written")
    print("writing", flush=True)
    time.sleep(60)
"""


def start_writer(final: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "writing"
    return proc


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_kill_9_mid_stage_then_rerun_leaves_no_temp_folder_and_keeps_the_old_output(tmp_path):
    final = tmp_path / "soft_labels"
    with atomic_dir(final) as tmp:
        (tmp / "done.txt").write_text("v1")
    writer = start_writer(final)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    left = hidden(tmp_path)
    assert any(n.startswith(".soft_labels.tmp-") for n in left) and ".soft_labels.lock" in left  # what a crash leaves
    assert (final / "done.txt").read_text() == "v1"  # the previous output is intact
    with atomic_dir(final, overwrite=True) as tmp:  # the rerun: takes the dead writer's lock, removes its temp folder
        (tmp / "done.txt").write_text("v2")
    assert hidden(tmp_path) == [] and (final / "done.txt").read_text() == "v2"


def test_a_second_concurrent_writer_is_refused_naming_the_first(tmp_path):
    final = tmp_path / "student"
    writer = start_writer(final)
    try:
        with pytest.raises(BdkError, match=rf"being written by another bdk process \(pid {writer.pid} "):
            with atomic_dir(final, overwrite=True):
                pass
        assert any(n.startswith(".student.tmp-") for n in hidden(tmp_path))  # the first writer's work is untouched
    finally:
        writer.kill()
        writer.wait()


def test_a_lock_of_a_finished_process_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / ".report.lock").write_text(f"{gone.pid} {os.uname().nodename}")
    with atomic_dir(tmp_path / "report") as tmp:
        (tmp / "x").write_text("ok")
    assert (tmp_path / "report" / "x").read_text() == "ok" and hidden(tmp_path) == []


def test_csv_files_read_back_to_the_same_values(tmp_path):
    """write_csv (Arrow's writer): float32 outputs in shortest round-trip form come back as the same float32 values;
    ids with commas and quotes, class names, integers, booleans and empty cells survive."""
    import numpy as np
    import pandas as pd

    from distill.errors import write_csv

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(3, 0.1), 500).astype(np.float32)  # tiny and near-one values
    frame = pd.DataFrame({"id": [f'row "{i}", part' for i in range(500)], "true_class": rng.choice(["a", "b c"], 500),
                          "prob_0": probs[:, 0], "prob_1": probs[:, 1], "count": np.arange(500),
                          "flag": np.arange(500) % 2 == 0, "score": np.where(np.arange(500) % 7, 1.5, np.nan)})
    back = pd.read_csv(write_csv(frame, tmp_path / "sub" / "p.csv"))
    for column in frame:
        values = back[column].to_numpy()
        if frame[column].dtype == np.float32:
            values = values.astype(np.float32)
        np.testing.assert_array_equal(values, frame[column].to_numpy(), err_msg=column)

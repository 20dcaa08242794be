"""Shared fixtures. The trained runs (a small real Iris teacher, a whole small regression run, a whole sequence
run, a whole Iris run) are made once per test session and reused read-only: under pytest-xdist the workers
share one copy of each (`built_once`), so a test file may use any of them without training it again."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fcntl  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402

import distill  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder NAME/run made by `build(path)` once per test session. Under pytest-xdist every worker asks for it:
    the first builds it under a file lock in the session's shared temporary folder, the others wait for it and
    reuse it (a failed build leaves no marker, so the next asker builds it again and sees the same failure)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.mktemp(name) / "run"
        build(path)
        return path
    root = tmp_path_factory.getbasetemp().parent / "built-once"  # the session's folder, above the workers' own
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the worker dies)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a half-built one from a failed build
            folder.mkdir()
            build(folder / "run")
            done.touch()
    return folder / "run"


@pytest.fixture(scope="session")
def iris():
    from distill import data

    return data.load(data.DataConfig())


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory) -> Path:
    """A run folder with data/ and teacher/ from a short real training on Iris. Do not modify it:
    copy it (`copy_run`) when a test writes into the run folder."""
    from distill.data import DataConfig
    from bdk.pipeline import teacher_stage
    from teacher.config import TeacherConfig

    return built_once(tmp_path_factory, "teacher", lambda run: teacher_stage(
        DataConfig(), TeacherConfig(epochs=60, patience=60, eval_samples=50), run, progress=False))


REGRESSION_ROWS = 200


def regression_frame(rows: int = REGRESSION_ROWS, seed: int = 0):
    """A synthetic regression table: y = 50 + 8 sin(2 x1) + 4 x2 + N(0, 1), x uniform on [-1, 1]^2."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (rows, 2))
    y = 50 + 8 * np.sin(2 * x[:, 0]) + 4 * x[:, 1] + rng.normal(0, 1, rows)
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "y": y})


@pytest.fixture(scope="session")
def regression_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("regression_data") / "synthetic.csv"
    regression_frame().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def regression_run(regression_csv, tmp_path_factory) -> Path:
    """A whole regression run through the common stages (teacher with the task inferred from the float label,
    soft labels, ungated student, evaluation) on the synthetic CSV, tiny settings. Read-only."""
    from distill.data import DataConfig
    from bdk.evaluate import EvalConfig
    from bdk.pipeline import evaluate_stage, soft_labels_stage, student_stage, teacher_stage
    from distill.transfer import SoftLabelConfig, TransferConfig
    from student.config import StudentConfig
    from teacher.config import TeacherConfig

    def build(run: Path):
        teacher_stage(DataConfig(dataset=str(regression_csv), label_column="y"),
                      TeacherConfig(epochs=60, patience=60, eval_samples=30), run, progress=False)
        soft_labels_stage(SoftLabelConfig(TransferConfig(perturbations=2, interpolations=60, uniform=100, shell=60),
                                          samples=20), run, progress=False)
        student_stage(StudentConfig(gate=False, epochs=150, patience_steps=100_000, baseline_epochs=30), run, progress=False)
        evaluate_stage(EvalConfig(samples=30, ood_rows=200, bootstrap=100, latency_calls=5), run, progress=False)

    return built_once(tmp_path_factory, "regression", build)


def cli_run(run: Path, *args):
    """`bdk run --out RUN ARGS` in process; a failure shows its output."""
    from typer.testing import CliRunner

    from bdk.cli import app

    result = CliRunner().invoke(app, ["run", "--out", str(run), *map(str, args)])
    assert result.exit_code == 0, (result.output[-3000:], repr(result.exception))


@pytest.fixture(scope="session")
def sequence_csv(tmp_path_factory) -> Path:
    """tests/sequence_data.py's 150 oscillators as a long table, rows shuffled (the time column sorts them)."""
    from sequence_data import long_frame, tiny_sequences

    x, y = tiny_sequences()
    path = tmp_path_factory.mktemp("sequences") / "oscillators.csv"
    long_frame(x, y).sample(frac=1.0, random_state=0).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def sequence_run(sequence_csv, tmp_path_factory) -> Path:
    """`bdk run` (Bayesian GRU teacher, soft labels, ungated student, evaluation) on the oscillators. Read-only."""
    return built_once(tmp_path_factory, "sequences", lambda run: cli_run(
        run, "--dataset", sequence_csv, "--series-column", "series", "--epochs", "60", "--samples", "20",
        "--perturbations", "2", "--interpolations", "50", "--uniform", "50", "--shell", "50", "--student-epochs", "15",
        "--no-gate", "--no-progress"))


IRIS_RUN = ["--epochs", "60", "--samples", "30", "--perturbations", "3", "--uniform", "300", "--interpolations", "100",
            "--shell", "200", "--student-epochs", "150", "--no-progress"]


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """`bdk run` on Iris with a small config (every stage, the gate on). Read-only: copy it to write into it."""
    return built_once(tmp_path_factory, "iris-run", lambda run: cli_run(run, *IRIS_RUN))


@pytest.fixture(scope="session")
def restore_flipout():
    """A function: run folder -> its trained Keras Flipout teacher, rebuilt from RUN/teacher/config.json and
    restored from RUN/teacher/weights (the layers the export samples its weights from)."""

    def restore(run: Path):
        import json

        import tensorflow as tf

        from distill import schema, tasks
        from teacher.model import build_flipout

        cfg = json.loads((schema.teacher_dir(run) / "config.json").read_text())
        t = cfg["teacher"]
        assert t["kind"] == "flipout", t["kind"]
        units = tasks.get(cfg["task"]).head_units(cfg["num_classes"])
        extra = {"prior": t["prior"]} if "prior" in t else {}
        model = build_flipout(cfg["num_features"], units, cfg["n_train"], tuple(t["hidden"]), t["kl_weight"],
                              t["prior_scale"], t["posterior_scale_init"], **extra)
        ckpt = tf.train.Checkpoint(models=[model]).read(str(schema.teacher_dir(run) / "weights" / "ckpt"))
        ckpt.assert_existing_objects_matched()
        return model

    return restore


def copier(src: Path, tmp_path: Path):
    """make(name) -> a private copy of the shared run `src` under tmp_path, safe to write into."""

    def make(name: str = "run") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return make


@pytest.fixture
def copy_run(teacher_run, tmp_path):
    """A private copy of the shared teacher run, safe to write into."""
    return copier(teacher_run, tmp_path)


@pytest.fixture(scope="session")
def student_base(tmp_path_factory) -> Path:
    """Base path of a deterministic stand-in student export with known outputs (tests/serving_fakes.py)."""
    from serving_fakes import save_linear_student

    base = tmp_path_factory.mktemp("student") / "export"
    save_linear_student(base)
    return base

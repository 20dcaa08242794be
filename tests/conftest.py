"""Shared fixtures. A small real teacher is trained once per session and reused read-only."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import distill  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def iris():
    from distill import data

    return data.load(data.DataConfig())


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory) -> Path:
    """A run folder with data/ and teacher/ from a short real training on Iris. Do not modify it:
    copy it (`copy_run`) when a test writes into the run folder."""
    from distill.data import DataConfig
    from distill.pipeline import teacher_stage
    from teacher.config import TeacherConfig

    run = tmp_path_factory.mktemp("shared") / "run"
    teacher_stage(DataConfig(), TeacherConfig(epochs=60, patience=60, eval_samples=50), run, progress=False)
    return run


@pytest.fixture
def copy_run(teacher_run, tmp_path):
    """A private copy of the shared teacher run, safe to write into."""

    def make(name: str = "run") -> Path:
        dst = tmp_path / name
        shutil.copytree(teacher_run, dst)
        return dst

    return make


@pytest.fixture(scope="session")
def student_base(tmp_path_factory) -> Path:
    """Base path of a deterministic stand-in student export with known outputs (tests/serving_fakes.py)."""
    from serving_fakes import save_linear_student

    base = tmp_path_factory.mktemp("student") / "export"
    save_linear_student(base)
    return base

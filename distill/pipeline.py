"""The stages in order, each reading and writing the run folder through `distill.schema`.

Heavy imports (TensorFlow, Beam) happen inside the stage functions, so input errors found while
reading data are reported before TensorFlow starts.
"""
from __future__ import annotations

from pathlib import Path

from distill import data as data_lib
from distill.errors import atomic_dir


def teacher_stage(data_cfg: data_lib.DataConfig, teacher_cfg, out: Path, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Stage 1: read and split the data, train, evaluate and export the teacher into a new run folder."""
    out = Path(out)
    if out.exists() and not overwrite:
        from distill.errors import BdkError
        raise BdkError(f"run folder {out} already exists; pass --overwrite to replace it or choose another --out")
    ds = data_lib.load(data_cfg)  # validates before anything is written or TensorFlow loads
    from distill.errors import write_json
    from teacher.train import train_teacher

    with atomic_dir(out, overwrite=overwrite) as tmp:
        data_lib.save(ds, tmp / "data")
        write_json(tmp / "data" / "config.json", data_cfg)
        summary = train_teacher(teacher_cfg, ds, tmp, progress=progress)
    return summary


def student_stage(student_cfg, run: Path, progress: bool = True) -> dict:
    """Stage 3: distil the student (and the hard-label baseline) from RUN/soft_labels; gate; export."""
    from student.train import distil_student

    return distil_student(student_cfg, _existing_run(run), progress=progress)


def evaluate_stage(eval_cfg, run: Path, progress: bool = True) -> dict:
    """Compare teacher, student and baseline from their exports; write RUN/report."""
    from distill.evaluate import evaluate_run

    return evaluate_run(eval_cfg, _existing_run(run), progress=progress)


def _existing_run(run: Path) -> Path:
    run = Path(run)
    if not run.is_dir():
        from distill.errors import BdkError
        raise BdkError(f"run folder {run} does not exist; create it with `bdk teacher --out {run}` (or `bdk run --out {run}`)")
    return run

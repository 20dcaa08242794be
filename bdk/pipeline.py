"""The stages in order, each reading and writing the run folder through `distill.schema`.

Heavy imports (TensorFlow, Beam) happen inside the stage functions, so input errors found while
reading data are reported before TensorFlow starts.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Sequence

from distill import data as data_lib
from distill import schema
from distill.features import encoding_spec
from distill.errors import BdkError, atomic_dir, check_output_folder, first_line, stage_locks, write_json


def with_seed(cfg, seed: int):
    """A stage's config at `seed`: the studies' one way to seed a run (the soft-label config seeds its transfer set;
    the Beam job's weight draws take that seed too)."""
    from dataclasses import replace

    from distill.transfer import SoftLabelConfig

    if isinstance(cfg, SoftLabelConfig):
        return replace(cfg, transfer=replace(cfg.transfer, seed=seed))
    return replace(cfg, seed=seed)


def teacher_stage(data_cfg: data_lib.DataConfig, teacher_cfg, out: Path, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Stage 1: read and split the data, train, evaluate and export the teacher into a new run folder.

    `--overwrite` replaces only a run folder (or an empty one); the run folder's lock is held from before the data
    is read to the rename, so a stage reading this run meanwhile makes it a one-line refusal."""
    out = Path(out)
    check_output_folder(out, overwrite)  # before the data is read or TensorFlow loads
    with stage_locks(write=out):
        ds = data_lib.load(data_cfg)  # validates before anything is written or TensorFlow loads
        if ds.task_note:  # the inferred task, its rule and the override: printed even without progress output
            print(ds.task_note, file=sys.stderr)
        if progress and encoding_spec(ds.feature_spec) is not None:
            print(ds.feature_spec.describe(), file=sys.stderr)
        with atomic_dir(out, overwrite=overwrite, marker=True) as tmp:
            data_lib.save(ds, tmp / "data")  # before TensorFlow loads, so that its transient memory adds to nothing
            write_json(tmp / "data" / "config.json", data_cfg)
            del ds  # the teacher reads the rows back from the run, split by split, as it needs them
            from teacher.train import train_teacher

            summary = train_teacher(teacher_cfg, tmp, progress=progress)
    return summary


def student_stage(student_cfg, run: Path, progress: bool = True) -> dict:
    """Stage 3: distil the student (and the hard-label baseline) from RUN/soft_labels; gate; export.

    Holds, from before the soft labels are read to the export: a shared lock on the run (no `teacher --overwrite`
    underneath) and on RUN/soft_labels (no `soft-labels` replacing them mid-read), the exclusive one on RUN/student."""
    run = _existing_run(run)
    with stage_locks(write=schema.student_dir(run), read=(run, schema.soft_labels_dir(run))):
        from distill.validate import check_soft_labels

        check_soft_labels(run)  # readable, counts as the manifest says, finite and normalised: before TensorFlow loads
        from student.train import distil_student

        return distil_student(student_cfg, run, progress=progress)


def evaluate_stage(eval_cfg, run: Path, progress: bool = True) -> dict:
    """Compare teacher, student and baseline from their exports; write RUN/report (locks as `student_stage`)."""
    run = _existing_run(run)
    with stage_locks(write=schema.report_dir(run), read=(run, schema.soft_labels_dir(run), schema.student_dir(run))):
        from distill.validate import check_soft_labels

        check_soft_labels(run)
        from bdk.evaluate import evaluate_run

        return evaluate_run(eval_cfg, run, progress=progress)


def _existing_run(run: Path) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise BdkError(f"run folder {run} does not exist; create it with `bdk teacher --out {run}` (or `bdk run --out {run}`)")
    return run


STAGES = ("teacher", "soft labels", "student", "evaluate")


def run_all(data_cfg: data_lib.DataConfig, teacher_cfg, soft_cfg, student_cfg, eval_cfg, out: Path,
            overwrite: bool = False, beam_args: list[str] | tuple = (), progress: bool = True,
            announce=lambda i, name: None) -> dict:
    """teacher -> soft labels -> student -> evaluation into one run folder; returns each stage's summary."""
    out = Path(out)
    summaries = {}
    announce(1, STAGES[0])
    summaries["teacher"] = teacher_stage(data_cfg, teacher_cfg, out, overwrite=overwrite, progress=progress)
    announce(2, STAGES[1])
    summaries["soft_labels"] = soft_labels_stage(soft_cfg, out, list(beam_args), progress=progress)
    announce(3, STAGES[2])
    summaries["student"] = student_stage(student_cfg, out, progress=progress)
    announce(4, STAGES[3])
    summaries["evaluate"] = evaluate_stage(eval_cfg, out, progress=progress)
    return summaries


def soft_labels_stage(cfg, run: Path, beam_args: Sequence[str] = (), progress: bool = True) -> Path:
    """Stage 2: build the transfer set and label it with the teacher's predictive in a Beam job.

    `cfg` is a distill.transfer.SoftLabelConfig; `beam_args` are Beam pipeline options (default: the
    embedded FnApiRunner). Everything is written into a temporary folder that replaces RUN/soft_labels
    only when the job succeeded and its rows were checked, so a rerun never mixes old and new shards.
    """
    run = _existing_run(run)
    with stage_locks(write=schema.soft_labels_dir(run), read=(run,)):
        return _soft_labels(cfg, run, beam_args, progress)


def _soft_labels(cfg, run: Path, beam_args: Sequence[str], progress: bool) -> Path:
    from distill import tasks
    from distill.transfer import build_transfer_set, feature_fields, resolved_soft_labels, write_transfer_set

    ds = data_lib.load_from_run(run, ("train",))  # the transfer set is made from the train split alone
    export = schema.teacher_export(run).resolve()
    if not (export / "saved_model.pb").exists():
        raise BdkError(f"{run} has no teacher export at {export}; run `bdk teacher --out {run}` first")
    cfg = resolved_soft_labels(cfg, tasks.get(ds.task), ds)  # sizes and draws for this table: config.json records them
    table = build_transfer_set(cfg.transfer, ds)  # input errors (e.g. the unlabeled file) before Beam/TF load

    from rich.console import Console

    from beam_pipelines import soft_labels as job

    status = Console(stderr=True).status if progress else None
    message = f"labelling {len(table)} rows with {cfg.samples} teacher draws each (Beam)"
    with atomic_dir(schema.soft_labels_dir(run), overwrite=True) as tmp, \
            (status(message) if status else contextlib.nullcontext()):
        write_transfer_set(table, tmp / schema.TRANSFER_FILE, feature_fields(ds.feature_names, ds.feature_spec),
                           tasks.get(ds.task), cfg.batch_size)
        del table, ds  # the Beam job reads the file: neither the transfer set nor the train split stays in memory
        write_json(tmp / "config.json", {"soft_labels": cfg, "beam_args": list(beam_args)})
        try:
            job.run_job(job.JobConfig(str(tmp / schema.TRANSFER_FILE), str(export),
                                      str(schema.data_dir(run).resolve() / "dataset.json"), str(tmp), cfg.samples,
                                      cfg.transfer.seed, tuple(beam_args)))
        except ValueError as e:  # Beam rejects pipeline options (e.g. an unknown runner) with ValueError
            raise BdkError(f"the Beam job did not start: {first_line(e)}; check the Beam options after `--`") from None
    return schema.soft_labels_dir(run)

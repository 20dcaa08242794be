"""The run folder: where each stage writes, and the names every stage agrees on.

One run folder holds one pipeline run; each stage reads only what earlier stages wrote here:

    RUN/data/            dataset.json (features, classes, scaler, label column), split.json (ids)
    RUN/teacher/         config.json, history.csv, metrics.json, {val,test}_predictions.csv,
                         weights/ckpt (to resume training), export/1/ (SavedModel, TF Serving layout)
    RUN/soft_labels/     transfer.parquet (the inputs), part-*.parquet (teacher predictive), manifest.json
    RUN/student/         config.json, history.csv, export/1/, student.tflite, baseline/export/1/
    RUN/report/          metrics.json, report.md, figures, per-example CSVs
"""
from __future__ import annotations

from pathlib import Path

from distill.errors import BdkError

EXPORT_VERSION = "1"  # TF Serving wants base_path/<integer version>/saved_model.pb
SEEDED_SIGNATURE = "predictive_seeded"  # a teacher export's predictive at S draws from a seed (teacher.export)
SEEDED_ROWS_SIGNATURE = "predictive_seeded_rows"  # the same on raw columns (tables whose feature specification encodes)

# Sources of transfer-set rows (stage 2).
SOURCES = ("train", "perturbed", "interpolated", "uniform", "shell", "unlabeled")
NO_LABEL = -1  # label of a transfer row that has no true class (regression: NaN)
ID_COLUMNS = ("id", "Id", "ID")  # a table's row id column, when it has one of these


def data_dir(run: Path) -> Path:
    return Path(run) / "data"


def teacher_dir(run: Path) -> Path:
    return Path(run) / "teacher"


def teacher_export(run: Path) -> Path:
    return teacher_dir(run) / "export" / EXPORT_VERSION


def soft_labels_dir(run: Path) -> Path:
    return Path(run) / "soft_labels"


def student_dir(run: Path) -> Path:
    return Path(run) / "student"


def student_export(run: Path) -> Path:
    return student_dir(run) / "export" / EXPORT_VERSION


def baseline_export(run: Path) -> Path:
    return student_dir(run) / "baseline" / "export" / EXPORT_VERSION


def report_dir(run: Path) -> Path:
    return Path(run) / "report"


# ---------------------------------------------------------------- stage 2: transfer set and soft labels
# RUN/soft_labels/transfer.parquet has TRANSFER_KEYS then the raw feature columns (distill.transfer.feature_fields:
# dataset.json's feature_names, or its raw_columns for a table that encodes); the teacher's shards (part-*.parquet) add
# the task's predictive outputs
# (distill.tasks: Task.outputs) and num_samples after them.
TRANSFER_FILE = "transfer.parquet"
SOFT_LABEL_PREFIX = "part"  # shards: part-00000-of-00002.parquet
MANIFEST_FILE = "manifest.json"
TRANSFER_KEYS = ("id", "source", "label")  # str, one of SOURCES, class index / NO_LABEL or the target / NaN


def transfer_columns(feature_names: list[str]) -> list[str]:
    return [*TRANSFER_KEYS, *feature_names]


def soft_label_columns(feature_names: list[str], outputs: tuple[str, ...]) -> list[str]:
    """The shards' columns for a task's predictive `outputs`."""
    return [*TRANSFER_KEYS, *feature_names, *outputs, "num_samples"]


def transfer_path(run: Path) -> Path:
    return soft_labels_dir(run) / TRANSFER_FILE


def soft_labels_manifest(run: Path) -> Path:
    return soft_labels_dir(run) / MANIFEST_FILE


def prediction_frame(ds, split: str, outputs: dict):
    """Per-example predictions of one model on one split (`{model}/{split}_predictions.csv`): the id, the
    truth, then each output of the model (vector outputs one column per class: prob_<class>, variance_<class>)."""
    import pandas as pd

    s = ds[split]
    if ds.class_names:
        df = pd.DataFrame({"id": s.ids, "true_class": [ds.class_names[i] for i in s.y],
                           "predicted_class": [ds.class_names[i] for i in outputs["probs"].argmax(-1)]})
    else:
        df = pd.DataFrame({"id": s.ids, "y": s.y})
    for key, value in outputs.items():
        if getattr(value, "ndim", 1) == 2:
            for c, name in enumerate(ds.class_names):
                df[f"{'prob' if key == 'probs' else key}_{name}"] = value[:, c]
        else:
            df[key] = value
    return df


# ---------------------------------------------------------------- exports in a run folder


def resolve_export(path: Path) -> tuple[Path, int]:
    """A base path (pick the highest integer version, as TF Serving does) or a version folder -> (dir, version)."""
    path = Path(path)
    if not path.is_dir():
        raise BdkError(f"export dir {path} not found; pass a SavedModel base path such as RUN/teacher/export "
                       "or a version folder such as RUN/teacher/export/1")
    if (path / "saved_model.pb").is_file():
        return path, int(path.name) if path.name.isdigit() else 1
    versions = sorted(int(p.name) for p in path.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file())
    if not versions:
        raise BdkError(f"{path} has no saved_model.pb and no integer version folder holding one "
                       "(TF Serving layout: BASE/1/saved_model.pb); run the stage that exports it first")
    return path / str(versions[-1]), versions[-1]


def find_dataset_json(version_dir: Path) -> Path | None:
    """RUN/data/dataset.json for an export at RUN/<stage>/export/<version> (or RUN/<stage>/baseline/export/<v>)."""
    for parent in list(Path(version_dir).resolve().parents)[:4]:
        candidate = data_dir(parent) / "dataset.json"
        if candidate.is_file():
            return candidate
    return None

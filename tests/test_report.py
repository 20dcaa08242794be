"""report.md (bdk/report.py) for classes and for regression from synthetic scores, and its formatting helpers.
No exports, no TensorFlow: the scores come from score_all on synthetic predictions (tests/test_evaluate.py)."""
import json

import numpy as np
import pandas as pd
import pytest

from bdk import report
from bdk.evaluate import EvalConfig, score_all
from bdk.report import MODELS
from distill import schema, tasks
from distill.inputs import SequenceInputs, TableInputs
from tests.test_evaluate import class_dataset, class_preds, regression_dataset, regression_preds

COST = {"teacher": {"latency_ms_p50": 2.0, "latency_ms_p95": 3.0, "rows_per_s_batch1": 500.0,
                    "rows_per_s_batch4096": 20_000.0, "parameters": 1234, "flops_per_row": 8000, "draws": 10},
        "student": {"latency_ms_p50": 0.5, "latency_ms_p95": 0.75, "rows_per_s_batch1": 2000.0,
                    "rows_per_s_batch4096": 200_000.0, "parameters": 617, "flops_per_row": 800, "draws": None}}


def _out(ds, preds, **cfg) -> dict:
    """What evaluate_run hands report.write: the scores, the temperature, the cost, the config."""
    config = EvalConfig(bootstrap=100, **cfg)
    return {"task": ds.task, "baseline_ts_temperature": 1.5, **score_all(config, ds, tasks.get(ds.task), preds),
            "cost": COST, "config": config}


def _run(tmp_path, kind: str = "flipout"):
    """The least of a run folder report.write reads: the teacher's config and training history."""
    run = tmp_path / "run"
    schema.teacher_dir(run).mkdir(parents=True)
    (schema.teacher_dir(run) / "config.json").write_text(json.dumps({"teacher": {"kind": kind}}))
    pd.DataFrame({"epoch": [1, 2, 3], "train_nll": [1.0, 0.8, 0.7], "val_nll": [1.1, 0.9, 0.85],
                  "kl": [5.0, 4.0, 3.5]}).to_csv(schema.teacher_dir(run) / "history.csv", index=False)
    out_dir = tmp_path / "report"
    out_dir.mkdir()
    return run, out_dir


def _table(text: str, header: str) -> list[str]:
    """The rows (after the separator) of the markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_fmt():
    assert report._fmt(0.123456) == "0.1235"
    assert report._fmt(2.0, [1.23456, 3.0]) == "2.0000 [1.235, 3.000]"
    assert report._fmt(0.5, None) == "0.5000"


def test_classes_report(tmp_path):
    ds = class_dataset()
    preds = class_preds(ds)
    out = _out(ds, preds, samples=37)
    run, out_dir = _run(tmp_path)
    report.write(out_dir, run, ds, preds, out)
    text = (out_dir / "report.md").read_text()
    for png in ("teacher_training.png", "uncertainty_test_vs_ood.png", "reliability.png", "accuracy_vs_rejection.png"):
        assert (out_dir / png).stat().st_size > 0 and f"({png})" in text, png
    assert not (out_dir / "calibration.png").exists()
    assert text.startswith("# Bayesian dark knowledge report: classes.csv")
    assert f"Test split: {len(ds['test'])} rows, validation: {len(ds['val'])} rows, classes: a, b, c" in text
    assert "37 weight draws" in text

    test_rows = _table(text, "| model | accuracy | NLL | ECE (15 bins) | Brier |")
    assert [r.split(" | ")[0] for r in test_rows] == [f"| {m}" for m in MODELS]
    for m, row in zip(MODELS, test_rows):
        r = out[m]
        assert _cell(row, 1) == report._fmt(r["test/accuracy"], r["test/accuracy_ci95"])
        assert _cell(row, 2) == report._fmt(r["test/nll"], r["test/nll_ci95"])
    assert _cell(test_rows[0], 1).startswith("1.0000 [1.000, 1.000]")  # the teacher is always right
    assert _cell(test_rows[2], 1).startswith("0.0000 [0.000, 0.000]")  # the baseline never
    val_rows = _table(text, "| model | accuracy | NLL | ECE | Brier |")
    assert len(val_rows) == len(MODELS) and "[" not in "".join(val_rows)  # validation: no intervals
    assert _cell(val_rows[1], 4) == f"{out['student']['val/brier']:.4f}"

    assert report.calibration_verdict(out, len(ds["test"])) in text
    ood_rows = _table(text, "| model | AUROC by entropy | AUROC by epistemic score |")
    assert [r.split(" | ")[0] for r in ood_rows] == [f"| {m}" for m in MODELS]
    assert _cell(ood_rows[0], 1) == f"{out['ood']['teacher/entropy_auroc']:.3f}" == "1.000"
    assert "test vs far-away uniform inputs" in text and "temperature of 1.500" in text

    trust = _table(text, "| region | rows | KL | top-1 | Spearman | teacher AUROC | student AUROC |")
    assert [r.split(" | ")[0] for r in trust] == ["| test rows", "| evaluation's OOD rows (never trained on)"]
    assert _cell(trust[0], 1) == str(len(ds["test"])) and _cell(trust[0], 5) == "n/a"
    assert _cell(trust[1], 3) == f"{out['agreement']['ood/top1_agreement']:.3f}"


def _cell(row: str, i: int) -> str:
    return row.strip("|").split("|")[i].strip()


def test_regression_report(tmp_path):
    ds = regression_dataset()
    preds = regression_preds(ds)
    out = _out(ds, preds, ood_file="shifted.csv")
    run, out_dir = _run(tmp_path, kind="ensemble")
    report.write(out_dir, run, ds, preds, out)
    text = (out_dir / "report.md").read_text()
    assert (out_dir / "calibration.png").stat().st_size > 0 and not (out_dir / "reliability.png").exists()
    assert "Regression of y." in text and "classes:" not in text

    rows = _table(text, "| model | RMSE | NLL | 95% interval coverage |")
    assert [r.split(" | ")[0] for r in rows] == [f"| {m}" for m in MODELS]
    for m, row in zip(MODELS, rows):
        r = out[m]
        assert _cell(row, 1) == report._fmt(r["test/rmse"], r["test/rmse_ci95"])
        assert _cell(row, 3) == report._fmt(r["test/coverage_95"], r["test/coverage_95_ci95"])
    val_rows = _table(text, "| model | RMSE | NLL | 95% coverage |")
    assert len(val_rows) == len(MODELS) and _cell(val_rows[3], 2) == f"{out['baseline_ts']['val/nll']:.4f}"
    assert f"teacher {out['teacher']['test/mean_epistemic_share']:.3f}, student" in text

    ood_rows = _table(text, "| model | AUROC by predictive variance | AUROC by epistemic score |")
    assert len(ood_rows) == len(MODELS)
    assert _cell(ood_rows[2], 1) == "0.500" and _cell(ood_rows[2], 2) == "n/a"  # the baseline's constant variance
    assert "(epistemic variance)" in _cell(ood_rows[0], 2)
    assert "test vs shifted.csv inputs" in text
    trust = _table(text, "| region | rows | KL | Spearman | teacher AUROC | student AUROC |")
    assert len(trust) == 2 and "top-1" not in text


def test_calibration_verdict():
    def out(student_nll, student_ece):
        model = lambda nll, ece: {"test/nll": nll, "test/ece": ece, "test/ece_ci95": [ece - 0.01, ece + 0.01]}  # noqa: E731
        return {"teacher": model(0.20, 0.05), "student": model(student_nll, student_ece),
                "baseline": model(0.40, 0.10), "baseline_ts": model(0.30, 0.07),
                "agreement": {"test/kl": 0.0123, "test/top1_agreement": 0.97}}

    kept = report.calibration_verdict(out(0.21, 0.055), 30)
    assert kept.startswith("The student kept") and "(+0.0100 nats)" in kept and "0.0123 nats" in kept
    assert "97%" in kept and "30 test rows" in kept and "NLL 0.4000 and ECE 0.1000" in kept
    assert report.calibration_verdict(out(0.30, 0.055), 30).startswith("The student did not keep")  # NLL 0.1 worse
    assert report.calibration_verdict(out(0.20, 0.09), 30).startswith("The student did not keep")  # ECE out of the band


def test_cost_section():
    lines = report._cost_section({"cost": COST})
    rows = _table("\n".join(lines), "| export | draws |")
    assert rows == ["| teacher | 10 | 1,234 | 8,000 | 2.000 | 3.000 | 500 | 20,000 |",
                    "| student | 1 | 617 | 800 | 0.500 | 0.750 | 2,000 | 200,000 |"]
    text = "\n".join(lines)
    assert "rows/s at batch 4096" in text
    assert "4.0x faster" in text and "10.0x more rows/s" in text and "10.0x fewer" in text
    assert "TFLite" not in text
    tflite = {**COST, "student TFLite": {**COST["student"], "bytes": 4096}}
    assert "Student TFLite file: 4,096 bytes" in "\n".join(report._cost_section({"cost": tflite}))


@pytest.mark.parametrize("ood_file, inputs, label", [
    (None, TableInputs(4), "OOD (far-away uniform)"), (None, SequenceInputs(24, 1, ()), "OOD (shifted regime)"),
    ("/data/real_ood.parquet", SequenceInputs(24, 1, ()), "OOD (real_ood.parquet)")])
def test_ood_label(ood_file, inputs, label):
    assert report.ood_label(EvalConfig(ood_file=ood_file), inputs.ood_name) == label

"""`bdk run` end to end on Iris with a small config, then each stage rerun alone, the gate and
the missing-input messages (the run: conftest `pipeline_run`; its student export in a fresh interpreter:
test_student.py)."""
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from distill import schema
from bdk.cli import app

def test_run_writes_every_artifact(pipeline_run):
    for path in ["data/dataset.json", "data/split.json", "teacher/history.csv", "teacher/export/1/saved_model.pb",
                 "soft_labels/manifest.json", "student/export/1/saved_model.pb", "student/history.csv",
                 "student/baseline/export/1/saved_model.pb", "report/metrics.json", "report/report.md",
                 "report/test_predictions.csv", "report/val_predictions.csv", "report/reliability.png",
                 "report/accuracy_vs_rejection.png", "report/teacher_training.png",
                 "report/uncertainty_test_vs_ood.png"]:
        assert (pipeline_run / path).exists(), path
    assert not list(pipeline_run.glob(".*tmp*")) and not list(pipeline_run.glob("*/.*tmp*"))
    # `bdk run`'s student with the default config: monitored on a held-out transfer slice, behind the quality gate
    student = json.loads((schema.student_dir(pipeline_run) / "metrics.json").read_text())
    assert student["monitor"] == "transfer" and student["held_out_rows"] > 0
    assert student["gate"]["on"] is True and student["gate"]["passed"] is True
    # soft_labels/config.json records the far shell's size and the draws used (resolved when left to the default)
    soft = json.loads((pipeline_run / "soft_labels" / "config.json").read_text())
    assert soft["soft_labels"]["transfer"]["shell"] == student["rows_per_source"]["shell"] > 0
    manifest = json.loads((pipeline_run / "soft_labels" / "manifest.json").read_text())
    assert soft["soft_labels"]["samples"] == manifest["num_samples"] >= 2


def test_report_metrics(pipeline_run):
    m = json.loads((pipeline_run / "report" / "metrics.json").read_text())
    for model in ("teacher", "student", "baseline"):
        for k in ("accuracy", "nll", "ece", "brier"):
            lo, hi = m[model][f"test/{k}_ci95"]
            assert lo <= m[model][f"test/{k}"] + 1e-9 and m[model][f"test/{k}"] <= hi + 1e-9
        assert m[model]["test/accuracy"] >= 0.8
    a = m["agreement"]
    for name in ("test", "perturbed", "interpolated", "uniform", "shell", "ood"):  # every region of the trust section
        assert 0 <= a[f"{name}/kl"] < 0.2 and a[f"{name}/top1_agreement"] >= 0.7, name
        if name != "test":
            r = m["regions"][name]
            assert r["rows"] > 0 and 0 <= r["teacher_auroc"] <= 1 and 0 <= r["student_auroc"] <= 1
    assert m["epistemic_tracking"]["perturbed/spearman"] > 0.3  # the Dirichlet's MI follows the teacher's
    # the OOD rows' agreement is against the teacher's 2,000-draw predictive; its 30-draw estimate is off it by its MC error
    assert m["reference_samples"] == 2000 and 0 < a["ood/kl_teacher"] < 0.2
    for key in ("teacher/entropy_auroc", "teacher/mutual_information_auroc", "student/epistemic_auroc"):
        assert 0 <= m["ood"][key] <= 1
    assert m["cost"]["student"]["parameters"] < m["cost"]["teacher"]["parameters"]
    report = (pipeline_run / "report" / "report.md").read_text()
    assert "calibration" in report and "![reliability](reliability.png)" in report
    assert "## Where the student is trustworthy" in report and "| far shell (transfer's own draws) | 200 |" in report
    assert "predictive with 2000 draws, nearly exact" in report and "The Monte Carlo error of the teacher's own" in report


def test_evaluate_reruns_alone(pipeline_run):
    before = json.loads((pipeline_run / "report" / "metrics.json").read_text())
    r = CliRunner().invoke(app, ["evaluate", "--run", str(pipeline_run), "--samples", "30", "--no-progress"])
    assert r.exit_code == 0, r.output
    after = json.loads((pipeline_run / "report" / "metrics.json").read_text())
    assert after["student"]["test/nll"] == pytest.approx(before["student"]["test/nll"], abs=1e-6)  # deterministic
    assert after["teacher"]["test/nll"] == pytest.approx(before["teacher"]["test/nll"], abs=0.05)  # Monte Carlo


def test_a_worse_student_fails_the_gate_and_is_not_published(pipeline_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline_run, run)
    r = CliRunner().invoke(app, ["student", "--run", str(run), "--epochs", "1", "--hidden", "1",
                                 "--gate-ece-margin", "0.0", "--gate-nll-margin", "0.0", "--no-progress"])
    assert r.exit_code == 1 and "quality gate" in r.output and "Traceback" not in r.output
    assert (schema.student_dir(run) / "rejected" / "export" / "1" / "saved_model.pb").exists()
    # the student published before stays published, untouched
    assert (schema.student_export(run) / "saved_model.pb").read_bytes() == \
        (schema.student_export(pipeline_run) / "saved_model.pb").read_bytes()


def test_a_student_from_other_soft_labels_is_noticed(pipeline_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline_run, run)
    manifest = schema.soft_labels_dir(run) / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # soft labels remade since the student learned
    r = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--no-progress"])
    assert r.exit_code == 1 and "bdk student --run" in r.output


def test_missing_stage_inputs_name_the_command_to_run(teacher_run, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["student", "--run", str(teacher_run), "--no-progress"])
    assert r.exit_code == 1 and "bdk soft-labels --run" in r.output
    r = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "bdk teacher --out" in r.output
    assert not schema.student_dir(teacher_run).exists()


def test_soft_labels_from_another_dataset_are_refused(pipeline_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline_run, run)
    manifest = schema.soft_labels_dir(run) / "manifest.json"
    m = json.loads(manifest.read_text())
    m["class_names"] = ["a", "b", "c"]
    manifest.write_text(json.dumps(m))
    r = CliRunner().invoke(app, ["student", "--run", str(run), "--no-progress"])
    assert r.exit_code == 1 and "class_names" in r.output and "bdk soft-labels" in r.output


def test_the_real_student_over_http_matches_in_process(pipeline_run):
    import httpx
    import tensorflow as tf

    from serving.server import BackgroundServer, create_app

    rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 2.8, 5.1, 1.5]]
    with BackgroundServer(create_app(schema.student_dir(pipeline_run) / "export", "student")) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            got = client.post("/v1/models/student:predict", json={"instances": rows})
            bad = client.post("/v1/models/student:predict", json={"instances": [[1.0, 2.0]]})
    assert got.status_code == 200 and bad.status_code == 400 and "error" in bad.json()
    local = tf.saved_model.load(str(schema.student_export(pipeline_run))).signatures["serving_default"](
        features=tf.constant(rows, tf.float32))
    served = got.json()["predictions"]
    assert np.allclose([p["probs"] for p in served], local["probs"].numpy(), atol=1e-6)
    assert np.allclose([p["epistemic"] for p in served], local["epistemic"].numpy(), atol=1e-6)
    tflite = schema.student_dir(pipeline_run) / "student.tflite"
    assert tflite.exists() and tflite.stat().st_size > 0


def test_the_student_flags_inputs_far_beyond_its_transfer_set(pipeline_run):
    """The student's export clamps its inputs to the box its transfer set reached (the train box widened by the far
    shell's outer edge, 3 box widths): a row a hundred box widths out is answered as at that edge, where the student
    learnt the teacher's "I don't know", instead of by a ReLU network's linear extrapolation."""
    import tensorflow as tf

    from distill import data as data_lib

    ds = data_lib.load_from_run(pipeline_run)
    x = ds.raw("train")
    lo, hi = x.min(axis=0), x.max(axis=0)
    width, centre = hi - lo, (lo + hi) / 2
    directions = np.random.default_rng(0).normal(size=(200, x.shape[1]))
    directions /= np.abs(directions).max(axis=1, keepdims=True)  # onto the box's surface
    far = (centre + 100 * width * directions).astype(np.float32)  # [200, F]
    edge = np.clip(far, lo - 3 * width, hi + 3 * width)
    serve = tf.saved_model.load(str(pipeline_run / "student" / "export" / "1")).signatures["serving_default"]
    out_far, out_edge, out_test = (serve(features=tf.constant(v, tf.float32)) for v in (far, edge, ds.raw("test")))
    np.testing.assert_allclose(out_far["epistemic"].numpy(), out_edge["epistemic"].numpy(), rtol=1e-4, atol=1e-6)
    assert np.median(out_far["epistemic"].numpy()) > np.quantile(out_test["epistemic"].numpy(), 0.9)

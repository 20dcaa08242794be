"""Stage 1: the Flipout teacher, its training log, evaluation and SavedModel export."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from distill import schema
from distill.cli import app

FRESH = """
import json, sys
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
assert not any(k.startswith(("distill", "teacher", "student")) for k in sys.modules)
x = tf.constant(json.loads(sys.argv[2]), tf.float32)
serve = m.signatures["serving_default"]
a, b = serve(features=x), serve(features=x)
pred = m.signatures["predictive"](features=x, num_samples=tf.constant(2000))
many = np.mean([serve(features=x)["probs"].numpy() for _ in range(200)], axis=0)
print(json.dumps({
    "keys": sorted(a), "shape": list(a["probs"].shape),
    "sum": a["probs"].numpy().sum(-1).tolist(),
    "min_var": float(a["variance"].numpy().min()),
    "differ": float(np.abs(a["probs"].numpy() - b["probs"].numpy()).max()),
    "ref": pred["probs"].numpy().tolist(), "many": many.tolist(),
    "decomp": float(np.abs(a["entropy"].numpy() - a["expected_entropy"].numpy() - a["mutual_information"].numpy()).max()),
}))
"""


def test_training_log_and_metrics(teacher_run):
    h = pd.read_csv(schema.teacher_dir(teacher_run) / "history.csv")
    assert list(h.columns) == ["epoch", "train_nll", "kl", "elbo", "val_nll", "val_accuracy", "val_entropy",
                               "val_mutual_information", "seconds"]
    assert (h["kl"] > 0).all() and np.allclose(h["elbo"], -(h["train_nll"] + h["kl"]))
    assert h["val_nll"].iloc[-5:].mean() < h["val_nll"].iloc[0]  # it learned
    m = json.loads((schema.teacher_dir(teacher_run) / "metrics.json").read_text())
    assert m["device"] in ("/CPU:0", "/GPU:0")
    assert m["test/accuracy"] >= 0.85 and m["test/nll"] < 0.6
    for split in ("val", "test"):
        assert 0 <= m[f"{split}/ece"] <= 1 and 0 <= m[f"{split}/brier"] <= 2
    assert set(m["most_uncertain_pair"]) == {"Iris-versicolor", "Iris-virginica"}


def test_per_example_predictions(teacher_run):
    df = pd.read_csv(schema.teacher_dir(teacher_run) / "test_predictions.csv")
    assert len(df) == 30
    probs = df.filter(like="prob_").to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (df.filter(like="variance_").to_numpy() >= 0).all()
    assert np.allclose(df["entropy"], df["expected_entropy"] + df["mutual_information"], atol=1e-4)
    setosa = df[df["true_class"] == "Iris-setosa"]
    # Setosa is linearly separable: the teacher is sure of it and has little epistemic doubt there
    assert setosa["mutual_information"].mean() < df[df["true_class"] != "Iris-setosa"]["mutual_information"].mean()


def test_export_in_a_fresh_interpreter(teacher_run, iris):
    rows = iris["test"].x[:6].tolist()
    out = subprocess.run([sys.executable, "-c", FRESH, str(schema.teacher_export(teacher_run)), json.dumps(rows)],
                         capture_output=True, text=True, timeout=120, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["keys"] == ["entropy", "expected_entropy", "mutual_information", "probs", "variance"]
    assert r["shape"] == [6, 3]
    assert np.allclose(r["sum"], 1, atol=1e-5) and r["min_var"] >= 0 and r["decomp"] < 1e-4
    assert r["differ"] > 0  # fresh weights on every call
    # 200 calls x 10 draws average to the 2000-draw predictive within Monte Carlo error
    assert np.abs(np.array(r["many"]) - np.array(r["ref"])).max() < 0.03
    pred_class = np.array(r["ref"]).argmax(-1)
    assert (pred_class == iris["test"].y[:6]).mean() >= 0.8  # raw features in: scaling is inside


def test_saved_model_cli_lists_the_signatures(teacher_run):
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
           "--dir", str(schema.teacher_export(teacher_run))]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "signature_def['serving_default']" in text and "signature_def['predictive']" in text
    assert "inputs['features']" in text and "outputs['mutual_information']" in text
    assert "tensorflow/serving/predict" in text


def test_kl_weight_scales_the_kl_term():
    import tensorflow as tf
    import tf_keras as tfk

    from teacher.model import build_flipout

    x = tf.zeros((2, 4))
    terms = []
    for w in (1.0, 3.0):
        tfk.utils.set_random_seed(0)
        model = build_flipout(4, 3, n_train=50, kl_weight=w)
        model(x)
        terms.append(float(tf.add_n(model.losses)))
    assert terms[1] == pytest.approx(3 * terms[0], rel=1e-5)
    # and the layer loss is KL(q || p) / N_train: the per-example share of the ELBO's KL
    tfk.utils.set_random_seed(0)
    model = build_flipout(4, 3, n_train=50)
    model(x)
    import tensorflow_probability as tfp

    raw = sum(float(tf.reduce_sum(tfp.distributions.kl_divergence(layer.kernel_posterior, layer.kernel_prior)))
              for layer in model.layers)
    assert float(tf.add_n(model.losses)) == pytest.approx(raw / 50, rel=1e-5)


def test_cli_refuses_bad_input_without_traces(tmp_path, teacher_run):
    runner = CliRunner()
    r = runner.invoke(app, ["teacher", "--out", str(teacher_run)])
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,,y\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["teacher", "--out", str(out), "--dataset", str(bad)])
    assert r.exit_code == 1 and "rows 2" in r.output and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_help_lists_commands():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "teacher" in r.output

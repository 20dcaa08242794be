"""Stage 1: the teacher (Flipout by default), its training log, evaluation and the Monte Carlo SavedModel:
explicit weight sampling against the Keras layers themselves (classification and regression), the seed contract,
the export in a fresh interpreter (classification, regression and sequence runs: the shared conftest runs)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from distill import schema, tasks
from tests import fresh
from bdk.cli import app

CLS = tasks.get("classification")

def summary_np(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Independent numpy summary of S categorical draws [S, B, C], with the Monte Carlo standard errors of
    the mean probs and of the mutual information (delta method: the influence of each draw)."""
    p = draws.mean(0)  # [B, C]
    h = -(draws * np.log(np.clip(draws, 1e-12, 1))).sum(-1)  # [S, B]
    log_p = np.log(np.clip(p, 1e-12, 1))
    mi = -(p * log_p).sum(-1) - h.mean(0)  # [B]
    influence = -((draws - p) * log_p).sum(-1) - (h - h.mean(0))  # [S, B]
    n = len(draws)
    return {"probs": p, "mi": mi, "se_probs": draws.std(0) / np.sqrt(n), "se_mi": influence.std(0) / np.sqrt(n)}


TRAINED = {"classification": "teacher_run", "regression": "regression_run", "sequence": "sequence_run"}


@pytest.mark.parametrize("case", list(TRAINED))
def test_training_log_metrics_and_predictions(case, request):
    """The shared runs' teachers (Iris Flipout, regression Flipout, Bayesian GRU): the history's columns and ELBO,
    learning, the metrics and the per-example predictions of the test split in the task's terms."""
    run = request.getfixturevalue(TRAINED[case])
    task = "regression" if case == "regression" else "classification"
    h = pd.read_csv(schema.teacher_dir(run) / "history.csv")
    assert h.columns[0] == "epoch" and h.columns[-1] == "seconds"
    assert {"train_nll", "kl", "elbo", "val_nll"} <= set(h.columns)
    assert {"val_accuracy", "val_ece", "val_brier", "val_mutual_information"} <= set(h.columns) if task == "classification" \
        else {"val_rmse", "val_coverage_95", "val_epistemic_variance"} <= set(h.columns)
    assert list(h["epoch"]) == list(range(1, len(h) + 1))
    assert (h["kl"] > 0).all() and np.allclose(h["elbo"], -(h["train_nll"] + h["kl"]))
    assert h["val_nll"].iloc[-5:].mean() < h["val_nll"].iloc[0]  # it learned
    m = json.loads((schema.teacher_dir(run) / "metrics.json").read_text())
    assert m["task"] == task and m["kind"] == ("brnn" if case == "sequence" else "flipout")
    assert m["epochs_run"] == len(h) and 1 <= m["best_epoch"] <= len(h)
    pred = pd.read_csv(schema.teacher_dir(run) / "test_predictions.csv")
    assert len(pred) == len(json.loads((schema.data_dir(run) / "split.json").read_text())["test"])
    if task == "regression":
        y = pd.read_csv(request.getfixturevalue("regression_csv"))["y"].to_numpy()
        assert m["test/rmse"] < 0.4 * y.std()  # it learned y = f(x) (noise sd 1, y's sd about 7)
        assert 0.7 <= m["test/coverage_95"] <= 1.0 and np.isfinite(m["test/nll_mixture"])
        assert 0 < m["test/mean_epistemic_share"] < 1
        assert list(pred.columns) == ["id", "y", "mean", "variance", "epistemic_variance"]
        assert (pred["variance"] >= pred["epistemic_variance"]).all() and (pred["epistemic_variance"] > 0).all()
        return
    probs = pred.filter(like="prob_").to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (pred.filter(like="variance_").to_numpy() >= 0).all()
    assert np.allclose(pred["entropy"], pred["expected_entropy"] + pred["mutual_information"], atol=1e-4)
    for split in ("val", "test"):
        assert 0 <= m[f"{split}/ece"] <= 1 and 0 <= m[f"{split}/brier"] <= 2
    if case == "sequence":
        assert m["test/accuracy"] > 0.6
        return
    assert m["device"] in ("/CPU:0", "/GPU:0") and m["eval_samples"] == 50
    assert 0 < m["test/mean_mutual_information"] < np.log(3)
    cfg = json.loads((schema.teacher_dir(run) / "config.json").read_text())
    assert cfg["task"] == "classification" and cfg["teacher"]["hidden"] == [64, 64]  # the task's recipe, resolved
    assert m["test/accuracy"] >= 0.85 and m["test/nll"] < 0.6
    assert set(m["most_uncertain_pair"]) == {"Iris-versicolor", "Iris-virginica"}
    # Setosa is linearly separable: the teacher is sure of it and has little epistemic doubt there
    setosa = pred["true_class"] == "Iris-setosa"
    assert pred.loc[setosa, "mutual_information"].mean() < pred.loc[~setosa, "mutual_information"].mean()


FRESH = """
import json, sys
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
assert not any(k.split(".")[0] in ("distill", "teacher", "student", "beam_pipelines", "bdk") for k in sys.modules)
x = tf.constant(json.loads(sys.argv[2]), tf.float32)
first, calls = sys.argv[3], int(sys.argv[4])  # the task's first output (probs or mean); serving calls to average
serve = m.signatures["serving_default"]
a, b = serve(features=x), serve(features=x)
pred = m.signatures["predictive"](features=x, num_samples=tf.constant(10 * calls))
many = np.mean([serve(features=x)[first].numpy() for _ in range(calls)], axis=0)
n, seed = tf.constant(50), tf.constant(7, tf.int64)
seeded = m.signatures["predictive_seeded"](features=x, num_samples=n, seed=seed)
again = m.signatures["predictive_seeded"](features=x, num_samples=n, seed=seed)
s = m.signatures["sample"](features=x, num_samples=tf.constant(6))
ss = [m.signatures["sample_seeded"](features=x, num_samples=tf.constant(6), seed=tf.constant(2, tf.int64)) for _ in "ab"]
prefix = m.signatures["predictive_seeded"](features=x[:, :5], num_samples=n, seed=seed) if len(x.shape) == 3 else {}
print(json.dumps({
    "signatures": sorted(m.signatures), "outputs": sorted(a), "predictive": sorted(pred),
    "sample": {k: list(v.shape) for k, v in s.items()},
    "seeded_same": all(np.array_equal(seeded[k].numpy(), again[k].numpy()) for k in seeded)
                   and all(np.array_equal(ss[0][k].numpy(), ss[1][k].numpy()) for k in ss[0]),
    "a": {k: v.numpy().tolist() for k, v in a.items()}, "b": {k: v.numpy().tolist() for k, v in b.items()},
    "ref": {k: v.numpy().tolist() for k, v in pred.items()}, "many": many.tolist(),
    "seeded": {k: v.numpy().tolist() for k, v in seeded.items()},
    "prefix": {k: list(v.shape) for k, v in prefix.items()},
}))
"""


@pytest.fixture
def export_case(request):
    """(case, its run (a shared fixture), a few raw inputs, their classes or None): Iris rows, rows of the synthetic
    regression table, or oscillator sequences [B, T, C]."""
    case = request.param
    return (case, *export_inputs(case, request))


def export_inputs(case: str, request):
    if case == "classification":
        iris = request.getfixturevalue("iris")
        return request.getfixturevalue("teacher_run"), iris["test"].x[:6], iris["test"].y[:6]
    if case == "regression":
        rows = pd.read_csv(request.getfixturevalue("regression_csv"))[["x1", "x2"]].head(8).to_numpy(np.float32)
        return request.getfixturevalue("regression_run"), rows, None
    from tests.sequence_data import tiny_sequences

    return request.getfixturevalue("sequence_run"), tiny_sequences(5, seed=3)[0], None


@pytest.mark.parametrize("export_case", ["classification", "regression", "sequence"], indirect=True)
def test_export_in_fresh_interpreters(export_case):
    """A process without the project loads the export: every signature answers in the task's outputs, each call
    draws fresh weights (OS-seeded, so this process, loading it too, draws differently), many calls average to the
    predictive within Monte Carlo error, and the seeded signatures are bit-identical across calls and processes.
    Raw inputs in, the task's units out (the scaling is inside); a sequence export takes any length."""
    import tensorflow as tf

    from teacher.export import SERVING_SAMPLES

    case, run, x, y = export_case
    task = tasks.get(run_task := json.loads((schema.teacher_dir(run) / "metrics.json").read_text())["task"])
    assert run_task == ("regression" if case == "regression" else "classification")
    export, first = schema.teacher_export(run), task.outputs[0]
    calls = {"classification": 200, "regression": 50, "sequence": 20}[case]  # serving calls to average (cost)
    r = fresh.run(FRESH, export, json.dumps(x.tolist()), first, calls)
    tables = ["serving_rows"] if case != "sequence" else []
    assert r["signatures"] == sorted(["predictive", "predictive_seeded", "sample", "sample_seeded", "serving_default",
                                      *tables])
    assert r["outputs"] == r["predictive"] == sorted(task.outputs)
    draws = {"probs_samples": [6, len(x), 3 if case == "classification" else 2]} if case != "regression" else \
        {"mean_samples": [6, len(x)], "variance_samples": [6, len(x)]}
    assert r["sample"] == draws
    assert r["seeded_same"]
    a = {k: np.array(v) for k, v in r["a"].items()}
    assert np.abs(a[first] - np.array(r["b"][first])).max() > 0  # fresh weights on every call
    # calls x SERVING_SAMPLES draws average to the predictive of as many draws within Monte Carlo error
    spread = np.array(r["ref"]["variance" if case != "regression" else "epistemic_variance"])  # the draws' variance
    assert spread.max() > 0
    se = np.sqrt(2 * spread / (calls * SERVING_SAMPLES))
    np.testing.assert_array_less(np.abs(np.array(r["many"]) - np.array(r["ref"][first])), 5 * se + 1e-6)
    # this process loads the export too: without a seed its first call draws other weights than the fresh one's
    # (each process seeds from the OS at load), with one the same bits
    loaded = tf.saved_model.load(str(export))
    assert np.abs(loaded.signatures["serving_default"](features=tf.constant(x))[first].numpy() - a[first]).max() > 0
    here = loaded.signatures["predictive_seeded"](features=tf.constant(x), num_samples=tf.constant(50),
                                                  seed=tf.constant(7, tf.int64))
    for k in task.outputs:
        np.testing.assert_array_equal(np.array(r["seeded"][k], np.float32), here[k].numpy(), err_msg=k)
    if case == "regression":
        mean, var, epi = (a[k] for k in task.outputs)
        assert np.all(var >= epi - 1e-5) and np.all(epi >= 0)
        assert 30 < mean.mean() < 70  # the target's units (around 50), not z-scores
    else:
        assert np.allclose(a["probs"].sum(-1), 1, atol=1e-5) and a["variance"].min() >= 0
        assert np.abs(a["entropy"] - a["expected_entropy"] - a["mutual_information"]).max() < 1e-4
    if case == "classification":
        assert (np.array(r["ref"]["probs"]).argmax(-1) == y).mean() >= 0.8  # raw features in: scaling is inside
    assert r["prefix"] == ({k: [len(x), *np.shape(a[k])[1:]] for k in task.outputs} if case == "sequence" else {})


def test_seed_contract(teacher_run, iris):
    """predictive_seeded is a pure function of (row, S, seed), whichever evaluation order the batch takes."""
    import tensorflow as tf

    from teacher.export import BATCHED_ROWS

    model = tf.saved_model.load(str(schema.teacher_export(teacher_run)))
    seeded, sample = model.signatures["predictive_seeded"], model.signatures["sample_seeded"]

    def call(x, s, seed, fn=seeded):
        out = fn(features=tf.constant(x), num_samples=tf.constant(s), seed=tf.constant(seed, tf.int64))
        return {k: v.numpy() for k, v in out.items()}

    every = np.concatenate([iris[name].x for name in ("train", "val", "test")])  # [150, F]
    small, s = every[:5], 100
    assert s * len(small) <= BATCHED_ROWS < s * len(every)  # one batched matmul vs the loop over draws
    a, b = call(small, s, 3), call(small, s, 3)
    for k in CLS.outputs:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # the same seed: the same bits
    other = call(small, s, 4)
    assert np.abs(other["probs"] - a["probs"]).max() > 1e-4  # another seed: other draws
    assert a["mutual_information"].max() > 1e-4  # the draws disagree, so the comparisons mean something
    loop = call(every, s, 3)
    for k in CLS.outputs:
        np.testing.assert_allclose(loop[k][:5], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the same rows anywhere in the batch get the same draws
    shuffled = call(every[::-1].copy(), s, 3)
    np.testing.assert_allclose(shuffled["probs"][::-1], loop["probs"], rtol=1e-5, atol=1e-6)
    # sample_seeded returns those very draws; their summary is predictive_seeded
    draws = call(small, s, 3, sample)["probs_samples"]  # [S, B, C]
    assert draws.shape == (s, 5, 3)
    ref = summary_np(draws)
    np.testing.assert_allclose(ref["probs"], a["probs"], atol=1e-6)
    np.testing.assert_allclose(ref["mi"], a["mutual_information"], atol=1e-5)
    np.testing.assert_allclose(draws.var(0), a["variance"], atol=1e-6)


def draw_summary(task: str, draws: np.ndarray) -> dict[str, np.ndarray]:
    """S draws' predictive mean and epistemic spread, with Monte Carlo standard errors: classification's probs
    [S, B, C] -> mean probs and mutual information; regression's [mean, variance] [S, B, 2] -> the mean and the
    variance of the draws' means (the epistemic variance)."""
    if task == "classification":
        out = summary_np(draws)
        return {"mean": out["probs"], "epistemic": out["mi"], "se_mean": out["se_probs"], "se_epistemic": out["se_mi"]}
    m = draws[..., 0]
    dev = (m - m.mean(0)) ** 2
    n = np.sqrt(len(draws))
    return {"mean": m.mean(0), "epistemic": dev.mean(0), "se_mean": m.std(0) / n, "se_epistemic": dev.std(0) / n}


@pytest.mark.parametrize("task, family", [("classification", "trained flipout"), ("classification", "fresh flipout"),
                                          ("classification", "fresh mc-dropout"), ("regression", "trained flipout")],
                         ids=["classification-trained-flipout", "classification-fresh-flipout",
                              "classification-fresh-mc-dropout", "regression-trained-flipout"])
def test_explicit_weight_sampling_matches_the_keras_layers(task, family, request, restore_flipout):
    """The export's per-draw weight samples give each row the predictive distribution that the Keras model's own
    stochastic forward pass gives it (Flipout's per-row sign flips; dropout's per-row masks): the predictive mean
    (probs; the Gaussian's mean) and the epistemic spread (mutual information; the variance of the draws' means)
    of thousands of draws agree within Monte Carlo standard errors, on uncertain and confident rows (classes) and
    on rows in range and far out (regression)."""
    import tensorflow as tf
    import tf_keras as tfk

    from distill.data import load_from_run
    from teacher.export import MonteCarloModule, dropout_sampler, flipout_sampler
    from teacher.model import build_flipout, build_mlp, dense_layers

    t = tasks.get(task)
    ds = request.getfixturevalue("iris") if task == "classification" else load_from_run(request.getfixturevalue("regression_run"))
    tfk.utils.set_random_seed(1)
    if family == "trained flipout":
        model = restore_flipout(request.getfixturevalue("teacher_run" if task == "classification" else "regression_run"))
        sampler = flipout_sampler(dense_layers(model))
    elif family == "fresh flipout":  # wide posteriors and non-zero biases: a predictive far from one network's
        model = build_flipout(4, 3, n_train=100, hidden=(16,), posterior_scale_init=-1.0)
        for v in model.trainable_variables:
            if "bias" in v.name:
                v.assign(tf.random.normal(v.shape))
        sampler = flipout_sampler(dense_layers(model))
    else:
        model = build_mlp(4, 3, hidden=(32, 32), dropout=0.3)
        sampler = dropout_sampler(dense_layers(model), 0.3)
    if "flipout" in family:
        scales = [float(tf.reduce_mean(l.kernel_posterior.distribution.scale)) for l in dense_layers(model)]
        assert min(scales) > 1e-3, scales  # the posterior has spread
    module = MonteCarloModule(t, sampler, [model], ds.scaler.shift, ds.scaler.scale)  # target units = the head's

    @tf.function
    def keras_draws(z, s):
        """The Keras model called s times, each call its own stochastic forward pass -> [s, B, C] probs or
        [s, B, 2] Gaussian parameters."""
        ta = tf.TensorArray(tf.float32, size=s)
        for i in tf.range(s):
            ta = ta.write(i, t.draw_params(model(z, training=True)))
        return ta.stack()

    if task == "classification":  # the most uncertain rows and a confident one
        x = np.concatenate([ds["val"].x, ds["test"].x])
        mi = summary_np(keras_draws(tf.constant(ds.scaler.transform(x)), 50).numpy())["mi"]
        x, s, seed = x[np.r_[np.argsort(mi)[-5:], np.argsort(mi)[:1]]], 4000, 11
    else:  # rows in range and far out
        x, s, seed = np.concatenate([ds["test"].x[:4], np.array([[3.0, -3.0], [-4.0, 4.0]], np.float32)]), 2000, 5
    reference = draw_summary(task, keras_draws(tf.constant(ds.scaler.transform(x)), s).numpy())
    samples = module.sample_seeded(tf.constant(x), s, seed)
    draws = samples["probs_samples"].numpy() if task == "classification" else \
        np.stack([samples["mean_samples"].numpy(), samples["variance_samples"].numpy()], -1)  # [S, rows, C | 2]
    explicit = draw_summary(task, draws)
    out = {k: v.numpy() for k, v in module.predictive_seeded(tf.constant(x), s, seed).items()}
    mean, epistemic = (out[k] for k in (("probs", "mutual_information") if task == "classification"
                                        else ("mean", "epistemic_variance")))
    np.testing.assert_allclose(mean, explicit["mean"], rtol=1e-5, atol=1e-5)  # the signature summarises those draws

    if task == "classification":
        assert reference["epistemic"].max() > 0.005, reference["epistemic"]  # spread to compare (order-dependent draws)
    else:  # spread, growing far from the data
        assert reference["epistemic"].min() > 0 and reference["epistemic"][4:].min() > 3 * reference["epistemic"][:4].max()
    se = np.hypot(reference["se_mean"], explicit["se_mean"])
    np.testing.assert_array_less(np.abs(mean - reference["mean"]), 5 * se + 1e-6)
    se_epistemic = np.hypot(reference["se_epistemic"], explicit["se_epistemic"])
    np.testing.assert_array_less(np.abs(epistemic - reference["epistemic"]), 5 * se_epistemic + 1e-5)
    # and the comparison can fail: one network's prediction (a single draw) is told apart from the predictive
    single = draws[0] if task == "classification" else draws[0, :, 0]
    assert (np.abs(single - reference["mean"]) > 5 * se + 1e-6).any()


def test_saved_model_cli_lists_the_signatures(teacher_run):
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
           "--dir", str(schema.teacher_export(teacher_run))]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for name in ("serving_default", "predictive", "predictive_seeded", "sample", "sample_seeded"):
        assert f"signature_def['{name}']" in text, name
    assert "inputs['seed']" in text and "DT_INT64" in text and "inputs['num_samples']" in text
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


def test_noise_contrastive_prior_against_monte_carlo_and_its_closed_form():
    """The NCP term: the head's logit distribution under weight draws (mean and variance by the local
    reparameterisation) checked against 20,000 explicit draws of the head's kernel, and the KL against its formula."""
    import tensorflow as tf
    import tf_keras as tfk

    from teacher.model import build_flipout, noise_contrastive_prior

    tfk.utils.set_random_seed(0)
    model = build_flipout(3, 4, n_train=50, hidden=(), posterior_scale_init=-1.0)  # the head alone: h = x
    x = np.random.default_rng(0).normal(0, 2, (5, 3)).astype(np.float32)
    model(x)
    head = model.layers[-1]
    q = head.kernel_posterior.distribution
    mu, sigma, b = (tf.convert_to_tensor(t).numpy() for t in (q.loc, q.scale, head.bias_posterior.mean()))
    w = mu + sigma * np.random.default_rng(1).standard_normal((20_000, *mu.shape))  # [D, 3, 4]
    logits = np.einsum("bf,dfk->dbk", x, w) + b  # [D, 5, 4]
    mean, var = logits.mean(0), logits.var(0)
    np.testing.assert_allclose(mean, x @ mu + b, atol=4 * np.sqrt(var.max() / 20_000))
    np.testing.assert_allclose(var, (x ** 2) @ sigma ** 2, rtol=0.05)
    s = 3.0
    v = (x ** 2) @ sigma ** 2 + 1e-6
    closed = (np.log(np.sqrt(v) / s) + (s ** 2 + (x @ mu + b) ** 2) / (2 * v) - 0.5).sum(-1).mean()
    assert float(noise_contrastive_prior(model, tf.constant(x), s)) == pytest.approx(closed, rel=1e-4)


def test_cli_refuses_bad_input_without_traces(tmp_path, teacher_run):
    runner = CliRunner()
    r = runner.invoke(app, ["teacher", "--out", str(teacher_run)])
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,,y\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["teacher", "--out", str(out), "--dataset", str(bad), "--missing", "refuse"])
    assert r.exit_code == 1 and "rows 2" in r.output and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.glob(".run*"))
    r = runner.invoke(app, ["teacher", "--out", str(out), "--dataset", str(bad)])  # imputed; then too few rows a class
    assert r.exit_code == 1 and r.output.startswith("error: class 'x' has only 1 row") and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.glob(".run*"))


# options that have no help text today (product code; listed so that no new one is added without)
UNDOCUMENTED: dict[str, tuple[str, ...]] = {}  # {command: flags without a help text}: none today


def test_help_documents_every_command_and_option():
    """The top-level help lists every command; each command's (and each study's) own --help works (a broken option
    declaration fails here), names its command line, and documents every option it declares, each with a help text."""
    import typer.main

    root = typer.main.get_command(app)
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and len(root.commands) >= 9
    commands = []
    for name, cmd in root.commands.items():
        assert f" {name} " in r.output, name
        subs = cmd.commands.items() if hasattr(cmd, "commands") else [(None, cmd)]  # typer's own click: duck types
        commands += [([name, sub] if sub else [name], c) for sub, c in subs]
    assert len(commands) > len(root.commands)  # the experiment group's studies too
    checked = 0
    for path, cmd in commands:
        sub = CliRunner().invoke(app, [*path, "--help"])
        assert sub.exit_code == 0 and f"Usage: root {' '.join(path)} " in sub.output, (path, sub.output[:300])
        for option in (p for p in cmd.params if p.param_type_name == "option" and not p.hidden):
            flag = max(option.opts, key=len)
            assert flag in sub.output, (path, flag)
            assert option.help or flag in UNDOCUMENTED.get(path[-1], ()), f"bdk {' '.join(path)} {flag} has no help text"
            checked += 1
    assert checked > 10 * len(commands)  # the options were found


def test_config_defaults_by_task():
    from distill.errors import BdkError
    from teacher.config import RECURRENT_DEFAULTS, TASK_DEFAULTS, TeacherConfig

    cfg = TeacherConfig()  # the task's recipe fills what is not given: one config resolves differently per task
    assert cfg.resolved("classification").hidden != cfg.resolved("regression").hidden
    for task in ("classification", "regression"):  # every field the recipe names is filled from it
        r = cfg.resolved(task)
        unset = [f for f in TASK_DEFAULTS[task] if hasattr(r, f) and getattr(r, f) is None]
        assert not unset, (task, unset)
    classes, regression = cfg.resolved("classification"), cfg.resolved("regression")
    assert classes.steps and classes.epochs is None and regression.epochs and regression.steps is None  # budgets
    assert classes.kl_weight < regression.kl_weight and classes.ncp_weight > 0 and not regression.ncp_weight
    wide_rows = TASK_DEFAULTS["classification"]["wide_rows"]  # large tables: wider classifiers, not regressors
    assert cfg.resolved("classification", wide_rows).hidden == tuple(2 * h for h in classes.hidden)
    assert cfg.resolved("classification", wide_rows - 1).hidden == classes.hidden
    assert cfg.resolved("regression", 10 * wide_rows).hidden == regression.hidden
    assert cfg.resolved("classification", 10 * wide_rows).batch_size > classes.batch_size  # the batch grows
    # ... and Adam's rate decays along a cosine over the step budget, to 0 at its end (small tables: constant)
    assert (classes.learning_rate_decay, regression.learning_rate_decay) == ("constant", "constant")
    assert cfg.resolved("regression", 10 * wide_rows).learning_rate_decay == "constant"
    from teacher.train import _learning_rate

    large = cfg.resolved("classification", 10 * wide_rows)
    assert large.learning_rate_decay == "cosine" and _learning_rate(classes, 1000) == classes.learning_rate
    assert large.steps == TASK_DEFAULTS["classification"]["wide_steps"] < classes.steps  # a shorter budget
    assert large.ncp_weight == TASK_DEFAULTS["classification"]["wide_ncp_weight"] > classes.ncp_weight  # a stronger NCP
    assert TeacherConfig(ncp_weight=0.0).resolved("classification", 10 * wide_rows).ncp_weight == 0.0  # given wins
    assert TeacherConfig(steps=500).resolved("classification", 10 * wide_rows).steps == 500  # a given budget wins
    assert TeacherConfig(learning_rate_decay="constant").resolved("classification", 10 * wide_rows).steps == classes.steps
    budget = large.max_epochs(10 * wide_rows) * -(-10 * wide_rows // large.batch_size)  # optimiser steps
    rate = _learning_rate(large, 10 * wide_rows)
    assert float(rate(0)) == pytest.approx(large.learning_rate) and float(rate(budget // 2)) == pytest.approx(
        large.learning_rate / 2, rel=1e-3) and float(rate(budget)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(BdkError, match="learning-rate decay"):
        TeacherConfig(learning_rate_decay="step")
    brnn = TeacherConfig(kind="brnn").resolved("classification", 700)  # the GRU's recipe, not the ensemble's
    for k, v in RECURRENT_DEFAULTS.items():
        assert getattr(brnn, k) == v, k
    assert brnn.steps is None
    assert TeacherConfig(hidden=(8,), epochs=3).resolved("regression").hidden == (8,)  # given values win
    assert TeacherConfig(epochs=3).resolved("regression").epochs == 3
    with pytest.raises(BdkError, match="unknown teacher kind"):
        TeacherConfig(kind="gp")
    with pytest.raises(BdkError, match="eval_samples"):
        TeacherConfig(eval_samples=1)


def test_ensemble_sampler_is_the_exact_ensemble_mean(iris):
    import tensorflow as tf

    from teacher.export import MonteCarloModule, ensemble_sampler
    from teacher.model import build_mlp, dense_layers

    members = [build_mlp(4, 3, (8,), name=f"m{i}") for i in range(3)]
    module = MonteCarloModule(CLS, ensemble_sampler([dense_layers(m) for m in members]), members,
                              iris.scaler.shift, iris.scaler.scale)
    x = iris["test"].x[:7]
    z = iris.scaler.transform(x)
    each = np.stack([tf.nn.softmax(m(z), -1).numpy() for m in members])  # [M, B, C]
    out = module.predictive_seeded(tf.constant(x), 6, 0)  # S a multiple of M: every member twice
    np.testing.assert_allclose(out["probs"].numpy(), each.mean(0), atol=1e-6)
    np.testing.assert_allclose(out["mutual_information"].numpy(), summary_np(each)["mi"], atol=1e-5)
    assert out["mutual_information"].numpy().max() > 1e-3  # independently initialised members disagree
    # The training steps normalise each raw batch in the graph (no normalised copy of the train split): the same
    # float32 bits as the normalised rows the networks were validated and exported on, inside tf.function too
    for x in (iris["train"].x, np.random.default_rng(0).normal(0, 30, (500, 4)).astype(np.float32)):
        np.testing.assert_array_equal(module.normalise(tf.constant(x)).numpy(), iris.scaler.transform(x))
        np.testing.assert_array_equal(tf.function(module.normalise)(tf.constant(x)).numpy(), iris.scaler.transform(x))


@pytest.mark.parametrize("prior", ["normal", "empirical_bayes"])
def test_weights_reading_a_column_constant_in_training_get_their_prior(prior):
    from teacher.model import build_flipout, posterior_stats, prior_where_unseen

    model = build_flipout(4, 3, 100, (8,), prior_scale=0.5, posterior_scale_init=-6.0, prior=prior, seed=1)
    q = model.layers[0].kernel_posterior.distribution
    loc, scale = q.loc.numpy().copy(), q.scale.numpy().copy()  # [4, 8]
    expected = posterior_stats(model)["prior_scale_0"] if prior == "empirical_bayes" else 0.5
    prior_where_unseen(model, [2], prior)
    assert np.all(q.loc.numpy()[2] == 0) and np.allclose(q.scale.numpy()[2], expected, rtol=1e-5)
    keep = [0, 1, 3]
    assert np.array_equal(q.loc.numpy()[keep], loc[keep]) and np.array_equal(q.scale.numpy()[keep], scale[keep])
    assert scale[2].max() < 0.01  # it started far below the prior

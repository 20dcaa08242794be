"""Stage 1: the teacher (Flipout by default), its training log, evaluation and the Monte Carlo SavedModel:
explicit weight sampling against the Keras layers themselves, the seed contract, a fresh interpreter."""
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

FRESH = """
import json, sys
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
assert not any(k.startswith(("distill", "teacher", "student")) for k in sys.modules)
x = tf.constant(json.loads(sys.argv[2]), tf.float32)
serve = m.signatures["serving_default"]
a, b = serve(features=x), serve(features=x)
calls = 200 if sys.argv[3] == "full" else 1
pred = m.signatures["predictive"](features=x, num_samples=tf.constant(10 * calls))
many = np.mean([serve(features=x)["probs"].numpy() for _ in range(calls)], axis=0)
seeded = m.signatures["predictive_seeded"](features=x, num_samples=tf.constant(50), seed=tf.constant(7, tf.int64))
print(json.dumps({
    "keys": sorted(a), "shape": list(a["probs"].shape), "signatures": sorted(m.signatures),
    "sum": a["probs"].numpy().sum(-1).tolist(),
    "min_var": float(a["variance"].numpy().min()),
    "differ": float(np.abs(a["probs"].numpy() - b["probs"].numpy()).max()),
    "first": a["probs"].numpy().tolist(), "ref": pred["probs"].numpy().tolist(), "many": many.tolist(),
    "seeded": {k: v.numpy().tolist() for k, v in seeded.items()},
    "decomp": float(np.abs(a["entropy"].numpy() - a["expected_entropy"].numpy() - a["mutual_information"].numpy()).max()),
}))
"""


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


def test_training_log_and_metrics(teacher_run):
    h = pd.read_csv(schema.teacher_dir(teacher_run) / "history.csv")
    assert h.columns[0] == "epoch" and h.columns[-1] == "seconds"
    assert {"train_nll", "kl", "elbo", "val_accuracy", "val_nll", "val_ece", "val_brier",
            "val_mutual_information"} <= set(h.columns)
    assert list(h["epoch"]) == list(range(1, len(h) + 1))
    assert (h["kl"] > 0).all() and np.allclose(h["elbo"], -(h["train_nll"] + h["kl"]))
    assert h["val_nll"].iloc[-5:].mean() < h["val_nll"].iloc[0]  # it learned
    m = json.loads((schema.teacher_dir(teacher_run) / "metrics.json").read_text())
    assert m["device"] in ("/CPU:0", "/GPU:0") and m["task"] == "classification" and m["kind"] == "flipout"
    assert m["epochs_run"] == len(h) and 1 <= m["best_epoch"] <= len(h) and m["eval_samples"] == 50
    assert 0 < m["test/mean_mutual_information"] < np.log(3)
    cfg = json.loads((schema.teacher_dir(teacher_run) / "config.json").read_text())
    assert cfg["task"] == "classification" and cfg["teacher"]["hidden"] == [64, 64]  # the task's recipe, resolved
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


def test_export_in_fresh_interpreters(teacher_run, iris):
    """Two processes load the export: each draws fresh weights per call (OS-seeded), the two draw differently,
    and the seeded predictive is bit-identical across them."""
    rows = iris["test"].x[:6].tolist()
    procs = [fresh.start(FRESH, schema.teacher_export(teacher_run), json.dumps(rows), mode) for mode in ("full", "light")]
    results = [fresh.result(p) for p in procs]
    r = results[0]
    assert r["keys"] == ["entropy", "expected_entropy", "mean_log_probs", "mutual_information", "probs", "variance"]
    assert r["signatures"] == ["predictive", "predictive_seeded", "sample", "sample_seeded", "serving_default", "serving_rows"]
    assert r["shape"] == [6, 3]
    assert np.allclose(r["sum"], 1, atol=1e-5) and r["min_var"] >= 0 and r["decomp"] < 1e-4
    assert r["differ"] > 0  # fresh weights on every call
    # 200 calls x 10 draws average to the 2000-draw predictive within Monte Carlo error
    assert np.abs(np.array(r["many"]) - np.array(r["ref"])).max() < 0.03
    pred_class = np.array(r["ref"]).argmax(-1)
    assert (pred_class == iris["test"].y[:6]).mean() >= 0.8  # raw features in: scaling is inside
    # no seed: the two processes' first calls drew different weights; the same seed: the same bits
    assert np.abs(np.array(r["first"]) - np.array(results[1]["first"])).max() > 0
    assert r["seeded"] == results[1]["seeded"]


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


@pytest.mark.parametrize("family", ["trained flipout", "fresh flipout", "fresh mc-dropout"])
def test_explicit_weight_sampling_matches_the_keras_layers(family, teacher_run, iris, restore_flipout):
    """The export's per-draw weight samples give each row the predictive distribution that the Keras model's own
    stochastic forward pass gives it (Flipout's per-row sign flips; dropout's per-row masks): the mean probs and
    the mutual information of 4000 draws agree within Monte Carlo standard errors."""
    import tensorflow as tf
    import tf_keras as tfk

    from teacher.export import MonteCarloModule, dropout_sampler, flipout_sampler
    from teacher.model import build_flipout, build_mlp, dense_layers

    tfk.utils.set_random_seed(1)
    if family == "trained flipout":
        model = restore_flipout(teacher_run)
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
    module = MonteCarloModule(CLS, sampler, [model], iris.scaler.shift, iris.scaler.scale)

    x = np.concatenate([iris["val"].x, iris["test"].x])
    z = tf.constant(iris.scaler.transform(x))

    @tf.function
    def keras_draws(z, s):
        """The Keras model called s times, each call its own stochastic forward pass -> [s, B, C]."""
        ta = tf.TensorArray(tf.float32, size=s)
        for i in tf.range(s):
            ta = ta.write(i, tf.nn.softmax(model(z, training=True), axis=-1))
        return ta.stack()

    mi = summary_np(keras_draws(z, 50).numpy())["mi"]
    rows = np.r_[np.argsort(mi)[-5:], np.argsort(mi)[:1]]  # the most uncertain rows and a confident one
    s = 4000
    reference = summary_np(keras_draws(tf.gather(z, rows), s).numpy())
    draws = module.sample_seeded(tf.constant(x[rows]), s, 11)["probs_samples"].numpy()  # [S, rows, C]
    explicit = summary_np(draws)
    out = {k: v.numpy() for k, v in module.predictive_seeded(tf.constant(x[rows]), s, 11).items()}
    np.testing.assert_allclose(out["probs"], explicit["probs"], atol=1e-5)  # the signature summarises those draws

    assert reference["mi"].max() > 0.005, reference["mi"]  # epistemic spread to compare (order-dependent draws: a margin)
    se = np.sqrt(reference["se_probs"] ** 2 + explicit["se_probs"] ** 2)
    np.testing.assert_array_less(np.abs(out["probs"] - reference["probs"]), 5 * se + 1e-6)
    se = np.sqrt(reference["se_mi"] ** 2 + explicit["se_mi"] ** 2)
    np.testing.assert_array_less(np.abs(out["mutual_information"] - reference["mi"]), 5 * se + 1e-5)
    # and the comparison can fail: one network's probs (a single draw) are told apart from the predictive
    se = np.sqrt(reference["se_probs"] ** 2 + explicit["se_probs"] ** 2)
    assert (np.abs(draws[0] - reference["probs"]) > 5 * se + 1e-6).any()


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


def test_help_lists_commands():
    """Every registered command is listed, and its own --help works (a broken option declaration fails here)."""
    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    names += [g.name for g in app.registered_groups]  # `experiment` and its studies
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and len(names) >= 9
    for name in names:
        assert name in r.output, name
        sub = CliRunner().invoke(app, [name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output, name


def test_config_defaults_by_task():
    from distill.errors import BdkError
    from teacher.config import RECURRENT_DEFAULTS, TASK_DEFAULTS, TeacherConfig

    cfg = TeacherConfig()
    assert cfg.hidden is None and cfg.epochs is None
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

"""Stage 3 pieces: the classification distillation loss against hand-computed values (the Gaussian one is in
test_regression.py), the student's heads and export (target units), its config, the gate, and the trained
students of the shared Iris, regression and sequence runs in a fresh interpreter."""
import numpy as np
import pytest
import tensorflow as tf

from distill import tasks
from distill.errors import BdkError
from student.config import FALLBACK_HIDDEN, TASK_DEFAULTS, StudentConfig
from student.export import StudentModule
from student.model import build_student
from student import dirichlet
from student.rows import holdout_mask
from student.train import check_gate
from tests import fresh

CLS, REG = tasks.get("classification"), tasks.get("regression")


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


Q = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
Z = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], np.float32)
NONE = np.array([-1, -1], np.int64)


def soft_ce(q, z, temperature=1.0):
    return float(CLS.distill_loss(tf.constant(q), tf.constant(z), tf.constant(NONE), temperature=temperature))


def test_soft_cross_entropy_by_hand():
    expected = -(Q * np.log(_softmax(Z))).sum(-1).mean()
    assert soft_ce(Q, Z) == pytest.approx(expected, rel=1e-5)
    # T = 2: both sides softened, teacher q^(1/T) renormalised, times T^2
    q2 = Q ** 0.5 / (Q ** 0.5).sum(-1, keepdims=True)
    expected2 = 4 * -(q2 * np.log(_softmax(Z / 2))).sum(-1).mean()
    assert soft_ce(Q, Z, temperature=2.0) == pytest.approx(expected2, rel=1e-5)


def test_soft_cross_entropy_is_minimised_by_the_teacher():
    at_teacher = soft_ce(Q, np.log(Q))
    entropy = -(Q * np.log(Q)).sum(-1).mean()
    assert at_teacher == pytest.approx(entropy, rel=1e-5)  # CE = H(q) + KL(q||p) with KL = 0
    assert soft_ce(Q, Z) > at_teacher


def test_hard_label_term_masks_unlabelled_rows_and_alpha_mixes():
    y = np.array([0, -1], np.int64)
    ce0 = -np.log(_softmax(Z)[0, 0])
    loss = lambda labels, alpha: float(CLS.distill_loss(tf.constant(Q), tf.constant(Z), tf.constant(labels), alpha=alpha))  # noqa: E731
    assert loss(y, 1.0) == pytest.approx(ce0, rel=1e-5)  # alpha = 1: the hard term alone, on the labelled row only
    assert loss(NONE, 1.0) == 0.0  # no labelled rows: no hard term
    assert loss(y, 0.25) == pytest.approx(0.75 * soft_ce(Q, Z) + 0.25 * ce0, rel=1e-5)
    assert loss(y, 0.0) == pytest.approx(soft_ce(Q, Z), rel=1e-6)


def test_student_heads():
    model = build_student(4, 3, (8,))
    out = model(tf.random.uniform((5, 4)))
    assert out["head"].shape == (5, 3) and out["epistemic"].shape == (5,)
    assert (out["epistemic"].numpy() >= 0).all()  # softplus head
    out = build_student(4, REG.head_units(0), (8, 8))(tf.random.uniform((5, 4)))
    assert out["head"].shape == (5, 2) and out["epistemic"].shape == (5,)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_student_export_answers_in_the_targets_units(task, tmp_path):
    t = tasks.get(task)
    rng = np.random.default_rng(0)
    shift, scale = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    model = build_student(4, t.head_units(3), (8,))
    module = StudentModule(t, model, shift, scale, target_shift=20.0, target_scale=3.0, epistemic_scale=2.5)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    raw = model(tf.constant((x - shift) / scale))
    head, epistemic = raw["head"].numpy(), raw["epistemic"].numpy()
    for out in (module.serve(tf.constant(x)), tf.saved_model.load(str(module.save(tmp_path / "s")))
                .signatures["serving_default"](features=tf.constant(x))):
        out = {k: v.numpy() for k, v in out.items()}
        np.testing.assert_allclose(out["epistemic"], 2.5 * epistemic, rtol=1e-5)
        if task == "classification":
            assert sorted(out) == ["entropy", "epistemic", "probs"]
            p = _softmax(head)
            np.testing.assert_allclose(out["probs"], p, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out["entropy"], -(p * np.log(p)).sum(-1), rtol=1e-4)
        else:
            assert sorted(out) == ["epistemic", "mean", "variance"]
            np.testing.assert_allclose(out["mean"], head[:, 0] * 3.0 + 20.0, rtol=1e-5)
            s2 = np.log1p(np.exp(head[:, 1] + tasks._VARIANCE_OFFSET)) + tasks.MIN_VARIANCE
            np.testing.assert_allclose(out["variance"], s2 * 9.0, rtol=1e-5)


def test_config_defaults_by_task_and_validation():
    cfg = StudentConfig()  # unset widths come from the task and the teacher (below); the default monitor and gate
    # as a trained student records them: test_pipeline.py::test_run_writes_every_artifact
    r = cfg.resolved("classification", teacher_hidden=[50, 20])  # classes: the teacher's widths, one draw's cost
    assert r.hidden == (50, 20) and r.learning_rate == TASK_DEFAULTS["classification"]["learning_rate"]
    assert cfg.resolved("classification").hidden == FALLBACK_HIDDEN  # a teacher without dense widths
    assert cfg.resolved("regression", teacher_hidden=[50]).hidden == TASK_DEFAULTS["regression"]["hidden"]
    assert cfg.resolved("classification", "sequence", teacher_hidden=[7]).hidden == (32, 32, 32)  # sequences' own
    assert StudentConfig(hidden=(7,)).resolved("regression", teacher_hidden=[50]).hidden == (7,)  # given values win
    with pytest.raises(BdkError, match="monitor"):
        StudentConfig(monitor="loss")
    with pytest.raises(BdkError, match="hidden"):
        StudentConfig(hidden=())
    assert cfg.resolved("classification").uncertainty == "ratio"  # tables of classes
    assert cfg.resolved("classification", "sequence").uncertainty == "dirichlet"  # sequences keep theirs
    assert cfg.resolved("regression").uncertainty == "regressor"
    with pytest.raises(BdkError, match="Dirichlet student needs classes"):
        StudentConfig(uncertainty="dirichlet").resolved("regression")
    with pytest.raises(BdkError, match="uncertainty"):
        StudentConfig(uncertainty="beta")


def test_holdout_slice_is_stable_and_proportional():
    ids = [f"{src}:{i}" for src in ("train", "uniform", "shell") for i in range(3000)]
    mask = holdout_mask(ids, 0.1)
    assert np.array_equal(mask, holdout_mask(ids, 0.1)) and abs(mask.mean() - 0.1) < 0.015
    for src in ("train", "uniform", "shell"):  # every source contributes in proportion
        assert abs(mask[[i.startswith(src) for i in ids]].mean() - 0.1) < 0.025
    assert not (holdout_mask(ids, 0.05) & ~mask).any()  # a smaller slice is inside the larger one


# ---------------------------------------------------------------- the Dirichlet student (student.dirichlet)

ALPHA = np.array([[2.0, 3.0, 5.0], [0.4, 0.3, 0.8], [40.0, 10.0, 1.0]])


def test_dirichlet_mean_log_density_by_hand():
    from scipy import stats

    rng = np.random.default_rng(0)
    for alpha in ALPHA:
        draws = rng.dirichlet(alpha, 50)  # [S, C]
        by_hand = np.mean([stats.dirichlet.logpdf(d, alpha) for d in draws])
        ours = dirichlet.mean_log_density(alpha[None], np.log(draws).mean(0)[None])[0]
        assert ours == pytest.approx(by_hand, rel=1e-9)


def test_dirichlet_precision_mle_recovers_the_generating_precision_and_maximises_the_likelihood():
    rng = np.random.default_rng(1)
    p, m, truth = [], [], []
    for alpha in ALPHA:
        draws = rng.dirichlet(alpha, 40_000)
        p.append(draws.mean(0)), m.append(np.log(draws).mean(0)), truth.append(alpha.sum())
    p, m = np.array(p), np.array(m)
    s = dirichlet.precision_mle(p, m)
    np.testing.assert_allclose(s, truth, rtol=0.05)
    at = dirichlet.mean_log_density(s[:, None] * p, m)
    for f in (0.8, 0.95, 1.05, 1.25):  # a maximum: any other precision is less likely
        assert (dirichlet.mean_log_density(f * s[:, None] * p, m) < at).all()


def test_dirichlet_uncertainty_against_closed_forms_and_monte_carlo():
    from scipy import special

    alpha = ALPHA
    u = {k: v.numpy() for k, v in dirichlet.uncertainty(tf.constant(np.log(alpha), tf.float32),
                                                        tf.constant(np.log(alpha.sum(-1)), tf.float32)).items()}
    p = alpha / alpha.sum(-1, keepdims=True)
    np.testing.assert_allclose(u["probs"], p, rtol=1e-5)
    np.testing.assert_allclose(u["entropy"], -(p * np.log(p)).sum(-1), rtol=1e-5)
    expected = (p * (special.digamma(alpha.sum(-1, keepdims=True) + 1) - special.digamma(alpha + 1))).sum(-1)
    np.testing.assert_allclose(u["expected_entropy"], expected, rtol=1e-4)
    np.testing.assert_allclose(u["mutual_information"], u["entropy"] - expected, atol=1e-5)
    rng = np.random.default_rng(2)  # E[H[pi]] by sampling pi ~ Dir(alpha)
    for row, a in enumerate(alpha):
        pi = np.clip(rng.dirichlet(a, 200_000), 1e-300, 1)
        h = -(pi * np.log(pi)).sum(-1)
        assert abs(h.mean() - u["expected_entropy"][row]) < 4 * h.std() / np.sqrt(len(h)) + 1e-4
    # a sharper Dirichlet of the same mean has less mutual information
    sharper = dirichlet.uncertainty(tf.constant(np.log(alpha), tf.float32), tf.constant(np.log(alpha.sum(-1) * 10), tf.float32))
    assert (sharper["mutual_information"].numpy() < u["mutual_information"]).all()


def test_dirichlet_mutual_information_keeps_its_relative_precision_at_large_precisions():
    """A confident row has alpha_0 up to 1e8 and a mutual information ~(C - 1) / (2 alpha_0): float32 must give it
    to a small relative error against float64 (a difference of two entropies near log alpha_0 was off by 17% in the
    median), so that the student's epistemic score still orders confident rows."""
    from scipy import special

    rng = np.random.default_rng(0)
    for classes in (3, 10, 100):
        logits = rng.normal(size=(500, classes)) * 3
        log_precision = rng.uniform(np.log(1e-2), np.log(1e8), 500)
        u = dirichlet.uncertainty(tf.constant(logits, tf.float32), tf.constant(log_precision, tf.float32))
        p = special.softmax(logits, -1)
        alpha0 = np.exp(log_precision)[:, None]
        entropy = -(p * np.log(p)).sum(-1)
        expected = special.digamma(alpha0[:, 0] + 1) - (p * special.digamma(alpha0 * p + 1)).sum(-1)
        relative = np.abs(u["mutual_information"].numpy() / (entropy - expected) - 1)
        assert np.median(relative) < 1e-5 and relative.max() < 3e-3, (np.median(relative), relative.max())
        np.testing.assert_allclose(u["expected_entropy"].numpy(), expected, atol=1e-5)
        assert np.isfinite(u["mutual_information"].numpy()).all()


@pytest.mark.parametrize("training", [True, False, None, tf.constant(True), tf.constant(False)])
def test_gradient_scale_scales_the_gradient_in_training_only(training):
    """The epistemic head's gradient into the body: scaled by 0.1 in training, whether Keras passes the flag as a
    Python bool or a tensor; the identity otherwise. The forward pass is the identity either way."""
    from student.model import GradientScale

    x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = GradientScale(0.1)(x, training=training)
    np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6)
    scaled = bool(training.numpy()) if tf.is_tensor(training) else bool(training)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), np.full((2, 3), 0.1 if scaled else 1.0), rtol=1e-6)


@pytest.mark.parametrize("name, to_score", [("log_regressor", lambda v: np.log(np.maximum(v, 1e-6))),
                                             ("sqrt_regressor", np.sqrt)])
def test_transformed_regressors_regress_the_transform_and_serve_the_score(name, to_score):
    from student.uncertainty import HEADS, LOG_FLOOR

    head = HEADS[name]
    mi = np.array([0.0, 1e-9, 1e-4, 0.3, 1.2])
    scores = head.scores({"mutual_information": mi}, tasks.get("classification"), 3)
    np.testing.assert_allclose(scores, to_score(mi))
    served = head.serve(CLS, tf.zeros((5, 3)), tf.constant(scores, tf.float32), 0.0, 1.0)
    floor = LOG_FLOOR if name == "log_regressor" else 0.0
    np.testing.assert_allclose(served["epistemic"].numpy(), np.maximum(mi, floor), rtol=1e-5, atol=1e-12)


def test_ratio_head_regresses_the_epistemic_share_and_serves_it_of_the_students_total():
    """classes: the target is MI / H (in [0, 1], a sure teacher's 0 / 0 is 0); the export serves that share of the
    student's own entropy, and expected_entropy + mutual_information = entropy."""
    from student.uncertainty import HEADS

    head = HEADS["ratio"]
    mi, h = np.array([0.0, 1e-6, 0.02, 0.5, 0.61]), np.array([0.0, 1e-4, 0.1, 0.6, 0.6])  # MC noise: MI > H
    scores = head.scores({"mutual_information": mi, "entropy": h}, tasks.get("classification"), 3)
    np.testing.assert_allclose(scores, [0.0, 0.01, 0.2, 0.5 / 0.6, 1.0])
    logits = tf.constant([[0.0, 0.0, 0.0], [4.0, 0.0, -1.0], [1.0, 2.0, 3.0], [0.0, 5.0, 0.0]])
    served = {k: v.numpy() for k, v in head.serve(CLS, logits, tf.constant([0.5, 0.0, 1.3, 0.25]), 0.0, 1.0).items()}
    entropy = served["entropy"]
    np.testing.assert_allclose(served["epistemic"], entropy * [0.5, 0.0, 1.0, 0.25], rtol=1e-6)  # the share clipped to 1
    np.testing.assert_array_equal(served["mutual_information"], served["epistemic"])
    np.testing.assert_allclose(served["expected_entropy"] + served["mutual_information"], entropy, rtol=1e-6)
    # a saturated softmax has no entropy left to share: why the export clamps its inputs (student.train.input_bounds)
    sure = head.serve(CLS, tf.constant([[200.0, 0.0, 0.0]]), tf.constant([1.0]), 0.0, 1.0)
    assert float(sure["epistemic"][0]) == float(sure["expected_entropy"][0]) == 0.0


def test_ratio_head_for_regression_is_the_epistemic_share_of_the_variance():
    from student.uncertainty import HEADS

    task = tasks.get("regression")
    scores = HEADS["ratio"].scores({"epistemic_variance": np.array([1.0, 0.5]), "variance": np.array([4.0, 0.5])},
                                   task, 0)
    np.testing.assert_allclose(scores, [0.25, 1.0])
    served = HEADS["ratio"].serve(task, tf.constant([[0.3, 0.2], [1.0, -1.0]]), tf.constant([0.25, 1.0]), 2.0, 3.0)
    np.testing.assert_allclose(served["epistemic"].numpy(), served["variance"].numpy() * [0.25, 1.0], rtol=1e-6)
    assert "mutual_information" not in served


def test_tflite_safe_digamma_matches_tensorflows():
    x = tf.constant(np.concatenate([np.linspace(1, 3, 401), np.logspace(0.5, 8, 401)]), tf.float32)
    np.testing.assert_allclose(dirichlet.digamma_above_one(x).numpy(), tf.math.digamma(x).numpy(), rtol=2e-6, atol=2e-6)


def test_dirichlet_student_export(tmp_path):
    model = build_student(2, 3, (4,), epistemic_activation="linear")
    module = StudentModule(CLS, model, np.zeros(2), np.ones(2), epistemic_scale=2.0, epistemic_shift=1.0,
                           uncertainty="dirichlet")
    x = np.array([[0.1, 0.2], [3.0, -1.0]], np.float32)
    out = {k: v.numpy() for k, v in module.serve(tf.constant(x)).items()}
    raw = model(x)
    ref = dirichlet.uncertainty(raw["head"], raw["epistemic"] * 2.0 + 1.0)
    for k in ("probs", "entropy", "expected_entropy", "mutual_information"):  # float32: graph and eager rounding
        np.testing.assert_allclose(out[k], ref[k].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out["epistemic"], out["mutual_information"])


def test_gate_compares_with_margins():
    teacher = {"val/nll": 0.20, "val/ece": 0.05}
    good = {"val/nll": 0.22, "val/ece": 0.06}
    bad = {"val/nll": 0.40, "val/ece": 0.20}
    cfg = StudentConfig(gate_nll_margin=0.05, gate_ece_margin=0.05)
    assert check_gate(cfg, good, teacher) == []
    failures = check_gate(cfg, bad, teacher)
    assert len(failures) == 2 and "NLL" in failures[0] and "ECE" in failures[1]
    assert check_gate(StudentConfig(gate_nll_margin=1, gate_ece_margin=1), bad, teacher) == []
    # regression has no ECE: the NLL alone decides
    assert check_gate(cfg, {"val/nll": 1.24, "val/rmse": 9.0}, {"val/nll": 1.20, "val/rmse": 3.0}) == []
    assert len(check_gate(cfg, {"val/nll": 1.30}, {"val/nll": 1.00})) == 1


def test_parameter_count_and_flops_of_a_student_architecture():
    import tensorflow as tf

    from student.train import student_flops, student_parameters

    for f, units, hidden in ((4, 3, (32,)), (64, 10, (32, 32)), (13, 2, (8, 16, 4))):
        model = build_student(f, units, hidden)
        assert student_parameters(f, units, hidden) == model.count_params()
        # FLOPs as TensorFlow's profiler counts them (2 per multiply-add of the MatMuls; bias adds and activations
        # are the few per-unit ops it adds on top)
        graph = tf.function(model).get_concrete_function(tf.TensorSpec([1, f], tf.float32)).graph
        profiled = tf.compat.v1.profiler.profile(graph, options=tf.compat.v1.profiler.ProfileOptionBuilder.float_operation(),
                                                 cmd="op").total_float_ops
        assert student_flops(f, units, hidden) <= profiled <= student_flops(f, units, hidden) + 4 * (sum(hidden) + units + 1)


def test_cap_warning_fires_only_while_still_improving():
    from distill.training import fit

    class Tiny:  # fit() snapshots and restores `weights`; a constant stands in for a model
        weights = []

    def run(values, epochs, patience):
        it = iter(values)
        return fit(Tiny(), lambda rng: {}, lambda: {"loss": next(it)}, "loss", epochs, patience, seed=0, progress=False)

    improving = run([5, 4, 3, 2, 1], epochs=5, patience=3)
    assert improving.improving_at_cap and "still improving" in improving.cap_note("the student", "5 epochs")
    flat = run([5, 1, 2, 3, 4, 5, 6], epochs=7, patience=10)  # the cap ended it, but it stopped improving long before
    assert not flat.improving_at_cap and flat.cap_note("the student", "7 epochs") is None
    early = run([1, 2, 3, 4], epochs=10, patience=3)
    assert early.stopped_early and not early.improving_at_cap


def test_early_stopping_waits_for_the_decayed_rate():
    """Early stopping may end training only from epoch `stop_from` on: a held-out loss that stalls for the patience at
    the peak rate and falls again later (as the cosine decays) is trained through, and the best epoch is the later one."""
    from student.config import StudentConfig
    from student.train import Schedule
    from distill.training import fit

    class Tiny:
        weights = []

    stall_then_fall = [5, 4, 4.5, 4.6, 4.7, 3, 2, 1.5, 1.4, 1.3]
    run = lambda stop_from: fit(Tiny(), lambda rng: {}, (lambda it: lambda: {"loss": next(it)})(iter(stall_then_fall)),  # noqa: E731
                                "loss", 10, 3, seed=0, progress=False, stop_from=stop_from)
    stalled = run(0)
    assert stalled.stopped_early and stalled.best_epoch == 2 and len(stalled.history) == 5
    through = run(6)
    assert not through.stopped_early and through.best_epoch == 10
    # the student's schedule: stop_from is that share of its epochs
    cfg = StudentConfig().resolved("classification")
    s = Schedule.for_rows(100_000, cfg, 1e-2)
    assert s.stop_from == int(np.ceil(cfg.stop_from * s.epochs)) > 1
    assert Schedule.for_rows(100_000, StudentConfig(stop_from=0.0).resolved("classification"), 1e-2).stop_from == 0


# ---------------------------------------------------------------- the trained students of the shared runs

STUDENT_FRESH = """
import json, sys
import numpy as np
import tensorflow as tf
out = {}
for case, export, rows in json.loads(sys.argv[1]):
    f = tf.saved_model.load(export).signatures["serving_default"]
    x = tf.constant(rows, tf.float32)
    a, b = f(features=x), f(features=x)
    out[case] = {"same": all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a),
                 **{k: v.numpy().tolist() for k, v in a.items()}}
assert not any(k.split(".")[0] in ("distill", "teacher", "student", "bdk") for k in sys.modules)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def student_answers(pipeline_run, regression_run, sequence_run):
    """The published students of the shared Iris, regression and sequence runs (conftest), each called twice on a few
    raw inputs in one fresh interpreter without the project (one TensorFlow start for the three)."""
    import json

    import pandas as pd

    from distill import schema
    from tests.sequence_data import tiny_sequences

    features = json.loads((schema.data_dir(regression_run) / "dataset.json").read_text())["feature_names"]
    inputs = {"classification": (pipeline_run, [[5.1, 3.5, 1.4, 0.2], [6.3, 2.8, 5.1, 1.5], [6.0, 2.9, 4.5, 1.5]]),
              "regression": (regression_run, pd.read_parquet(schema.transfer_path(regression_run))[features]
                             .iloc[:16].to_numpy(np.float32).tolist()),
              "sequence": (sequence_run, tiny_sequences(4, seed=5)[0].tolist())}
    return fresh.run(STUDENT_FRESH, json.dumps([[case, str(schema.student_export(run)), rows]
                                                for case, (run, rows) in inputs.items()]))


@pytest.mark.parametrize("case", ["classification", "regression", "sequence"])
def test_student_export_is_deterministic_in_a_fresh_interpreter(case, student_answers):
    """A trained student's export answers without the project, in the task's outputs and units, the same bits on
    every call (no sampling: one forward pass)."""
    r = student_answers[case]
    assert r.pop("same")
    out = {k: np.array(v) for k, v in r.items()}
    assert (out["epistemic"] >= 0).all()
    if case == "regression":
        assert sorted(out) == ["epistemic", "mean", "variance"] and len(out["mean"]) == 16
        assert (out["variance"] > 0).all() and 30 < out["mean"].mean() < 70  # the target's units (around 50)
    else:  # the Dirichlet student
        assert sorted(out) == ["entropy", "epistemic", "expected_entropy", "mutual_information", "probs"]
        assert out["probs"].shape == ((3, 3) if case == "classification" else (4, 2))
        np.testing.assert_allclose(out["probs"].sum(-1), 1, atol=1e-5)

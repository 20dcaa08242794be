"""The teacher's recipe: empirical-Bayes prior, stopping, step budget, and bit-identical reruns under one seed."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_empirical_bayes_kl_is_the_kl_at_the_optimal_prior_scale():
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk

    from teacher.model import build_flipout, posterior_stats

    tfd = tfp.distributions
    tfk.utils.set_random_seed(0)
    n_train = 50
    model = build_flipout(3, 2, n_train, hidden=(5,), kl_weight=1.0, posterior_scale_init=-2.0, prior="empirical_bayes")
    model(tf.zeros([1, 3]))
    layers = [l for l in model.layers if isinstance(l, tfp.layers.DenseFlipout)]
    total = 0.0
    for layer, loss in zip(layers, model.losses):
        q = layer.kernel_posterior.distribution
        mu, sigma = tf.convert_to_tensor(q.loc).numpy(), tf.convert_to_tensor(q.scale).numpy()
        s_star = np.sqrt(np.mean(mu ** 2 + sigma ** 2))  # closed form: argmin_s KL(q || N(0, s^2))

        def kl(s):
            return float(tf.reduce_sum(tfd.kl_divergence(tfd.Normal(mu, sigma), tfd.Normal(0.0, s))))

        assert float(loss) * n_train == pytest.approx(kl(s_star), rel=1e-4)
        assert kl(s_star) < kl(0.9 * s_star) and kl(s_star) < kl(1.1 * s_star)  # a minimum
        total += kl(s_star)
    stats = posterior_stats(model)
    assert stats["prior_scale_0"] == pytest.approx(np.sqrt(np.mean(
        tf.convert_to_tensor(layers[0].kernel_posterior.distribution.loc).numpy() ** 2
        + tf.convert_to_tensor(layers[0].kernel_posterior.distribution.scale).numpy() ** 2)), rel=1e-5)
    assert 0 < stats["sigma_p10"] <= stats["sigma_median"] <= stats["sigma_p90"]


def test_fit_stops_once_the_monitored_value_stops_improving_and_restores_the_best_weights():
    import tf_keras as tfk

    from distill.training import fit

    model = tfk.Sequential([tfk.Input((2,)), tfk.layers.Dense(1)])
    values = iter([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 1.3, 0.5])  # best at epoch 3, then 3 epochs without improvement
    weights_at = {}

    def train_epoch(rng):
        model.layers[0].bias.assign_add([1.0])
        return {"train_loss": 0.0}

    def validate():
        epoch = len(weights_at) + 1
        weights_at[epoch] = float(model.layers[0].bias.numpy()[0])
        return {"val_nll": next(values)}

    result = fit(model, train_epoch, validate, "val_nll", epochs=100, patience=3, seed=0, progress=False)
    assert result.best_epoch == 3 and len(result.history) == 6 and result.stopped_early
    assert float(model.layers[0].bias.numpy()[0]) == weights_at[3]


def test_step_budget_scales_with_the_data_size():
    from teacher.config import TeacherConfig

    cfg = TeacherConfig(steps=1000, batch_size=10).resolved("classification")
    assert cfg.max_epochs(100) == 100  # 10 steps per epoch
    assert cfg.max_epochs(1000) == 10  # 100 steps per epoch
    assert TeacherConfig(epochs=7).resolved("classification").max_epochs(10_000) == 7  # an explicit epoch count wins


TRAIN = """
import sys
import distill
from distill.data import DataConfig
from bdk.pipeline import teacher_stage
from teacher.config import TeacherConfig
for run in sys.argv[1:]:  # the same teacher again in the same process
    teacher_stage(DataConfig(dataset="iris", seed=3), TeacherConfig(epochs=8, eval_samples=20, val_samples=5, seed=3),
                  run, overwrite=True, progress=False)
"""


def test_one_seed_gives_bit_identical_teachers_in_fresh_processes_and_within_one(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b", tmp_path / "a_again"]  # a_again: the second teacher of a's process
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN, *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for args in (runs[::2], runs[1:2])]  # two fresh processes at once
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    a, *others = (json.loads((r / "teacher" / "metrics.json").read_text()) for r in runs)
    a.pop("train_seconds")
    for other, run in zip(others, runs[1:]):
        other.pop("train_seconds")
        assert a == other, run.name  # metrics, best epoch, posterior scales: exactly
        for name in ("test_predictions.csv", "val_predictions.csv"):
            assert (runs[0] / "teacher" / name).read_bytes() == (run / "teacher" / name).read_bytes()
    import tensorflow as tf

    ckpt = [tf.train.load_checkpoint(str(r / "teacher" / "weights" / "ckpt")) for r in runs]
    names = [n for n in ckpt[0].get_variable_to_shape_map() if "optimizer" not in n.lower()]
    assert names
    for n in names:
        for other in ckpt[1:]:
            np.testing.assert_array_equal(ckpt[0].get_tensor(n), other.get_tensor(n))
    # The export still draws fresh weights per call without a seed, and the same seed gives the same draws.
    m = tf.saved_model.load(str(runs[0] / "teacher" / "export" / "1"))
    x = tf.constant([[5.0, 3.0, 4.0, 1.2]])
    fresh = [m.signatures["predictive"](features=x, num_samples=tf.constant(10))["probs"].numpy() for _ in range(2)]
    assert not np.array_equal(*fresh)
    seeded = [m.signatures["predictive_seeded"](features=x, num_samples=tf.constant(10), seed=tf.constant(5, tf.int64))
              ["probs"].numpy() for _ in range(2)]
    np.testing.assert_array_equal(*seeded)


def test_per_row_draws_of_small_unseeded_requests_match_shared_weight_draws():
    """Serving's per-row path (local reparameterisation) and the seeded shared-weight path are the same
    per-row predictive: means and mutual information agree within Monte Carlo error."""
    import tensorflow as tf
    import tf_keras as tfk

    from distill import tasks
    from teacher.export import MonteCarloModule, flipout_per_row, flipout_sampler
    from teacher.model import build_flipout, dense_layers

    tfk.utils.set_random_seed(1)
    model = build_flipout(4, 3, 100, hidden=(16, 16), posterior_scale_init=-0.5)  # scales ~0.47: draws disagree
    layers = dense_layers(model)
    mc = MonteCarloModule(tasks.get("classification"), flipout_sampler(layers), [model], np.zeros(4), np.ones(4),
                          per_row=flipout_per_row(layers))
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32) * 2)
    s = 4000
    per_row = {k: v.numpy() for k, v in mc.predictive(x, s).items()}  # 3 rows <= PER_ROW_ROWS: per-row draws
    shared = np.stack([mc.sample_seeded(x[i:i + 1], s, i)["probs_samples"].numpy()[:, 0] for i in range(3)], 1)  # [S, 3, C]
    se = shared.std(axis=0) / np.sqrt(s)
    assert np.all(np.abs(per_row["probs"] - shared.mean(axis=0)) < 5 * np.sqrt(2) * se + 1e-4)
    ref_mi = tasks.get("classification").summarize(tf.constant(shared))["mutual_information"].numpy()
    assert per_row["mutual_information"].max() > 0.05  # a non-trivial posterior
    np.testing.assert_allclose(per_row["mutual_information"], ref_mi, rtol=0.15, atol=0.01)

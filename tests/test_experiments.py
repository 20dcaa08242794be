"""Teacher families behind one export, and the studies' logic on tiny configurations."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from distill import data as data_lib, schema
from bdk.studies.classification import StudyConfig, bands_overlap, digits_files, kl_weight_study, reliability_band
from distill.transfer import SoftLabelConfig, TransferConfig


def _tiny(**teacher):
    base = StudyConfig()
    return replace(base, teacher=replace(base.teacher, epochs=8, eval_samples=10, **teacher),
                   soft_labels=SoftLabelConfig(transfer=TransferConfig(perturbations=1, interpolations=20, uniform=30, shell=20), samples=10),
                   student=replace(base.student, epochs=5, baseline_epochs=5),
                   evaluation=replace(base.evaluation, samples=10, bootstrap=50, latency_calls=5, ood_rows=50))


@pytest.mark.parametrize("kind", ["ensemble", "mc-dropout", "swag"])
def test_other_teacher_families_share_the_export(kind, iris, tmp_path):
    import tensorflow as tf

    from teacher.config import TeacherConfig
    from teacher.train import train_teacher

    cfg = TeacherConfig(kind=kind, members=3, epochs=10, eval_samples=12, swag_epochs=6, swag_rank=4)
    data_lib.save(iris, schema.data_dir(tmp_path))
    summary = train_teacher(cfg, tmp_path)
    assert summary["kind"] == kind
    m = tf.saved_model.load(str(schema.teacher_export(tmp_path)))
    assert set(m.signatures) == {"serving_default", "predictive", "predictive_seeded", "sample", "sample_seeded", "serving_rows"}
    x = tf.constant(iris["test"].x[:5])
    out = m.signatures["predictive"](features=x, num_samples=tf.constant(12))
    assert np.allclose(out["probs"].numpy().sum(-1), 1, atol=1e-5)
    draws = m.signatures["sample"](features=x, num_samples=tf.constant(6))["probs_samples"].numpy()
    if kind == "ensemble":  # draw i is member i mod 3: draws 0 and 3 are the same net
        assert np.allclose(draws[0], draws[3]) and not np.allclose(draws[0], draws[1])
    else:  # a fresh dropout mask, or SWAG weight sample, per draw
        assert not np.allclose(draws[0], draws[1])
    seeded = m.signatures["predictive_seeded"]  # the seeded contract holds for every family
    a, b = (seeded(features=x, num_samples=tf.constant(12), seed=tf.constant(7, tf.int64))["probs"].numpy() for _ in range(2))
    assert np.array_equal(a, b)
    if kind == "swag":  # the SWA phase ran and the export samples from its moments
        history = pd.read_csv(schema.teacher_dir(tmp_path) / "history.csv")
        assert (history["phase"] == "swa").sum() == 6


def test_swag_draws_have_the_swag_mean_and_covariance():
    import tensorflow as tf

    from teacher.swag import SwagMoments, swag_sampler

    rng = np.random.default_rng(0)
    shapes = [((2, 3), (3,)), ((3, 1), (1,))]  # P = 6 + 3 + 3 + 1 = 13
    mean, deviations = rng.normal(size=13), rng.normal(size=(4, 13))
    sq_mean = mean ** 2 + rng.uniform(0.1, 1.0, 13)  # diag = sq_mean - mean^2
    sample = swag_sampler(SwagMoments(mean, sq_mean, deviations, shapes))
    layers = sample(tf.constant(3, tf.int64), tf.constant(40_000))
    assert [tuple(k.shape) for k, _, _ in layers] == [(40_000, 2, 3), (40_000, 3, 1)]
    theta = np.concatenate([np.concatenate([k.numpy().reshape(40_000, -1), b.numpy()], 1) for k, b, _ in layers], 1)
    cov = (np.diag(sq_mean - mean ** 2) + deviations.T @ deviations / 3) / 2  # (diag + D^T D / (K - 1)) / 2
    np.testing.assert_allclose(theta.mean(0), mean, atol=5 * np.sqrt(np.diag(cov).max() / 40_000))
    np.testing.assert_allclose(np.cov(theta.T), cov, atol=0.06 * np.abs(cov).max())


def test_reliability_bands_and_overlap_rule():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    calibrated = np.where(rng.random(n) < 0.8, y, 1 - y)  # right 80% of the time
    p_good = np.eye(2)[calibrated] * 0.6 + 0.2  # confidence 0.8
    a = reliability_band(p_good, y, resamples=200)
    b = reliability_band(p_good, y, resamples=200, seed=1)
    assert bands_overlap(a, b)[0]
    wrong = np.eye(2)[1 - y] * 0.6 + 0.2  # confidence 0.8, always wrong
    c = reliability_band(wrong, y, resamples=200)
    ok, apart = bands_overlap(a, c)
    assert not ok and apart == [11]  # the 0.8 bin of 15 equal-width bins


def test_digits_files_split_classes(tmp_path):
    inside, outside = digits_files(tmp_path)
    a, b = pd.read_csv(inside), pd.read_csv(outside)
    assert set(a["digit"]) == {0, 1, 2, 3, 4} and "digit" not in b.columns
    assert len(a) + len(b) == 1797 and a.shape[1] == 66


def test_kl_weight_study_end_to_end_tiny(tmp_path):
    out = tmp_path / "kl"
    summary = kl_weight_study(_tiny(), [0.5, 2.0], seeds=1, out=out, progress=False)
    assert summary["verdict"].split(":")[0] in {"null", "supported", "rejected"}
    table = pd.read_csv(out / "metrics.csv")
    assert len(table) == 4 and set(table["kl_weight"]) == {0.5, 2.0}
    for name in ("report.md", "reliability_by_kl_weight.png", "elbo_terms_by_kl_weight.png", "summary.json"):
        assert (out / name).exists()
    assert json.loads((out / "summary.json").read_text())["weights"] == [0.5, 2.0]


def test_family_studies_run_every_table_family_by_default():
    """`bdk experiment teachers` and `digits` pass no kinds: the default must not include the sequence-only family."""
    import inspect

    from bdk.studies.classification import digits_study, teachers_study

    for study in (teachers_study, digits_study):
        assert inspect.signature(study).parameters["kinds"].default == ("flipout", "ensemble", "mc-dropout", "swag")

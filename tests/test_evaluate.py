"""The evaluation's pure parts (bdk/evaluate.py) on synthetic predictions: scores with intervals, OOD AUROCs, trust by
region, the side-by-side table and the far-shell OOD rows. No exports, no TensorFlow."""
import numpy as np
import pandas as pd
import pytest

from bdk.evaluate import EvalConfig, ood_inputs, score_all, side_by_side, trust_by_region
from bdk.report import MODELS
from distill import data, metrics, tasks
from distill.errors import BdkError

CLASSES = ["a", "b", "c"]
FAST = EvalConfig(bootstrap=100)  # the fewest resamples score_all allows


def class_dataset(rows: int = 300, seed: int = 0) -> data.Dataset:
    """Three classes of two uniform features, with an id column."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (rows, 2))
    label = np.asarray(CLASSES, dtype=object)[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)]
    df = pd.DataFrame({"id": np.arange(500, 500 + rows), "x1": x[:, 0], "x2": x[:, 1], "label": label})
    return data.build_dataset(df, data.DataConfig(dataset="classes.csv", label_column="label"))


def regression_dataset(rows: int = 300, seed: int = 0) -> data.Dataset:
    """y = 3 x1 - x2 + N(0, 0.5^2), x uniform on [-1, 1]^2."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (rows, 2))
    df = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "y": 3 * x[:, 0] - x[:, 1] + rng.normal(0, 0.5, rows)})
    return data.build_dataset(df, data.DataConfig(dataset="regression.csv", label_column="y"))


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(-1)


def _class_outputs(probs: np.ndarray, epistemic: np.ndarray | None) -> dict[str, np.ndarray]:
    out = {"probs": probs.astype(np.float32), "entropy": _entropy(probs).astype(np.float32)}
    if epistemic is not None:
        out["epistemic"] = epistemic.astype(np.float32)
    return out


def class_preds(ds: data.Dataset, ood: str = "far", ood_rows: int = 40, seed: int = 0) -> dict:
    """Shaped like predict_all's: model -> input set -> outputs. The teacher puts >= 0.9 on the true class, the
    student mixes 10% noise into the teacher, the baseline is confidently wrong (the next class), baseline_ts is its
    temperature-scaled copy. OOD rows: near-uniform with a large mutual information (`far`), or the test rows'
    outputs again (`same`)."""
    rng = np.random.default_rng(seed)
    task, k = tasks.get("classification"), len(CLASSES)
    preds: dict = {m: {} for m in MODELS}
    sets = {name: ds[name].y for name in ("val", "test")}
    sets["ood"] = None
    for name, y in sets.items():
        if name == "ood" and ood == "same":
            for m in MODELS:
                preds[m]["ood"] = {key: v.copy() for key, v in preds[m]["test"].items()}
            continue
        n = ood_rows if y is None else len(y)
        if y is None:
            teacher = rng.dirichlet(np.full(k, 50.0), n)  # close to uniform
            wrong = rng.integers(0, k, n)
        else:
            teacher = 0.9 * np.eye(k)[y] + 0.1 * rng.dirichlet(np.ones(k), n)
            wrong = (y + 1) % k
        mi = _entropy(teacher) * (0.6 if y is None else 0.3)
        t = _class_outputs(teacher, mi)
        t.update(expected_entropy=t["entropy"] - t["epistemic"], mutual_information=t["epistemic"])
        preds["teacher"][name] = t
        student = 0.9 * teacher + 0.1 * rng.dirichlet(np.ones(k), n)
        preds["student"][name] = _class_outputs(student, mi * 1.1 + rng.uniform(0, 0.01, n))
        preds["baseline"][name] = _class_outputs(0.8 * np.eye(k)[wrong] + 0.2 / k, None)
        preds["baseline_ts"][name] = task.temperature_scaled(preds["baseline"][name], 1.5)
    return preds


def regression_preds(ds: data.Dataset, ood: str = "far", ood_rows: int = 40, seed: int = 0) -> dict:
    """Teacher and student: mean near y, variance 0.25 + epistemic, epistemic small on test and 1-2 on OOD rows;
    the baseline's variance is 0.25 everywhere (it cannot tell OOD rows); baseline_ts its scaled copy."""
    rng = np.random.default_rng(seed)
    task = tasks.get("regression")
    preds: dict = {m: {} for m in MODELS}
    for name in ("val", "test", "ood"):
        if name == "ood" and ood == "same":
            for m in MODELS:
                preds[m]["ood"] = {key: v.copy() for key, v in preds[m]["test"].items()}
            continue
        y = ds[name].y if name != "ood" else rng.normal(0, 3, ood_rows)
        n = len(y)
        epi = rng.uniform(1.0, 2.0, n) if name == "ood" else rng.uniform(0.01, 0.05, n)
        mean = y + rng.normal(0, 0.5, n)
        t = {"mean": mean, "variance": 0.25 + epi, "epistemic_variance": epi, "epistemic": epi}
        preds["teacher"][name] = {key: np.asarray(v, np.float32) for key, v in t.items()}
        s = {"mean": mean + rng.normal(0, 0.05, n), "variance": 0.26 + epi, "epistemic": epi * 1.1}
        preds["student"][name] = {key: np.asarray(v, np.float32) for key, v in s.items()}
        preds["baseline"][name] = {"mean": (y + rng.normal(0, 0.7, n)).astype(np.float32),
                                   "variance": np.full(n, 0.25, np.float32)}
        preds["baseline_ts"][name] = task.temperature_scaled(preds["baseline"][name], 1.2)
    return preds


@pytest.fixture(scope="module")
def classes():
    return class_dataset()


@pytest.fixture(scope="module")
def regression():
    return regression_dataset()


# ---------------------------------------------------------------- score_all


def test_score_all_classes_has_metrics_with_intervals_per_model_and_split(classes):
    task = tasks.get("classification")
    out = score_all(FAST, classes, task, class_preds(classes))
    for m in MODELS:
        for split in ("test", "val"):
            for name in metrics.CLASSIFICATION_METRICS:
                value, (lo, hi) = out[m][f"{split}/{name}"], out[m][f"{split}/{name}_ci95"]
                assert np.isfinite(value) and lo <= value + 1e-9 and value <= hi + 1e-9, (m, split, name)
    # computed from each model's own predictions and the split's labels
    assert out["teacher"]["test/accuracy"] == 1.0 and out["student"]["test/accuracy"] == 1.0
    assert out["baseline"]["test/accuracy"] == 0.0 and out["baseline_ts"]["val/accuracy"] == 0.0
    assert out["baseline"]["test/nll"] > out["teacher"]["test/nll"]
    assert out["baseline_ts"]["test/nll"] != pytest.approx(out["baseline"]["test/nll"])  # the temperature acts
    expected = metrics.nll(class_preds(classes)["student"]["val"]["probs"], classes["val"].y)
    assert out["student"]["val/nll"] == pytest.approx(expected)
    assert set(out) >= {"agreement", "epistemic_tracking", "regions", "ood"}


def test_score_all_ood_auroc_keys_and_values(classes):
    task = tasks.get("classification")
    keys = {f"{m}/entropy_auroc" for m in MODELS} | {"teacher/mutual_information_auroc", "student/epistemic_auroc"}
    far = score_all(FAST, classes, task, class_preds(classes, ood="far"))["ood"]
    same = score_all(FAST, classes, task, class_preds(classes, ood="same"))["ood"]
    assert set(far) == keys and set(same) == keys
    for k in ("teacher/entropy_auroc", "student/entropy_auroc", "teacher/mutual_information_auroc",
              "student/epistemic_auroc"):
        assert far[k] > 0.99, k
    for k in keys:
        assert same[k] == pytest.approx(0.5), k


def test_score_all_regression_uncertainty_summary_and_ood(regression):
    task = tasks.get("regression")
    preds = regression_preds(regression)
    out = score_all(FAST, regression, task, preds)
    for m in MODELS:
        for split in ("test", "val"):
            for name in metrics.REGRESSION_METRICS:
                value, (lo, hi) = out[m][f"{split}/{name}"], out[m][f"{split}/{name}_ci95"]
                assert lo <= value + 1e-9 and value <= hi + 1e-9, (m, split, name)
    t = preds["teacher"]["test"]
    assert out["teacher"]["test/mean_epistemic_share"] == pytest.approx(np.mean(t["epistemic"] / t["variance"]), rel=1e-5)
    assert 0 < out["student"]["test/mean_epistemic_share"] < 1
    assert out["baseline"]["test/mean_epistemic_share"] is None and out["baseline_ts"]["test/mean_epistemic_share"] is None
    assert out["student"]["test/rmse"] < out["baseline"]["test/rmse"]
    ood = out["ood"]
    assert set(ood) == {f"{m}/variance_auroc" for m in MODELS} | {"teacher/epistemic_variance_auroc",
                                                                    "student/epistemic_auroc"}
    assert ood["teacher/variance_auroc"] > 0.99 and ood["student/epistemic_auroc"] > 0.99
    assert ood["baseline/variance_auroc"] == pytest.approx(0.5)  # a constant variance cannot tell OOD rows
    assert "test/top1_agreement" not in out["agreement"]


# ---------------------------------------------------------------- trust_by_region


def test_trust_by_region_classes(classes):
    task = tasks.get("classification")
    preds = class_preds(classes)
    preds["student"]["test"] = {k: v.copy() for k, v in preds["teacher"]["test"].items()}  # a perfect copy on test
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), 50)
    flipped = probs.copy()
    flipped[:10] = probs[:10, ::-1]  # 10 rows whose argmax moves (ties have probability 0)
    changed = (probs.argmax(-1) != flipped.argmax(-1)).mean()
    epi = rng.uniform(0, 1, 50)
    preds["teacher"]["perturbed"] = _class_outputs(probs, epi)
    preds["student"]["perturbed"] = _class_outputs(flipped, 1 - epi)
    preds["student"]["uniform"] = _class_outputs(probs, epi)  # no teacher side: not scored
    agreement, tracking, regions = trust_by_region(task, preds)

    assert list(regions) == ["test", "perturbed", "ood"]
    assert agreement["test/kl"] == pytest.approx(0.0, abs=1e-6) and agreement["test/top1_agreement"] == 1.0
    assert tracking["test/spearman"] == pytest.approx(1.0)
    assert agreement["perturbed/kl"] > 0.01
    assert agreement["perturbed/top1_agreement"] == pytest.approx(1 - changed) and changed > 0
    assert tracking["perturbed/spearman"] == pytest.approx(-1.0)  # the scores in reverse order
    assert regions["test"] == {"rows": len(classes["test"])}  # no AUROC of the test rows against themselves
    assert regions["perturbed"]["rows"] == 50 and regions["ood"]["rows"] == 40
    assert regions["ood"]["teacher_auroc"] > 0.99 and regions["ood"]["student_auroc"] > 0.99
    assert "uniform/kl" not in agreement


def test_trust_by_region_measures_ood_agreement_against_the_reference(classes):
    """With a reference predictive on the OOD rows, the student's KL there is from the reference, and the teacher's
    own estimate gets its KL from it (its Monte Carlo error); the AUROCs keep the teacher's own outputs."""
    task = tasks.get("classification")
    preds = class_preds(classes)
    plain = trust_by_region(task, preds)
    preds["reference"] = {"ood": {k: v.copy() for k, v in preds["student"]["ood"].items()}}  # the student is exact
    agreement, tracking, regions = trust_by_region(task, preds)
    assert plain[0]["ood/kl"] > 0.001 and "ood/kl_teacher" not in plain[0]
    assert agreement["ood/kl"] == pytest.approx(0.0, abs=1e-6) and agreement["ood/top1_agreement"] == 1.0
    assert tracking["ood/spearman"] == pytest.approx(1.0)
    assert agreement["ood/kl_teacher"] == pytest.approx(
        float(task.divergence(preds["student"]["ood"], preds["teacher"]["ood"]).mean()))
    assert agreement["test/kl"] == plain[0]["test/kl"] and regions == plain[2]


def test_trust_by_region_regression_has_no_top1(regression):
    task = tasks.get("regression")
    agreement, tracking, regions = trust_by_region(task, regression_preds(regression, ood="same"))
    assert set(agreement) == {"test/kl", "ood/kl"} and set(tracking) == {"test/spearman", "ood/spearman"}
    assert 0 < agreement["test/kl"] < 0.1
    assert tracking["test/spearman"] > 0.99  # the student's epistemic is the teacher's times 1.1
    assert regions["ood"]["teacher_auroc"] == pytest.approx(0.5) and regions["ood"]["student_auroc"] == pytest.approx(0.5)


# ---------------------------------------------------------------- side_by_side


def test_side_by_side_classes(classes):
    preds = class_preds(classes)
    df = side_by_side(classes, "test", preds)
    cols = ["id", "true_class"]
    for m in MODELS:
        cols += [f"{m}_predicted", *(f"{m}_prob_{c}" for c in CLASSES), f"{m}_entropy"]
        cols += [f"{m}_epistemic"] if m in ("teacher", "student") else []
    assert list(df.columns) == cols + ["kl_teacher_student"]
    assert len(df) == len(classes["test"])
    assert df["id"].tolist() == list(classes["test"].ids)
    assert df["true_class"].tolist() == [CLASSES[i] for i in classes["test"].y]
    assert (df["teacher_predicted"] == df["true_class"]).all() and (df["baseline_predicted"] != df["true_class"]).all()
    assert np.allclose(df[[f"student_prob_{c}" for c in CLASSES]].to_numpy(), preds["student"]["test"]["probs"])
    assert np.allclose(df["kl_teacher_student"], metrics.kl_divergence(preds["teacher"]["test"]["probs"],
                                                                       preds["student"]["test"]["probs"]))
    assert len(side_by_side(classes, "val", preds)) == len(classes["val"])


def test_side_by_side_regression(regression):
    preds = regression_preds(regression)
    df = side_by_side(regression, "val", preds)
    cols = ["id", "y"]
    for m in MODELS:
        cols += [f"{m}_mean", f"{m}_variance"] + ([f"{m}_epistemic"] if m in ("teacher", "student") else [])
    assert list(df.columns) == cols + ["kl_teacher_student"]
    assert len(df) == len(regression["val"]) and np.allclose(df["y"], regression["val"].y)
    assert np.allclose(df["baseline_ts_variance"], 0.25 * 1.2 ** 2)
    assert np.allclose(df["teacher_epistemic"], preds["teacher"]["val"]["epistemic_variance"])
    assert (df["kl_teacher_student"] > 0).all()


# ---------------------------------------------------------------- ood_inputs


def _train_box(ds: data.Dataset, columns: list[int]):
    x = ds["train"].x[:, columns].astype(np.float64)
    lo, hi = x.min(0), x.max(0)
    return lo, hi, hi - lo


def test_far_shell_rows_lie_outside_the_widened_train_box(regression):
    cfg = EvalConfig(ood_rows=300)
    x = ood_inputs(cfg, regression)
    assert x.shape == (300, regression.num_features) and np.isfinite(x).all()
    lo, hi, w = _train_box(regression, [0, 1])
    inner, outer, tol = cfg.ood_inner * w, cfg.ood_outer * w, 1e-3 * w
    outside = ((x < lo - inner + tol) | (x > hi + inner - tol)).any(axis=1)
    assert outside.all(), np.flatnonzero(~outside)[:5]
    assert ((x >= lo - outer - tol) & (x <= hi + outer + tol)).all()
    assert np.array_equal(ood_inputs(cfg, regression), x)  # seeded
    assert not np.allclose(ood_inputs(EvalConfig(ood_rows=300, seed=1), regression), x)
    closer = ood_inputs(EvalConfig(ood_rows=300, ood_inner=0.0, ood_outer=0.1), regression)
    assert ((closer >= lo - 0.1 * w - tol) & (closer <= hi + 0.1 * w + tol)).all()


def test_far_shell_of_a_mixed_table_keeps_valid_encodings():
    from tests.test_features import mixed_frame

    ds = data.build_dataset(mixed_frame(600), data.DataConfig(dataset="mixed.csv", label_column="price"))
    x = ood_inputs(EvalConfig(ood_rows=200), ds)
    names = ds.feature_names
    numeric = [names.index("carat"), names.index("depth")]
    lo, hi, w = _train_box(ds, numeric)
    xn = x[:, numeric]
    assert ((xn < lo - 0.5 * w + 1e-3 * w) | (xn > hi + 0.5 * w - 1e-3 * w)).any(axis=1).all()
    cut = x[:, [i for i, n in enumerate(names) if n.startswith("cut=")]]
    assert np.isin(cut, [0, 1]).all() and (cut.sum(1) == 1).all()  # one category per row
    assert np.isin(x[:, names.index("flag")], [0, 1]).all()
    assert (x[:, names.index("carat_missing")] == 0).all()


def test_ood_file_rows_and_missing_columns(regression, tmp_path):
    table = pd.DataFrame({"x1": [5.0, np.nan, -7.0], "x2": [1.0, 2.0, 3.0], "other": [0, 0, 0]})
    table.to_csv(tmp_path / "ood.csv", index=False)
    x = ood_inputs(EvalConfig(ood_file=str(tmp_path / "ood.csv")), regression)
    assert np.array_equal(x, np.array([[5.0, 1.0], [-7.0, 3.0]], np.float32))  # the row with an empty cell is left out
    table[["x2"]].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(BdkError, match=r"lacks the teacher's feature columns \['x1'\]"):
        ood_inputs(EvalConfig(ood_file=str(tmp_path / "partial.csv")), regression)

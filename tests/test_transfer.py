"""The transfer set (distill.transfer): rows, ids, labels, noise statistics, bad unlabeled files.

No TensorFlow or Beam here: the soft-label job and the reader's end-to-end checks are in
test_soft_labels.py.
"""
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from distill import data, schema, tasks
from distill.errors import BdkError
from distill import transfer
from distill.transfer import (SoftLabelConfig, TransferConfig, build_transfer_set, export_fingerprint, neighbour_pairs,
                              read_soft_labels, soft_label_arrow_schema, source_rows, transfer_arrow_schema,
                              write_transfer_set)


@pytest.fixture(scope="module")
def boston():
    return data.load(data.DataConfig(dataset="boston", test_fraction=0.1, val_fraction=0.1, seed=0))


@pytest.fixture
def table(request):
    """The task's table: Iris (classification) or Boston (regression, `boston`)."""
    return request.getfixturevalue("iris" if request.param == "classification" else "boston")


@pytest.mark.parametrize("table", ["classification", "regression"], indirect=True)
def test_rows_ids_labels_and_sources(table):
    """One row per training row and per source point, unique ids, the training rows as they are, perturbed copies
    with their origin's label, and no label (the task's NO_LABEL: -1 for classes, NaN for targets) elsewhere."""
    ds = table
    regression = ds.task == "regression"
    k, sizes = (2, {"interpolated": 100, "uniform": 300}) if regression else \
        (3, {"interpolated": 300, "uniform": 500, "shell": 400})
    t = build_transfer_set(TransferConfig(perturbations=k, interpolations=sizes["interpolated"], uniform=sizes["uniform"],
                                          shell=sizes.get("shell", 0), seed=0 if regression else 1), ds)
    train = ds["train"]
    n = len(train)
    assert list(t.columns) == schema.transfer_columns(ds.feature_names)
    assert t["source"].value_counts().to_dict() == {"train": n, "perturbed": k * n, **sizes}
    assert t["id"].is_unique
    rows = t.set_index("id")
    first = train.ids[0]
    assert rows.loc[f"train:{first}", "label"] == train.y[0]
    np.testing.assert_array_equal(rows.loc[f"train:{first}", ds.feature_names].to_numpy(np.float32), train.x[0])
    np.testing.assert_array_equal(t.loc[t.source == "train", "label"].to_numpy(), train.y)  # in their own units
    for c in range(k):  # perturbed copies keep their origin's label
        assert rows.loc[f"perturbed:{first}:{c}", "label"] == train.y[0]
    for source in sizes:  # the points between and around the data have none
        labels = t.loc[t.source == source, "label"]
        assert (labels.isna() if regression else labels == schema.NO_LABEL).all(), source
        assert list(t.loc[t.source == source, "id"][:2]) == [f"{source}:0", f"{source}:1"]
    if regression:
        assert t["label"].dtype == np.float32
    else:
        assert set(t.loc[t.source == "train", "label"]) == set(range(ds.num_classes))


def test_no_validation_or_test_row_is_in_the_transfer_set(iris):
    t = build_transfer_set(TransferConfig(), iris)
    x = t[iris.feature_names].to_numpy(np.float32)
    for split in ("val", "test"):
        held = iris[split].x
        # no transfer row equals a held-out row (a train duplicate of one would, so only check rows unique to the split)
        unique = held[~(held[:, None, :] == iris["train"].x[None]).all(-1).any(-1)]
        assert not (x[:, None, :] == unique[None]).all(-1).any(), split


def test_multi_scale_noise(iris):
    t = build_transfer_set(TransferConfig(perturbations=6, noise=(0.05, 0.5), interpolations=0, uniform=0, shell=0), iris)
    pert = iris.scaler.transform(t.loc[t.source == "perturbed", iris.feature_names].to_numpy()).reshape(-1, 6, 4)
    lo, hi = iris.box()
    noise = (pert - iris.scaler.transform(iris["train"].x)[:, None, :]) / (hi - lo)  # [n, K, F] in box widths (classes)
    small, large = noise[:, 0::2].std(), noise[:, 1::2].std()  # copy j uses noise[j % 2]
    assert abs(small - 0.05) < 0.005 and abs(large - 0.5) < 0.05


def test_perturbed_rows_are_bounded_by_a_uniform_draw_of_row_copy_pairs(iris):
    n = len(iris["train"])
    cfg = TransferConfig(perturbations=10, noise=(0.05,), interpolations=0, uniform=0, shell=0, max_perturbed=n * 3)
    t = build_transfer_set(cfg, iris)
    pert = t[t.source == "perturbed"]
    assert len(pert) == n * 3 and pert["id"].is_unique
    origin, copy = zip(*(i.split(":")[1:] for i in pert["id"]))
    assert set(map(int, copy)) == set(range(10)) and len(set(origin)) > 0.9 * n  # spread over rows and copies
    by_id = dict(zip(iris["train"].ids.astype(str), iris["train"].y))
    assert (pert["label"].to_numpy() == [by_id[o] for o in origin]).all()  # each keeps its origin's label
    lo, hi = iris.box()
    x = {i: z for i, z in zip(iris["train"].ids.astype(str), iris.scaled("train"))}
    noise = (iris.scaler.transform(pert[iris.feature_names].to_numpy()) - np.stack([x[o] for o in origin])) / (hi - lo)
    assert abs(noise.std() - 0.05) < 5 * 0.05 / np.sqrt(2 * noise.size)
    # below the bound, every pair, and the bound changes nothing
    full = build_transfer_set(TransferConfig(perturbations=10, noise=(0.05,), interpolations=0, uniform=0, shell=0), iris)
    capped = build_transfer_set(TransferConfig(perturbations=10, noise=(0.05,), interpolations=0, uniform=0, shell=0,
                                               max_perturbed=n * 10), iris)
    assert (full.source == "perturbed").sum() == n * 10
    pd.testing.assert_frame_equal(full, capped)


def test_interpolations_lie_between_two_training_rows_half_of_them_of_one_class(iris):
    t = build_transfer_set(TransferConfig(perturbations=0, interpolations=200, uniform=0, shell=0), iris)
    z = iris.scaler.transform(t.loc[t.source == "interpolated", iris.feature_names].to_numpy())  # [M, F]
    train = iris.scaler.transform(iris["train"].x)  # [n, F]
    a, b = train[:, None, :], train[None, :, :]  # every pair (a, b): [n, n, F]
    d = b - a
    classes = iris["train"].y
    same = classes[:, None] == classes[None, :]  # [n, n]
    for i, point in enumerate(z):
        lam = np.clip(((point - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0, 1)  # [n, n]
        dist = np.linalg.norm(a + lam[..., None] * d - point, axis=-1)  # distance to each segment
        on = dist < 1e-4
        assert on.any(), i  # on some segment between two training rows
        if i < 100:  # the first half: between rows of one class
            assert (on & same).any(), i


def _segments(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[M, P] bool: point i lies on the segment between rows a[p] and b[p] (to 1e-4)."""
    d = b - a  # [P, F]
    lam = np.clip(((points[:, None] - a[None]) * d[None]).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0, 1)  # [M, P]
    return np.linalg.norm(a[None] + lam[..., None] * d[None] - points[:, None], axis=-1) < 1e-4


def test_neighbour_partners_are_among_the_nearest_training_rows(iris):
    z = iris.scaler.transform(iris["train"].x)  # [n, F]
    n, k = len(z), 5
    a, b = neighbour_pairs(z, 3000, k, np.random.default_rng(0))
    dist = np.linalg.norm(z[:, None] - z[None], axis=-1)  # [n, n]
    np.fill_diagonal(dist, np.inf)
    kth = np.sort(dist, axis=1)[:, k - 1]  # each row's k-th nearest other row
    assert (a != b).all()
    assert (dist[a, b] <= kth[a] + 1e-6).all()  # the partner is one of a's k nearest (ties at the k-th included)
    assert len(np.unique(b)) > n // 2 and len(np.unique(a)) == n  # every row an anchor; partners vary
    # near, unlike random pairs: their median distance is a fraction of a random pair's
    assert np.median(dist[a, b]) < 0.5 * np.median(dist[np.isfinite(dist)])
    # in the transfer set: each interpolated point on a segment between a row and one of its k nearest rows
    t = build_transfer_set(TransferConfig(perturbations=0, interpolations=100, interpolation_pairs="neighbour",
                                          interpolation_neighbours=k, uniform=0, shell=0), iris)
    points = iris.scaler.transform(t.loc[t.source == "interpolated", iris.feature_names].to_numpy())  # [M, F]
    near = np.argwhere(dist <= kth[:, None] + 1e-6)  # [P, 2]: (row, one of its k nearest)
    on = _segments(points, z[near[:, 0]], z[near[:, 1]])  # [M, P]
    assert on.any(axis=1).all()


def test_neighbour_partners_on_large_data_come_from_a_reference_sample(iris, monkeypatch):
    monkeypatch.setattr(transfer, "INTERPOLATION_REFERENCE", 40)
    z = iris.scaler.transform(iris["train"].x)
    a, b = neighbour_pairs(z, 500, 3, np.random.default_rng(1))
    reference = np.union1d(a, b)
    assert len(reference) <= 40 and (a != b).all()
    dist = np.linalg.norm(z[reference][:, None] - z[reference][None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    at = {row: i for i, row in enumerate(reference)}
    third = np.sort(dist, axis=1)[:, 2]  # within the sample: a's 3rd nearest other row
    assert all(dist[at[i], at[j]] <= third[at[i]] + 1e-6 for i, j in zip(a, b))
    # duplicates and tiny data: partners are other rows, never the anchor itself
    dup = np.repeat(z[:3], 4, axis=0)  # 12 rows, four copies of each of 3 points
    a, b = neighbour_pairs(dup, 200, 5, np.random.default_rng(0))
    assert (a != b).all()
    a, b = neighbour_pairs(z[:2], 10, 10, np.random.default_rng(0))
    assert (a != b).all()


def test_source_sizes_follow_the_share_rule(iris):
    n = len(iris["train"])
    assert source_rows(2000, 0.0, 10**6, 500_000) == 2000  # no share: the count (today's behaviour)
    assert source_rows(2000, 0.1, 10**5, 500_000) == 10_000  # the share beyond the floor
    assert source_rows(2000, 0.1, 10**4, 500_000) == 2000  # the floor
    assert source_rows(2000, 0.5, 10**7, 500_000) == 500_000  # the cap
    assert source_rows(2000, 0.5, 10**7, 1000) == 2000  # the floor even beyond the cap
    cfg = TransferConfig(perturbations=1, interpolations=10, interpolation_share=0.5, interpolation_pairs="neighbour",
                         uniform=5, uniform_share=2.0, shell=400, shell_share=0.5, max_perturbed=150, seed=2)
    t = build_transfer_set(cfg, iris)
    assert t["source"].value_counts().to_dict() == {"train": n, "perturbed": n, "interpolated": round(0.5 * n),
                                                    "uniform": min(2 * n, 150), "shell": 400}
    assert t["id"].is_unique
    for source in ("interpolated", "uniform", "shell"):
        assert (t.loc[t.source == source, "label"] == schema.NO_LABEL).all()
    pd.testing.assert_frame_equal(t, build_transfer_set(cfg, iris))  # bit-identical under one seed
    other = build_transfer_set(TransferConfig(**{**cfg.__dict__, "seed": 3}), iris)
    assert not np.allclose(t.loc[t.source == "interpolated", iris.feature_names].to_numpy(),
                           other.loc[other.source == "interpolated", iris.feature_names].to_numpy())
    # by default the sizes are the counts however many training rows (no share), and the pairs random: the default
    # config's set is the one with random pairs and no shares spelt out, and it differs from the neighbour pairs'
    sizes = dict(perturbations=0, interpolations=10, uniform=5, shell=7, seed=2)  # every count below n (120 rows)
    default = build_transfer_set(TransferConfig(**sizes), iris)
    assert default["source"].value_counts().to_dict() == {"train": n, "interpolated": 10, "uniform": 5, "shell": 7}
    pd.testing.assert_frame_equal(default, build_transfer_set(TransferConfig(
        **sizes, interpolation_pairs="random", interpolation_share=0.0, uniform_share=0.0, shell_share=0.0), iris))
    neighbour = build_transfer_set(TransferConfig(**sizes, interpolation_pairs="neighbour"), iris)
    assert not np.allclose(default[iris.feature_names].to_numpy(), neighbour[iris.feature_names].to_numpy())
    # interpolation pairs change only the interpolated rows: the other sources keep their rows and ids
    base = dict(perturbations=2, interpolations=50, uniform=20, shell=20, seed=4)
    r = build_transfer_set(TransferConfig(**base), iris)
    nb = build_transfer_set(TransferConfig(**base, interpolation_pairs="neighbour"), iris)
    keep = r.source != "interpolated"
    pd.testing.assert_frame_equal(r[keep], nb[keep])
    assert list(r["id"]) == list(nb["id"])


def test_neighbour_interpolations_for_regression(boston):
    t = build_transfer_set(TransferConfig(perturbations=0, interpolations=0, interpolation_share=0.25,
                                          interpolation_pairs="neighbour", uniform=0, shell=0), boston)
    n = len(boston["train"])
    assert (t.source == "interpolated").sum() == round(0.25 * n) and t["id"].is_unique
    assert t.loc[t.source == "interpolated", "label"].isna().all()


def test_far_shell_lies_between_the_inner_and_outer_boxes(iris):
    t = build_transfer_set(TransferConfig(perturbations=0, interpolations=0, uniform=0, shell=500, shell_inner=0.25,
                                          shell_outer=3.0), iris)
    lo, hi = iris.box()
    u = (iris.scaler.transform(t.loc[t.source == "shell", iris.feature_names].to_numpy()) - lo) / (hi - lo)  # box units
    assert (u >= -3 - 1e-4).all() and (u <= 4 + 1e-4).all()
    assert ((u < -0.25 + 1e-4) | (u > 1.25 - 1e-4)).any(axis=1).all()  # outside the inner box on some feature
    # the evaluation's own far-shell rows are other draws
    from distill.transfer import far_uniform

    ood = far_uniform(iris, 100, 0.5, 2.0, 0)
    x = t[iris.feature_names].to_numpy(np.float32)
    assert not (x[:, None, :] == ood[None]).all(-1).any()


@pytest.mark.parametrize("table", ["classification", "regression"], indirect=True)
def test_noise_is_gaussian_in_the_tasks_unit_and_uniform_covers_the_widened_box(table):
    """Perturbed copies: Gaussian noise of the given std in the task's default unit (box widths for classes, each
    feature's z-score for regression); uniform points fill the training box widened by the margin, beyond the data."""
    ds = table
    t = build_transfer_set(TransferConfig(perturbations=4, noise=0.05, uniform=500, margin=0.1), ds)
    lo, hi = ds.box()
    unit = 1.0 if ds.task == "regression" else hi - lo
    pert = ds.scaler.transform(t.loc[t.source == "perturbed", ds.feature_names].to_numpy())  # [n*K, F]
    origin = np.repeat(ds.scaled("train"), 4, axis=0)  # same order: origin-major
    noise = ((pert - origin) / unit).ravel()
    se = 0.05 / np.sqrt(2 * len(noise))  # standard error of a Gaussian std estimate
    assert abs(noise.std() - 0.05) < 5 * se
    assert abs(noise.mean()) < 5 * 0.05 / np.sqrt(len(noise))
    box = (ds.scaler.transform(t.loc[t.source == "uniform", ds.feature_names].to_numpy()) - lo) / (hi - lo)
    assert box.min() >= -0.1 - 1e-5 and box.max() <= 1.1 + 1e-5
    assert (box.min(axis=0) < 0).all() and (box.max(axis=0) > 1).all()  # beyond the data, on every feature


def test_seeded_and_stable(iris):
    a = build_transfer_set(TransferConfig(perturbations=2, uniform=20, seed=3), iris)
    pd.testing.assert_frame_equal(a, build_transfer_set(TransferConfig(perturbations=2, uniform=20, seed=3), iris))
    b = build_transfer_set(TransferConfig(perturbations=2, uniform=20, seed=4), iris)
    assert not np.allclose(a[iris.feature_names].to_numpy()[a.source == "perturbed"],
                           b[iris.feature_names].to_numpy()[b.source == "perturbed"])
    # More uniform points leave the perturbed rows (and their ids) as they were.
    c = build_transfer_set(TransferConfig(perturbations=2, uniform=70, seed=3), iris)
    pd.testing.assert_frame_equal(a[a.source != "uniform"], c[c.source != "uniform"].set_index(a.index[a.source != "uniform"]))


def test_unlabeled_rows(iris, tmp_path):
    x = iris["test"].x[:5]
    with_ids = pd.DataFrame(x, columns=iris.feature_names).assign(Id=[f"u{i}" for i in range(5)], Species="whatever")
    with_ids.to_csv(tmp_path / "u.csv", index=False)
    none = dict(perturbations=0, interpolations=0, uniform=0, shell=0)
    t = build_transfer_set(TransferConfig(**none, unlabeled=str(tmp_path / "u.csv")), iris)
    u = t[t.source == "unlabeled"]
    assert list(u["id"]) == [f"unlabeled:u{i}" for i in range(5)]
    assert (u["label"] == schema.NO_LABEL).all()
    np.testing.assert_allclose(u[iris.feature_names].to_numpy(), x, rtol=1e-6)
    pd.DataFrame(x, columns=iris.feature_names).to_parquet(tmp_path / "u.parquet")  # no id column: row numbers
    t = build_transfer_set(TransferConfig(**none, unlabeled=str(tmp_path / "u.parquet")), iris)
    assert list(t.loc[t.source == "unlabeled", "id"]) == [f"unlabeled:{i}" for i in range(1, 6)]


def test_unlabeled_columns_must_match(iris, tmp_path):
    df = pd.DataFrame(iris["test"].x[:3], columns=iris.feature_names).rename(columns={iris.feature_names[0]: "sepal"})
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(BdkError, match=r"do not match.*missing \['SepalLengthCm'\], unexpected \['sepal'\]"):
        build_transfer_set(TransferConfig(unlabeled=str(tmp_path / "bad.csv")), iris)
    with pytest.raises(BdkError, match="not found"):
        build_transfer_set(TransferConfig(unlabeled=str(tmp_path / "nope.csv")), iris)


def test_unlabeled_nan_rows_are_named(iris, tmp_path):
    df = pd.DataFrame(iris["test"].x[:6], columns=iris.feature_names)
    df.iloc[1, 0] = np.nan
    df.iloc[4, 2] = np.inf
    df.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(BdkError, match=r"data rows 2, 5;"):
        build_transfer_set(TransferConfig(unlabeled=str(tmp_path / "nan.csv")), iris)


def test_config_validation():
    with pytest.raises(BdkError, match="at least 2"):
        SoftLabelConfig(samples=1)
    with pytest.raises(BdkError, match="perturbations"):
        TransferConfig(perturbations=-1)
    with pytest.raises(BdkError, match="noise"):
        TransferConfig(noise=float("nan"))
    with pytest.raises(BdkError, match="noise"):
        TransferConfig(noise=())
    with pytest.raises(BdkError, match="shell-outer"):
        TransferConfig(shell_inner=2.0, shell_outer=1.0)
    with pytest.raises(BdkError, match="interpolation-pairs"):
        TransferConfig(interpolation_pairs="nearest")
    with pytest.raises(BdkError, match="interpolation-neighbours"):
        TransferConfig(interpolation_neighbours=0)
    for name in ("interpolation_share", "uniform_share", "shell_share"):
        with pytest.raises(BdkError, match=name.replace("_", "-")):
            TransferConfig(**{name: -0.1})
        with pytest.raises(BdkError, match=name.replace("_", "-")):
            TransferConfig(**{name: float("inf")})


def test_feature_names_may_not_clash_with_soft_label_columns(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"probs": rng.normal(size=30), "width": rng.normal(size=30), "label": np.repeat([0, 1, 2], 10)})
    ds = data.build_dataset(df, data.DataConfig(dataset="x.csv"))
    with pytest.raises(BdkError, match="clash"):
        build_transfer_set(TransferConfig(), ds)
    # regression's outputs are reserved too
    df = pd.DataFrame({"mean": rng.normal(size=40), "label": rng.normal(size=40)})
    ds = data.build_dataset(df, data.DataConfig(dataset="x.csv", task="regression"))
    with pytest.raises(BdkError, match=r"clash.*'mean'"):
        build_transfer_set(TransferConfig(), ds)


@pytest.mark.parametrize("table", ["classification", "regression"], indirect=True)
def test_parquet_schema_and_row_groups(table, tmp_path):
    ds = table
    task = tasks.get(ds.task)
    t = build_transfer_set(TransferConfig(perturbations=1, uniform=40_000), ds)
    write_transfer_set(t, tmp_path / "t.parquet", ds.feature_names, task, row_group_rows=16_384)
    f = pq.ParquetFile(tmp_path / "t.parquet")
    assert f.metadata.num_row_groups == -(-len(t) // 16_384) >= 3  # so a parallel runner can split the read
    types = {field.name: str(field.type) for field in f.schema_arrow}
    label = "float" if ds.task == "regression" else "int64"  # targets in their units; class indices
    assert types == {"id": "string", "source": "string", "label": label, **{n: "float" for n in ds.feature_names}}
    back = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, t, check_dtype=False)
    if ds.task == "regression":  # no target: NaN, kept
        assert back["label"].isna().sum() == (~t.source.isin(["train", "perturbed"])).sum() > 40_000
    # the row group size is the Beam job's batch: a small one gives many groups of that size
    write_transfer_set(t.head(100), tmp_path / "small.parquet", ds.feature_names, task, row_group_rows=32)
    f = pq.ParquetFile(tmp_path / "small.parquet")
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [32, 32, 32, 4]


def test_arrow_schemas_follow_the_task():
    cls, reg = tasks.get("classification"), tasks.get("regression")
    assert [str(f.type) for f in transfer_arrow_schema(["a"], cls)] == ["string", "string", "int64", "float"]
    assert str(transfer_arrow_schema(["a"], reg).field("label").type) == "float"
    soft = soft_label_arrow_schema(["a", "b"], cls)
    assert soft.names == schema.soft_label_columns(["a", "b"], cls.outputs)
    assert {n: str(soft.field(n).type) for n in cls.outputs} == {
        "probs": "list<item: float>", "variance": "list<item: float>", "entropy": "float", "expected_entropy": "float",
        "mutual_information": "float", "mean_log_probs": "list<item: float>"}
    soft = soft_label_arrow_schema(["a"], reg)
    assert soft.names == ["id", "source", "label", "a", "mean", "variance", "epistemic_variance", "num_samples"]
    assert {str(soft.field(n).type) for n in reg.outputs} == {"float"} and str(soft.field("num_samples").type) == "int32"


def test_fingerprint_follows_the_files(tmp_path):
    export = tmp_path / "export"
    (export / "variables").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"graph")
    (export / "variables" / "v.data").write_bytes(b"\x00" * 100)
    first = export_fingerprint(export)
    assert first == export_fingerprint(str(export) + "/")
    shutil.copytree(export, tmp_path / "copy")
    assert export_fingerprint(tmp_path / "copy") == first  # a copied run keeps its soft labels valid
    (export / "variables" / "v.data").write_bytes(b"\x00" * 99 + b"\x01")
    assert export_fingerprint(export) != first
    with pytest.raises(BdkError, match="no files"):
        export_fingerprint(tmp_path / "empty")


def test_reader_says_what_to_run(tmp_path):
    with pytest.raises(BdkError, match=r"run `bdk soft-labels --run .*` first"):
        read_soft_labels(tmp_path)


def test_cli_passes_the_transfer_options(monkeypatch, tmp_path):
    """`bdk soft-labels` and `bdk run` turn the interpolation and share options into the TransferConfig."""
    from typer.testing import CliRunner

    from bdk import pipeline
    from bdk.cli import app

    seen = []

    def stop(*args, **kwargs):
        seen.append(next(a for a in (*args, *kwargs.values()) if isinstance(a, SoftLabelConfig)))
        raise BdkError("stopped here")

    monkeypatch.setattr(pipeline, "soft_labels_stage", stop)
    monkeypatch.setattr(pipeline, "run_all", stop)
    options = ["--interpolation-pairs", "neighbour", "--interpolation-share", "0.5", "--uniform-share", "0.1",
               "--shell-share", "0.2", "--no-progress"]
    r = CliRunner().invoke(app, ["soft-labels", "--run", str(tmp_path), *options, "--interpolation-neighbours", "4"])
    assert "stopped here" in r.output, r.output
    r = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "run"), *options])
    assert "stopped here" in r.output, r.output
    for cfg, k in zip(seen, (4, 10)):
        t = cfg.transfer
        assert (t.interpolation_pairs, t.interpolation_share, t.uniform_share, t.shell_share, t.interpolation_neighbours,
                t.interpolations) == ("neighbour", 0.5, 0.1, 0.2, k, None)  # None: the table's default
    r = CliRunner().invoke(app, ["soft-labels", "--run", str(tmp_path), "--interpolation-pairs", "nearest"])
    assert r.exit_code != 0 and "interpolation-pairs" in r.output


def test_transfer_defaults_are_larger_for_small_class_tables(iris, regression_csv, sequence_csv):
    """Sizes and --samples unset: SMALL_TABLE_DEFAULTS (perturbed copies, interpolations, far-shell points) and
    SMALL_TABLE_SAMPLES draws for a class table of fewer than SMALL_TABLE_ROWS training rows; TABLE_DEFAULTS and 100 draws for a
    larger one, for regression and for sequences; a given value wins (0 included); the built transfer set has them."""
    from dataclasses import replace

    from distill import data as data_lib
    from distill import tasks
    from distill.transfer import (CLASS_TABLE_DEFAULTS, MAX_SHARED_INTERPOLATIONS, SAMPLES, SMALL_TABLE_DEFAULTS,
                                  SMALL_TABLE_ROWS, SMALL_TABLE_SAMPLES, TABLE_DEFAULTS, SoftLabelConfig,
                                  build_transfer_set, resolved_soft_labels, resolved_transfer, source_rows)

    regression = data_lib.load(data_lib.DataConfig(dataset=str(regression_csv), label_column="y", task="regression"))
    sequences = data_lib.load(data_lib.DataConfig(dataset=str(sequence_csv), series_column="series"))
    assert sequences.inputs.over_time and tasks.get(sequences.task).has_classes  # a class problem, not a table
    classes = tasks.get(iris.task)
    train = iris["train"]
    big = replace(iris, splits={**iris.splits, "train": replace(train, ids=np.repeat(train.ids, 100), y=np.repeat(train.y, 100),
                                                                x=np.repeat(train.x, 100, axis=0))})
    assert len(iris["train"]) < SMALL_TABLE_ROWS <= len(big["train"])

    def sizes(cfg):
        return {k: getattr(cfg, k) for k in TABLE_DEFAULTS}

    soft = SoftLabelConfig()
    small = resolved_soft_labels(soft, classes, iris)
    assert sizes(small.transfer) == SMALL_TABLE_DEFAULTS and small.samples == SMALL_TABLE_SAMPLES > SAMPLES
    assert all(SMALL_TABLE_DEFAULTS[k] > v for k, v in TABLE_DEFAULTS.items() if k != "interpolation_share")
    # larger class tables: interpolations in proportion to their training rows, capped; regression and sequences: fixed
    large = resolved_soft_labels(soft, classes, big)
    assert sizes(large.transfer) == CLASS_TABLE_DEFAULTS and large.samples == SAMPLES
    share = CLASS_TABLE_DEFAULTS["interpolation_share"]
    assert share > 0 and source_rows(2000, share, len(big["train"]), MAX_SHARED_INTERPOLATIONS) == round(share * len(big["train"]))
    assert source_rows(2000, share, 10 ** 7, MAX_SHARED_INTERPOLATIONS) == MAX_SHARED_INTERPOLATIONS
    for task, ds in ((tasks.get(regression.task), regression), (tasks.get(sequences.task), sequences)):
        plain = resolved_soft_labels(soft, task, ds)
        assert sizes(plain.transfer) == TABLE_DEFAULTS and plain.samples == SAMPLES and plain.transfer.interpolation_share == 0
    given = SoftLabelConfig(TransferConfig(perturbations=0, interpolations=5, interpolation_share=0.0, shell=123), samples=7)
    assert sizes(resolved_soft_labels(given, classes, big).transfer) == dict(perturbations=0, interpolations=5,
                                                                              interpolation_share=0.0, shell=123)
    assert resolved_soft_labels(given, classes, iris).samples == 7
    # rows per Beam call: 16,384 at 100 draws, rows x draws bounded at more draws; a given batch wins
    assert (plain.batch_size, small.batch_size) == (16_384, 1_638)
    assert resolved_soft_labels(given, classes, iris).batch_size == 16_384
    assert resolved_soft_labels(SoftLabelConfig(batch_size=5), classes, iris).batch_size == 5
    counts = build_transfer_set(TransferConfig(), iris)["source"].value_counts()
    assert counts["perturbed"] == SMALL_TABLE_DEFAULTS["perturbations"] * len(iris["train"])
    assert counts["interpolated"] == SMALL_TABLE_DEFAULTS["interpolations"]
    assert counts["shell"] == SMALL_TABLE_DEFAULTS["shell"] and resolved_transfer(TransferConfig(), classes, iris).uniform == 2000

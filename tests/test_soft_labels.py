"""The soft-label Beam job: a fake teacher in a TestPipeline, then each task's soft labels against its teacher's
seeded predictive (Iris through the CLI, the shared regression and sequence runs), the job on a regression transfer
set, the export checks, the real Iris teacher on the embedded, multi-process and portable runners; the seed contract (reruns bit-identical, any
batching the same soft labels), atomic reruns, stale-teacher detection and bad input. Monte Carlo
outputs are compared with a many-draw reference within standard-error bounds; runs with one seed are
compared exactly.
"""
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distill import data as data_lib
from distill import schema, tasks
from bdk.cli import app
from distill.errors import BdkError, read_json
from distill.transfer import read_soft_labels

CLS = tasks.get("classification")
S = 20
SMALL = ["--perturbations", "2", "--interpolations", "20", "--uniform", "50", "--shell", "20", "--samples", str(S), "--no-progress"]


def bdk(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *words):
    assert result.exit_code == 1, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0]


def snapshot(folder: Path) -> dict | None:
    """Every file's content hash and inode: equal snapshots mean nothing was touched."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_leftovers(run: Path) -> bool:
    return not [p for p in run.iterdir() if p.name.startswith(".soft_labels")]


def stack(df, column):
    return np.stack(df[column].to_numpy())  # [N, C]


def summary_np(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Independent numpy reference of the classification summary of S draws [S, B, C]."""
    probs = draws.mean(0)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(-1)
    expected = -(draws * np.log(np.clip(draws, 1e-12, 1))).sum(-1).mean(0)
    return {"probs": probs, "variance": draws.var(0), "entropy": entropy, "expected_entropy": expected,
            "mutual_information": entropy - expected}


def read_shards(folder: Path):
    """Every soft-label shard in a folder as one DataFrame, sorted by id."""
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted(folder.glob(f"{schema.SOFT_LABEL_PREFIX}-*.parquet"))]
    return pd.concat(frames, ignore_index=True).sort_values("id", ignore_index=True)


@pytest.fixture(scope="module")
def labelled(teacher_run, tmp_path_factory) -> Path:
    """A copy of the teacher run labelled by the default runner (embedded FnApiRunner). Read-only."""
    run = tmp_path_factory.mktemp("labelled") / "run"
    shutil.copytree(teacher_run, run)
    result = bdk("soft-labels", "--run", run, *SMALL)
    assert result.exit_code == 0, (result.output, result.stderr)
    (run / "cli_output.txt").write_text(result.stdout)
    return run


@pytest.fixture
def copy_labelled(labelled, tmp_path):
    from tests.conftest import copier

    return copier(labelled, tmp_path)


# ---------------------------------------------------------------- the transform, with a fake teacher


def save_fake_teacher(path: Path, w: np.ndarray, b: np.ndarray, sigma: float) -> Path:
    """Fixed logits x @ w + b plus N(0, sigma^2) logit noise per draw (one draw's noise shared by the batch's rows,
    from the seed), behind the real `predictive_seeded` signature and the classification task's summary."""
    import tensorflow as tf

    class FakeTeacher(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, w.shape[0]], tf.float32, name="features"),
                                      tf.TensorSpec([], tf.int32, name="num_samples"),
                                      tf.TensorSpec([], tf.int64, name="seed")])
        def predictive_seeded(self, features, num_samples, seed):
            logits = features @ w + b  # [B, C]
            noise = sigma * tf.random.stateless_normal(tf.stack([num_samples, 1, w.shape[1]]),
                                                       tf.stack([seed, tf.constant(0, tf.int64)]))  # [S, 1, C]
            return CLS.summarize(tf.nn.softmax(logits[None] + noise, axis=-1))

    module = FakeTeacher()
    tf.saved_model.save(module, str(path), signatures={"predictive_seeded": module.predictive_seeded})
    return path


def test_predict_soft_labels_with_a_fake_teacher(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

    from beam_pipelines.predictive_handler import PredictiveModelHandler
    from beam_pipelines.soft_labels import SoftLabelJob
    from distill.transfer import soft_label_arrow_schema, transfer_arrow_schema

    w = np.array([[2.0, -1.0, 0.0], [0.0, 1.0, -2.0]], np.float32)
    b = np.array([0.5, 0.0, -0.5], np.float32)
    sigma, draws, n = 0.7, 400, 40
    export = save_fake_teacher(tmp_path / "fake" / "1", w, b, sigma)
    x = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)  # [N, 2]
    rows = [{"id": f"row:{i}", "source": schema.SOURCES[i % 4], "label": i % 3 if i % 4 < 2 else schema.NO_LABEL,
             "a": float(x[i, 0]), "b": float(x[i, 1])} for i in range(n)]
    transfer = tmp_path / "transfer.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=transfer_arrow_schema(["a", "b"], CLS)), transfer,
                   row_group_size=16)  # 3 row groups
    logits = x @ w + b  # [N, C]
    eps = np.random.default_rng(1).normal(size=(20_000, n, 3))  # [R, N, C]
    ref_samples = np.exp(logits + sigma * eps)
    ref_samples /= ref_samples.sum(-1, keepdims=True)
    ref = summary_np(ref_samples)
    se_mean = np.sqrt(ref["variance"] / draws)  # [N, C]
    se_var = np.sqrt(((ref_samples - ref["probs"]) ** 2).var(axis=0) / draws)  # [N, C]
    arrow_schema = soft_label_arrow_schema(["a", "b"], CLS)

    def check(actual):
        if any(t.schema != arrow_schema for t in actual):
            raise BeamAssertException(f"schema {[t.schema for t in actual]}")
        got_rows = [r for t in actual for r in t.to_pylist()]
        if sorted(r["id"] for r in got_rows) != sorted(r["id"] for r in rows):
            raise BeamAssertException(f"ids differ: {sorted(r['id'] for r in got_rows)}")
        for got in got_rows:
            i = int(got["id"].split(":")[1])
            passed = {k: got[k] for k in rows[i]}
            p, v = np.asarray(got["probs"]), np.asarray(got["variance"])
            problems = [
                passed != rows[i] and f"row changed: {passed} != {rows[i]}",
                got["num_samples"] != draws and f"num_samples {got['num_samples']}",
                abs(p.sum() - 1) > 1e-5 and f"probs sum {p.sum()}",
                (np.abs(p - ref["probs"][i]) > 5 * se_mean[i] + 1e-4).any() and f"probs {p} vs {ref['probs'][i]}",
                (np.abs(v - ref["variance"][i]) > 5 * se_var[i] + 1e-5).any() and f"variance {v} vs {ref['variance'][i]}",
                abs(got["entropy"] - got["expected_entropy"] - got["mutual_information"]) > 1e-4 and "entropy split",
            ]
            if any(problems):
                raise BeamAssertException(f"{got['id']}: {[m for m in problems if m]}")

    handler = PredictiveModelHandler(str(export), ["a", "b"], num_samples=draws, seed=5, output_names=CLS.outputs)
    shards = [str(tmp_path / "out" / f"part-{i:05d}-of-00003.parquet") for i in range(3)]
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | "SoftLabels" >> SoftLabelJob(str(transfer), handler, str(tmp_path / "out" / "part"), 3, arrow_schema)
        assert_that(out, equal_to(shards))  # one shard per row group
    check([pq.read_table(s) for s in shards])


# ---------------------------------------------------------------- the real teacher


def test_batched_predictive_agrees_with_independent_draws(teacher_run):
    """`predictive` draws S weights inside one graph call; separate `sample` calls draw independently. Seeded
    (`predictive_seeded`, `sample_seeded` with a seed per call), so the statistics are the same on every run: with
    fresh OS seeds, one of 162 variances fell outside its 5-sigma band now and then (by 0.03% of the band)."""
    import tensorflow as tf

    model = tf.saved_model.load(str(schema.teacher_export(teacher_run)))
    ds = data_lib.load_from_run(teacher_run)
    x = tf.constant(np.concatenate([ds["val"].x, ds["test"].x]))  # [B, F]
    big, calls = 1000, 300
    seed = lambda s: tf.constant(s, tf.int64)  # noqa: E731
    batched = {k: v.numpy() for k, v in model.signatures[schema.SEEDED_SIGNATURE](
        features=x, num_samples=tf.constant(big), seed=seed(7)).items()}
    one = tf.constant(1)
    independent = np.stack([model.signatures["sample_seeded"](features=x, num_samples=one, seed=seed(1000 + i))
                            ["probs_samples"].numpy()[0] for i in range(calls)])  # [calls, B, C]: one draw per call
    fresh = [model.signatures["sample"](features=x, num_samples=one)["probs_samples"].numpy() for _ in range(2)]
    assert not np.array_equal(*fresh)  # unseeded, each call draws anew
    ref = summary_np(independent)
    assert batched["variance"].max() > 1e-3  # the posterior has spread, so the comparison means something
    se_mean = np.sqrt(ref["variance"] / calls + batched["variance"] / big)
    np.testing.assert_array_less(np.abs(batched["probs"] - ref["probs"]), 5 * se_mean + 1e-4)
    se_var = np.sqrt(((independent - ref["probs"]) ** 2).var(axis=0) / calls)
    np.testing.assert_array_less(np.abs(batched["variance"] - ref["variance"]), 5 * se_var * np.sqrt(1 + calls / big) + 1e-5)


@pytest.fixture
def soft_labelled(request):
    """(case, a run with soft labels, its transfer-set sizes): the Iris teacher labelled through the CLI (`labelled`),
    the regression run (conftest `regression_run`: soft_labels_stage) or the sequence run (conftest `sequence_run`)."""
    case = request.param
    run, sizes = {"classification": ("labelled", (2, 20, 50, 20)), "regression": ("regression_run", (2, 60, 100, 60)),
                  "sequence": ("sequence_run", (2, 50, 50, 50))}[case]
    return case, request.getfixturevalue(run), sizes


@pytest.mark.parametrize("soft_labelled", ["classification", "regression", "sequence"], indirect=True)
def test_each_rows_soft_label_is_the_seeded_predictive_of_its_features(soft_labelled):
    """The run's soft labels (from the Beam job): one row per transfer row in the task's columns, labels only on the
    rows that have them, each row's outputs exactly the teacher's seeded predictive of its features (the job's
    seed fixes the S draws for every row), valid for the task, and near the training labels."""
    import tensorflow as tf

    case, run, (k, interpolated, uniform, shell) = soft_labelled
    df, manifest = read_soft_labels(run)
    ds = data_lib.load_from_run(run)
    task = tasks.get("regression" if case == "regression" else "classification")
    n = len(ds["train"])
    assert manifest["task"] == task.name and manifest["class_names"] == ds.class_names
    assert manifest["rows_per_source"] == {"train": n, "perturbed": k * n, "interpolated": interpolated,
                                           "uniform": uniform, "shell": shell}
    assert list(df.columns) == schema.soft_label_columns(ds.feature_names, task.outputs) and df["id"].is_unique
    assert (df["num_samples"] == manifest["num_samples"]).all()
    labelled = df.source.isin(["train", "perturbed"]).to_numpy()
    has_label = df["label"].notna().to_numpy() if case == "regression" else (df["label"] != schema.NO_LABEL).to_numpy()
    np.testing.assert_array_equal(has_label, labelled)

    model = tf.saved_model.load(str(schema.teacher_export(run)))
    x = df[ds.feature_names].to_numpy(np.float32).reshape(-1, *ds.input_shape)  # sequences: [N, T, C] again
    seeded = model.signatures["predictive_seeded"](features=tf.constant(x), num_samples=tf.constant(manifest["num_samples"]),
                                                   seed=tf.constant(manifest["seed"], tf.int64))
    for key in task.outputs:
        got = stack(df, key) if key in task.vector_outputs else df[key].to_numpy()
        np.testing.assert_allclose(got, seeded[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)

    train = df[df.source == "train"]
    if case == "regression":
        assert (df["variance"] >= df["epistemic_variance"] - 1e-5).all() and (df["epistemic_variance"] >= 0).all()
        assert np.sqrt(((train["mean"] - train["label"]) ** 2).mean()) < 3.0  # target units, near the true targets
    else:
        np.testing.assert_allclose(stack(df, "probs").sum(1), 1.0, atol=1e-5)
        assert (stack(df, "variance") >= 0).all() and (df["mutual_information"] >= 0).all()
        np.testing.assert_allclose(df["entropy"], df["expected_entropy"] + df["mutual_information"], atol=1e-4)
        assert (stack(train, "probs").argmax(1) == train["label"]).mean() > 0.8  # the teacher learnt the classes


def test_cli_end_to_end_on_iris(labelled):
    """What the CLI adds on Iris (the soft labels themselves: the test above): its manifest and shards, a
    many-draw reference, its progress lines."""
    import tensorflow as tf

    df, manifest = read_soft_labels(labelled)
    ds = data_lib.load_from_run(labelled)
    assert manifest["num_samples"] == S and manifest["seed"] == 0 and manifest["runner"] == "FnApiRunner"
    out = labelled / "soft_labels"
    assert sorted(p.name for p in out.glob("part-*")) == sorted(manifest["shards"])
    probs = stack(df, "probs")  # [N, C]

    # Each row got the teacher's predictive for ITS features: compare with an in-process many-draw reference.
    model = tf.saved_model.load(str(schema.teacher_export(labelled)))
    x = tf.constant(df[ds.feature_names].to_numpy(np.float32))
    ref = model.signatures["predictive"](features=x, num_samples=tf.constant(500))
    ref_p, ref_v = ref["probs"].numpy(), ref["variance"].numpy()
    np.testing.assert_array_less(np.abs(probs - ref_p), 6 * np.sqrt(ref_v / S + ref_v / 500) + 0.01)

    text = (labelled / "cli_output.txt").read_text()
    assert "rows/uniform" in text and "rows/s" in text and "soft labels:" in text


def test_the_job_on_a_regression_transfer_set(regression_run, tmp_path):
    """The Beam job run directly on a few rows of a regression transfer set: float targets and outputs."""
    import pandas as pd
    import pyarrow.parquet as pq

    from beam_pipelines import soft_labels as job
    from distill.transfer import write_transfer_set

    run, reg = regression_run, tasks.get("regression")
    features = data_lib.load_from_run(run).feature_names
    transfer = pd.read_parquet(schema.transfer_path(run)).head(20)
    write_transfer_set(transfer, tmp_path / "t.parquet", features, reg)
    m = job.run(["--transfer", str(tmp_path / "t.parquet"), "--export", str(schema.teacher_export(run)),
                 "--dataset_json", str(schema.data_dir(run) / "dataset.json"), "--output", str(tmp_path / "out"),
                 "--samples", "7", "--runner", "FnApiRunner"])
    assert m["rows"] == 20 and m["runner"] == "FnApiRunner" and m["task"] == "regression"
    table = pq.read_table(tmp_path / "out" / m["shards"][0])
    assert table.column_names == schema.soft_label_columns(features, reg.outputs)
    assert str(table.schema.field("mean").type) == "float" and str(table.schema.field("label").type) == "float"
    assert set(table.column("num_samples").to_pylist()) == {7}


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_check_export_refuses_a_teacher_of_another_task(task, request):
    from beam_pipelines.predictive_handler import PredictiveModelHandler
    from beam_pipelines.soft_labels import check_export
    from distill.transfer import soft_label_arrow_schema

    run = request.getfixturevalue("teacher_run" if task == "classification" else "regression_run")
    ds = data_lib.load_from_run(run)
    export, other = str(schema.teacher_export(run)), "regression" if task == "classification" else "classification"

    def check(features, classes, t):
        handler = PredictiveModelHandler(export, features, 2, 0, t.outputs)
        check_export(export, handler, soft_label_arrow_schema(features, t), classes, t)

    check(ds.feature_names, ds.class_names, tasks.get(task))  # fine as made
    with pytest.raises(BdkError, match="expected") as e:
        check(ds.feature_names, ["a", "b"] if other == "classification" else [], tasks.get(other))
    assert "\n" not in str(e.value)
    with pytest.raises(BdkError, match=f"does not take {len(ds.feature_names) + 1} features"):
        check([*ds.feature_names, "extra"], ds.class_names, tasks.get(task))


def test_rerun_replaces_the_output_atomically(copy_labelled):
    run = copy_labelled()
    before = snapshot(run / "soft_labels")
    old, _ = read_soft_labels(run)
    started = time.time()
    result = bdk("soft-labels", "--run", run, *SMALL, "--seed", "1")
    assert result.exit_code == 0, (result.output, result.stderr)
    new, manifest = read_soft_labels(run)
    assert len(new) == len(old) and new["id"].is_unique and manifest["seed"] == 1
    after = snapshot(run / "soft_labels")
    shards = {name for name in after if name.startswith("part-")}
    assert shards == set(manifest["shards"])  # exactly this run's shards, no stragglers
    for name in shards:  # and each one is a new file
        assert before.get(name) is None or before[name][1] != after[name][1]
        assert (run / "soft_labels" / name).stat().st_mtime >= started
    # The seed changed the uniform points: the shards carry the new ones, nothing of the old.
    transfer = __import__("pandas").read_parquet(run / "soft_labels" / "transfer.parquet").set_index("id")
    features = data_lib.load_from_run(run).feature_names
    u = new[new.source == "uniform"].set_index("id")
    np.testing.assert_array_equal(u[features].to_numpy(), transfer.loc[u.index, features].to_numpy())
    assert not np.allclose(u[features].to_numpy(), old[old.source == "uniform"].set_index("id").loc[u.index, features])
    # The training rows are the same inputs, labelled with the other seed's teacher draws.
    a, b = (d[d.source == "train"].set_index("id").sort_index() for d in (old, new))
    np.testing.assert_array_equal(a[features].to_numpy(), b[features].to_numpy())
    assert np.abs(stack(a, "probs") - stack(b, "probs")).max() > 1e-3
    assert no_leftovers(run)


def test_a_changed_teacher_is_noticed(copy_labelled):
    run = copy_labelled()
    read_soft_labels(run)  # fine as made
    variables = next((schema.teacher_export(run) / "variables").glob("variables.data-*"))
    blob = bytearray(variables.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # as if retrained: same files, other weights
    variables.write_bytes(bytes(blob))
    with pytest.raises(BdkError, match=r"changed since the soft labels were made.*rerun `bdk soft-labels --run"):
        read_soft_labels(run)

    run = copy_labelled("classes")
    meta = read_json(run / "data" / "dataset.json")
    meta["class_names"] = meta["class_names"][::-1]
    (run / "data" / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(BdkError, match="class_names"):
        read_soft_labels(run)


def test_shards_read_one_at_a_time_in_transfer_order(copy_labelled):
    import pyarrow.parquet as pq

    from distill.transfer import shard_arrays, soft_label_shards

    run = copy_labelled()
    df, _ = read_soft_labels(run)
    transfer_ids = pq.read_table(run / "soft_labels" / schema.TRANSFER_FILE, columns=["id"]).column("id").to_pylist()
    assert df["id"].tolist() == transfer_ids  # the frame is in transfer-set order
    shards, manifest, task, classes = soft_label_shards(run)
    tables = list(shards)
    assert len(tables) == len(manifest["shards"]) and sum(len(t) for t in tables) == len(df)
    assert [i for t in tables for i in t.column("id").to_pylist()] == transfer_ids
    probs = np.concatenate([shard_arrays(t, task, classes)["probs"] for t in tables])  # [N, C]
    np.testing.assert_array_equal(probs, stack(df, "probs"))
    # a shard whose rows are not its row group's, in order, is refused
    shard = run / "soft_labels" / manifest["shards"][0]
    table = pq.read_table(shard)
    pq.write_table(table.take(np.arange(len(table))[::-1]), shard)
    with pytest.raises(BdkError, match="row for row"):
        list(soft_label_shards(run)[0])


@pytest.fixture
def job_service(tmp_path):
    """Beam's own local job service (the portable Job API over gRPC), offline on loopback."""
    port_file = tmp_path / "job_service.port"
    proc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                             "--port_file", str(port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, "the job service did not start"
            time.sleep(0.1)
        yield f"localhost:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_multi_process_and_portable_runners_give_the_same_rows(labelled, copy_run, job_service):
    base, _ = read_soft_labels(labelled)
    runs = {"multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
            "portable": ["--runner=PortableRunner", f"--job_endpoint={job_service}", "--environment_type=LOOPBACK"]}
    for name, beam_args in runs.items():
        run = copy_run(name)
        result = bdk("soft-labels", "--run", run, *SMALL, "--", *beam_args)
        assert result.exit_code == 0, (name, result.output, result.stderr)
        df, manifest = read_soft_labels(run)
        assert manifest["beam_args"] == beam_args
        assert list(df["id"]) == list(base["id"]) and list(df["source"]) == list(base["source"])
        cols = ["label", *manifest["feature_names"]]
        np.testing.assert_array_equal(df[cols].to_numpy(), base[cols].to_numpy())
        # one seed, one batching: every runner gives the same bits
        for k in CLS.outputs:
            a, b = (stack(d, k) if k in CLS.vector_outputs else d[k].to_numpy() for d in (df, base))
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {k}")


def test_the_seed_fixes_the_soft_labels_whatever_the_batching(labelled, tmp_path):
    """The job's seed fixes the teacher's draws for every row: a rerun gives the same bits, other row groups
    (another batching of the same rows) the same soft labels. (Another seed: test_rerun_replaces_the_output_atomically.)"""
    import pandas as pd
    import pyarrow.parquet as pq

    from beam_pipelines import soft_labels as job
    from distill.transfer import write_transfer_set

    ds = data_lib.load_from_run(labelled)
    base = read_shards(labelled / "soft_labels")
    transfer = pd.read_parquet(schema.transfer_path(labelled))
    assert pq.ParquetFile(schema.transfer_path(labelled)).metadata.num_row_groups == 1

    def label(name, row_group_rows=None, seed=0):
        path = schema.transfer_path(labelled)
        if row_group_rows:
            path = write_transfer_set(transfer, tmp_path / f"{name}.parquet", ds.feature_names, CLS, row_group_rows)
        m = job.run(["--transfer", str(path), "--export", str(schema.teacher_export(labelled)),
                     "--dataset_json", str(schema.data_dir(labelled) / "dataset.json"), "--output", str(tmp_path / name),
                     "--samples", str(S), "--seed", str(seed)])
        assert m["rows"] == len(transfer) and m["seed"] == seed
        return m, read_shards(tmp_path / name)

    _, again = label("again")
    _, small = label("small", row_group_rows=7)
    assert pq.ParquetFile(tmp_path / "small.parquet").metadata.num_row_groups == -(-len(transfer) // 7)
    assert list(again["id"]) == list(base["id"]) == list(small["id"])
    for k in CLS.outputs:
        column = (lambda d: stack(d, k)) if k in CLS.vector_outputs else (lambda d: d[k].to_numpy())
        np.testing.assert_array_equal(column(again), column(base), err_msg=k)  # rerun: bit-identical
        np.testing.assert_allclose(column(small), column(base), rtol=1e-6, atol=1e-6, err_msg=k)  # batches of 7


def test_workers_need_no_project_code(teacher_run, tmp_path):
    """What Beam ships to workers unpickles and runs where distill/teacher/beam_pipelines cannot be imported."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.internal import pickler

    from beam_pipelines.predictive_handler import PredictiveModelHandler
    from beam_pipelines.soft_labels import SoftLabelJob
    from distill.transfer import soft_label_arrow_schema, transfer_arrow_schema

    ds = data_lib.load_from_run(teacher_run)
    handler = PredictiveModelHandler(str(schema.teacher_export(teacher_run)), ds.feature_names, num_samples=5, seed=3,
                                     output_names=CLS.outputs)
    arrow_schema = soft_label_arrow_schema(ds.feature_names, CLS)
    rows = [{"id": f"train:{i}", "source": "train", "label": int(y), **dict(zip(ds.feature_names, map(float, x)))}
            for i, (x, y) in enumerate(zip(ds["test"].x[:4], ds["test"].y[:4]))]
    pq.write_table(pa.Table.from_pylist(rows, schema=transfer_arrow_schema(ds.feature_names, CLS)), tmp_path / "rows.parquet")
    # The job's constructor registers the handler module for pickling by value; its DoFn is what workers get.
    job = SoftLabelJob(str(tmp_path / "rows.parquet"), handler, str(tmp_path / "part"), 1, arrow_schema)
    (tmp_path / "fn.pkl").write_bytes(pickler.dumps(job.label_fn))
    worker = textwrap.dedent("""
        import importlib.abc, json, sys
        class NoProjectCode(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {"distill", "teacher", "student", "beam_pipelines"}:
                    raise ImportError(name + " is project code; workers must not need it")
        sys.meta_path.insert(0, NoProjectCode())
        import pyarrow.parquet as pq
        from apache_beam.internal import pickler
        fn = pickler.loads(open("fn.pkl", "rb").read())
        fn.setup()
        shards = list(fn.process(0))  # row group 0 -> its shard
        print(json.dumps([row for s in shards for row in pq.read_table(s).to_pylist()]))
    """)
    done = subprocess.run([sys.executable, "-c", worker], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["id"] for r in out] == [r["id"] for r in rows] and all(r["num_samples"] == 5 for r in out)
    assert [r["label"] for r in out] == [r["label"] for r in rows]
    np.testing.assert_allclose([sum(r["probs"]) for r in out], 1.0, atol=1e-5)
    # the worker's soft labels are the seeded predictive of those rows
    import tensorflow as tf

    ref = tf.saved_model.load(str(schema.teacher_export(teacher_run))).signatures["predictive_seeded"](
        features=tf.constant(ds["test"].x[:4]), num_samples=tf.constant(5), seed=tf.constant(3, tf.int64))
    np.testing.assert_allclose([r["probs"] for r in out], ref["probs"].numpy(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- bad input: one line, exit 1, nothing written


@pytest.mark.parametrize("damage, words", [
    ("missing", ["has no teacher export", "bdk teacher"]),
    ("corrupt", ["cannot be loaded", "bdk teacher"]),
])
def test_bad_teacher_export(copy_labelled, damage, words):
    run = copy_labelled()
    before = snapshot(run / "soft_labels")
    export = schema.teacher_export(run)
    if damage == "missing":
        shutil.rmtree(export)
    else:
        (export / "saved_model.pb").write_bytes(b"\x08\x01 not a saved model")
    assert_one_line_error(bdk("soft-labels", "--run", run, *SMALL), *words)
    assert snapshot(run / "soft_labels") == before and no_leftovers(run)


@pytest.mark.parametrize("problem, words", [
    ("columns", ["do not match the teacher's features", "unexpected ['petal']"]),
    ("nan", ["data rows 2, 4;"]),
])
def test_bad_unlabeled_file(copy_run, tmp_path, problem, words):
    run = copy_run()
    ds = data_lib.load_from_run(run)
    df = __import__("pandas").DataFrame(ds["test"].x[:5], columns=ds.feature_names)
    if problem == "columns":
        df = df.rename(columns={ds.feature_names[-1]: "petal"})
    else:
        df.iloc[[1, 3], 0] = np.nan
    df.to_csv(tmp_path / "extra.csv", index=False)
    assert_one_line_error(bdk("soft-labels", "--run", run, *SMALL, "--unlabeled", tmp_path / "extra.csv"), *words)
    assert not (run / "soft_labels").exists() and no_leftovers(run)


def test_too_few_samples_fails_fast_in_a_real_process(teacher_run):
    bdk_script = Path(sys.executable).parent / "bdk"
    started = time.time()
    done = subprocess.run([str(bdk_script), "soft-labels", "--run", str(teacher_run), "--samples", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: --samples must be at least 2 (the variance needs two draws), got 1"]
    assert not (teacher_run / "soft_labels").exists()
    assert time.time() - started < 30  # refused before Beam and TensorFlow load


def test_the_workers_signature_name_is_the_exports():
    """predictive_handler keeps its own copy of the name (its workers import no distill): it must be the export's."""
    from beam_pipelines.predictive_handler import PREDICTIVE_SIGNATURE
    from distill.schema import SEEDED_SIGNATURE

    assert PREDICTIVE_SIGNATURE == SEEDED_SIGNATURE
    from beam_pipelines.predictive_handler import ROWS_SIGNATURE
    from distill.schema import SEEDED_ROWS_SIGNATURE

    assert ROWS_SIGNATURE == SEEDED_ROWS_SIGNATURE


# ---------------------------------------------------------------- a table with text columns and empty cells

PENGUINS = Path(__file__).resolve().parents[1] / "data" / "penguins.csv"
PENGUIN_TRANSFER = dict(perturbations=2, interpolations=100, uniform=100, shell=100)


@pytest.fixture(scope="module")
def penguins_labelled(tmp_path_factory) -> Path:
    """A short penguins teacher (text columns island, sex, year; empty cells) labelled by the Beam job. Read-only."""
    from bdk.pipeline import soft_labels_stage, teacher_stage
    from distill.transfer import SoftLabelConfig, TransferConfig
    from teacher.config import TeacherConfig

    run = tmp_path_factory.mktemp("penguins") / "run"
    teacher_stage(data_lib.DataConfig(dataset=str(PENGUINS), label_column="species"),
                  TeacherConfig(epochs=20, patience=20, eval_samples=10), run, progress=False)
    soft_labels_stage(SoftLabelConfig(TransferConfig(**PENGUIN_TRANSFER), samples=S), run, progress=False)
    return run


def _seeded_on_encoded(run: Path, frame, manifest) -> dict:
    """The teacher's `predictive_seeded` on the rows encoded in numpy (the path before raw columns)."""
    import tensorflow as tf

    from distill.transfer import encoded_inputs

    ds = data_lib.load_from_run(run)
    fn = tf.saved_model.load(str(schema.teacher_export(run))).signatures[schema.SEEDED_SIGNATURE]
    out = fn(features=tf.constant(encoded_inputs(frame, ds)), num_samples=tf.constant(manifest["num_samples"]),
             seed=tf.constant(manifest["seed"], tf.int64))
    return {k: v.numpy() for k, v in out.items()}


def test_the_beam_job_carries_a_mixed_tables_raw_columns_unchanged(penguins_labelled):
    import pyarrow.parquet as pq

    run = penguins_labelled
    ds = data_lib.load_from_run(run)
    raw = ds.feature_spec.raw_columns
    transfer = pq.read_table(schema.transfer_path(run))
    shards = [pq.read_table(p) for p in sorted((run / "soft_labels").glob("part-*.parquet"))]
    import pyarrow as pa

    labelled = pa.concat_tables(shards)
    for table in (transfer, labelled):
        assert {f.name: str(f.type) for f in table.schema if f.name in raw} == {
            "island": "string", "bill_length_mm": "float", "bill_depth_mm": "float", "flipper_length_mm": "float",
            "body_mass_g": "float", "sex": "string", "year": "string"}
    assert labelled.select(["id", "source", *raw]).equals(transfer.select(["id", "source", *raw]))  # unchanged
    # the training rows are the user's own cells: text as text, NA as null, years as text, numbers to float32
    train = labelled.filter(pa.compute.equal(labelled.column("source"), "train")).to_pandas()
    csv = data_lib.read_table(str(PENGUINS)).loc[train["id"].str[len("train:"):].astype(int) - 1].reset_index(drop=True)
    assert train["island"].tolist() == csv["island"].tolist()
    assert train["sex"].isna().sum() > 0 and train["sex"].fillna("?").tolist() == csv["sex"].fillna("?").tolist()
    assert train["year"].tolist() == csv["year"].astype(str).tolist()
    np.testing.assert_array_equal(train["bill_length_mm"], csv["bill_length_mm"].astype(np.float32))
    assert "<oov>" in set(labelled.column("island").to_pylist())  # unseen values: the shell's and perturbed rows'
    # the export encoded them in its graph exactly as numpy does: the soft labels of the encoded path, bit for bit
    soft, manifest = read_soft_labels(run)
    want = _seeded_on_encoded(run, soft, manifest)
    for k in CLS.outputs:
        np.testing.assert_array_equal(np.stack(soft[k].to_numpy()) if k in CLS.vector_outputs else soft[k].to_numpy(),
                                      want[k], err_msg=k)


def test_a_raw_table_of_the_users_own_goes_through_the_job(penguins_labelled, tmp_path):
    """The job run directly on the user's cells: integer years, an unseen island, empty cells; strings kept."""
    import pandas as pd

    from beam_pipelines import soft_labels as job

    run = penguins_labelled
    rows = data_lib.read_table(str(PENGUINS)).head(12).drop(columns=["species"])
    rows.loc[0, "island"] = "Anvers"  # not in the vocabulary
    rows.insert(0, "id", [f"mine:{i}" for i in range(len(rows))])
    rows.insert(1, "source", "unlabeled")
    rows.insert(2, "label", -1)
    assert rows["year"].dtype == np.int64 and rows["sex"].isna().any()
    rows.to_parquet(tmp_path / "mine.parquet", index=False)
    args = ["--export", str(schema.teacher_export(run)), "--dataset_json", str(schema.data_dir(run) / "dataset.json"),
            "--samples", str(S)]
    m = job.run(["--transfer", str(tmp_path / "mine.parquet"), "--output", str(tmp_path / "out"), *args])
    out = pd.read_parquet(tmp_path / "out" / m["shards"][0])
    assert out["island"].tolist() == rows["island"].tolist() and out["year"].tolist() == rows["year"].astype(str).tolist()
    assert out["sex"].isna().tolist() == rows["sex"].isna().tolist()
    want = _seeded_on_encoded(run, rows, {"num_samples": S, "seed": 0})
    np.testing.assert_array_equal(np.stack(out["probs"].to_numpy()), want["probs"])
    with pytest.raises(BdkError, match=r"lacks the column\(s\) \['sex'\]") as e:
        rows.drop(columns="sex").to_parquet(tmp_path / "no_sex.parquet", index=False)
        job.run(["--transfer", str(tmp_path / "no_sex.parquet"), "--output", str(tmp_path / "out2"), *args])
    assert "\n" not in str(e.value)


def test_the_student_reads_raw_soft_labels_as_the_encoded_rows(penguins_labelled, tmp_path):
    """The student encodes the raw columns with the run's FeatureSpec: the same normalised rows as the encoded
    transfer rows generated (what the soft labels held before)."""
    from distill.transfer import TransferConfig, generated_parts, soft_label_shards
    from student.config import StudentConfig
    from student.train import _stream_rows

    run = penguins_labelled
    ds = data_lib.load_from_run(run)
    shards, manifest, task, _ = soft_label_shards(run)
    rows = _stream_rows(StudentConfig().resolved(ds.task), run, ds, task, shards, manifest, str(tmp_path))
    got = np.concatenate([rows.all_rows()[0], rows.held_out[0]])
    z = np.concatenate([x for *_, x in generated_parts(TransferConfig(**PENGUIN_TRANSFER), ds, task)])
    want = ds.normalise(z)

    def ordered(a):
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(ordered(got), ordered(want))


def test_bdk_serve_answers_the_seeded_rows_signature(penguins_labelled):
    """`predictive_seeded_rows` over REST: named raw fields plus num_samples and seed (columnar format)."""
    import httpx
    import pandas as pd

    from serving.server import BackgroundServer, create_app

    run = penguins_labelled
    cols = {"island": ["Dream", "Anvers"], "bill_length_mm": [39.0, None], "bill_depth_mm": [18.0, 18.0],
            "flipper_length_mm": [190.0, 190.0], "body_mass_g": [3600.0, 3600.0], "sex": ["male", None],
            "year": ["2008", 2007]}
    url = "/v1/models/teacher:predict"
    with BackgroundServer(create_app(run / "teacher" / "export", "teacher")) as s:
        ok = httpx.post(s.url + url, json={"signature_name": schema.SEEDED_ROWS_SIGNATURE,
                                           "inputs": {**cols, "num_samples": S, "seed": 3}})
        lacking = httpx.post(s.url + url, json={"signature_name": schema.SEEDED_ROWS_SIGNATURE, "inputs": cols})
    assert ok.status_code == 200, ok.text
    want = _seeded_on_encoded(run, pd.DataFrame(cols), {"num_samples": S, "seed": 3})
    np.testing.assert_array_equal(np.array(ok.json()["outputs"]["probs"], np.float32), want["probs"])
    assert lacking.status_code == 400 and "lacks the signature input" in lacking.json()["error"]


def test_the_jobs_output_check_finds_a_lost_a_doubled_and_a_foreign_row(tmp_path):
    """The job's read-back of its shards (compared as id hashes, batch by batch) against the transfer set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_pipelines.soft_labels import _check_written

    def write(name, ids, sources):
        path = tmp_path / name
        pq.write_table(pa.table({"id": ids, "source": sources}), path, row_group_size=7)
        return str(path)

    ids = [f"train:{i}" for i in range(40)] + [f"perturbed:{i}" for i in range(20)]
    sources = ["train"] * 40 + ["perturbed"] * 20
    transfer = write("transfer.parquet", ids, sources)
    shards = [write("a.parquet", ids[::-1][:25], sources[::-1][:25]), write("b.parquet", ids[::-1][25:], sources[::-1][25:])]
    assert _check_written(shards, transfer) == (60, {"train": 40, "perturbed": 20})
    broken = {"lost": (ids[1:], sources[1:]), "doubled": (ids + ids[:1], sources + sources[:1]),
              "foreign": (ids[1:] + ["train:999"], sources), "relabelled": (ids, ["train"] * 41 + ["perturbed"] * 19)}
    for name, (got_ids, got_sources) in broken.items():
        with pytest.raises(RuntimeError, match="rows per source" if name == "relabelled" else "distinct ids"):
            _check_written([write(f"{name}.parquet", got_ids, got_sources)], transfer)

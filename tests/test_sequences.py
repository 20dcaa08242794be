"""Sequences: the loader and its bad inputs, the Bayesian GRU (one weight draw per sequence, the KL scaling), and
`bdk run --kind brnn` end to end (conftest `sequence_run`) with `bdk predict` and real HTTP on the results. Its
export in a fresh interpreter: test_teacher.py, parametrised over the tasks and inputs."""
import json
import shutil
from dataclasses import replace

import httpx
import numpy as np
import pandas as pd
import pytest

from typer.testing import CliRunner

from bdk.cli import app
from distill.inputs import SequenceInputs, TableInputs
from tests.sequence_data import CHANNELS, LENGTH, long_frame, tiny_sequences



def run_cli(args, timeout=None):
    """`bdk ARGS` in process: exit code, stderr, and any exception that escaped the CLI (a traceback to the user)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return type("Result", (), {"returncode": r.exit_code, "stderr": r.stderr, "stdout": r.stdout})


# ---------------------------------------------------------------- data


def test_long_table_loads_as_sequences_with_per_channel_scaling(sequence_csv):
    from distill import data

    ds = data.load(data.DataConfig(dataset=str(sequence_csv), series_column="series"))
    x, y = tiny_sequences()
    assert ds.input_shape == (LENGTH, CHANNELS) and ds.class_names == ["fast", "slow"]
    assert sum(len(s) for s in ds.splits.values()) == len(x)
    assert len(ds.scaler.shift) == CHANNELS  # per channel, not per flattened feature
    z = ds.scaled("train")
    np.testing.assert_allclose(z.reshape(-1, CHANNELS).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(-1, CHANNELS).std(0), 1, atol=1e-4)
    row = ds["train"]  # the rows are the series, in time order, whatever the file order was
    i = int(row.ids[0][1:])
    np.testing.assert_allclose(ds.raw("train")[0], x[i], rtol=1e-6)
    assert ds.class_names[row.y[0]] == ["fast", "slow"][y[i]]
    np.testing.assert_allclose(ds.denormalise(z[:3]), row.x[:3], atol=1e-5)


def test_npz_and_bundled_sequences(tmp_path):
    from distill import data

    x, y = tiny_sequences(60)
    np.savez(tmp_path / "s.npz", x=x, y=y)
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "s.npz")))
    assert ds.input_shape == (LENGTH, CHANNELS) and ds.feature_names[:3] == ["c0@t0", "c1@t0", "c0@t1"]
    italy = data.load(data.DataConfig(dataset="italy_power"))
    assert italy.input_shape == (24, 1) and italy.class_names == ["summer", "winter"]
    assert sum(len(s) for s in italy.splits.values()) == 1096


@pytest.mark.parametrize("damage, words", [
    (lambda df: df.drop(index=df.index[(df.series == "s3") & (df.time == 5)]), "ragged sequences: series 's3' has 11"),
    (lambda df: df.assign(a=df.a.where(~((df.series == "s7") & (df.time == 2)))), "non-finite values in series s7"),
    (lambda df: df.assign(label=df.label.where(~((df.series == "s2") & (df.time == 0)), "x")),
     "series 's2' has more than one label"),
    (lambda df: pd.concat([df, df.iloc[:1]]), "two rows at one time step"),
    (lambda df: df.drop(columns=["time"]), "no time column"),
    (lambda df: df.assign(series=df.series.where(~((df.series == "s4") & (df.time == 3)))),
     "series id column 'series' is empty in data row 52;"),  # row 4 * 12 + 3, 1-based
    (lambda df: df.assign(time=df.time.where(~((df.series == "s1") & (df.time == 0)))),
     "time column 'time' is empty in data row 13;"),
    (lambda df: df.assign(time="t" + df.time.astype(str)), "time column 'time' is neither numeric nor dates (e.g. 't0')"),
    (lambda df: df.assign(label=df.label.where(df.series != "s5")), "series 's5' has rows without a label"),
])
def test_bad_sequence_tables_are_one_line_errors(tmp_path, damage, words):
    x, y = tiny_sequences(30)
    path = tmp_path / "bad.csv"
    damage(long_frame(x, y)).to_csv(path, index=False)
    r = run_cli(["teacher", "--dataset", str(path), "--series-column", "series", "--out", str(tmp_path / "run")])
    assert r.returncode == 1, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_empty_tables_are_refused_and_times_sort_as_numbers_or_dates():
    from distill.errors import BdkError
    from distill.sequences import from_long_table

    x, y = tiny_sequences(6)
    with pytest.raises(BdkError, match="the table has no rows"):
        from_long_table(long_frame(x, y).iloc[:0], "label", None, None)
    shuffled = long_frame(x, y).sample(frac=1.0, random_state=1)
    for time in (shuffled.time.astype(str),  # text digits: 10 and 11 would sort before 2
                 (pd.Timestamp("2024-01-01") + pd.to_timedelta(shuffled.time, unit="h")).astype(str)):
        ids, got, labels, _ = from_long_table(shuffled.assign(time=time), "label", None, None)
        order = np.argsort([int(i[1:]) for i in ids])
        np.testing.assert_allclose(got[order], x, rtol=1e-6)


@pytest.mark.parametrize("arrays, words", [
    (lambda x, y: dict(x=x, y=y[:, None]), "y [30, 1]; they need [N, T, C] and [N]"),
    (lambda x, y: dict(x=x.astype(str), y=y), "x has dtype <U"),
    (lambda x, y: dict(x=x, y=np.where(np.arange(30) == 4, np.nan, y)), "y is missing for sequences 4;"),
    (lambda x, y: dict(x=x, y=y, channels=np.array(["a", "b", "c"])), "`channels` has shape [3] but x has 2 channels"),
    (lambda x, y: dict(x=x, y=y, ids=np.arange(29)), "`ids` has shape [29] but x has 30 sequences"),
])
def test_bad_npz_files_are_one_line_errors(tmp_path, arrays, words):
    x, y = tiny_sequences(30)
    np.savez(tmp_path / "bad.npz", **arrays(x, y))
    r = run_cli(["teacher", "--dataset", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "run")])
    assert r.returncode == 1, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_new_sequences_are_read_with_the_runs_columns_and_without_its_label(tmp_path, monkeypatch):
    """dataset.json records the series and time columns; unlabeled and OOD tables are read with them (label ignored)."""
    from distill import data
    from distill.errors import BdkError
    from bdk.evaluate import EvalConfig, ood_inputs
    from distill.transfer import read_unlabeled

    x, y = tiny_sequences(30)
    rename = {"series": "sid", "time": "hour"}
    long_frame(x, y).rename(columns=rename).to_csv(tmp_path / "train.csv", index=False)
    built = data.load(data.DataConfig(dataset=str(tmp_path / "train.csv"), series_column="sid", time_column="hour"))
    data.save(built, tmp_path / "run" / "data")
    meta = json.loads((tmp_path / "run" / "data" / "dataset.json").read_text())
    assert (meta["series_column"], meta["time_column"]) == ("sid", "hour")
    ds = data.load_from_run(tmp_path / "run")
    assert (ds.inputs.series_column, ds.inputs.time_column) == ("sid", "hour")
    new = tiny_sequences(5, seed=2)[0]
    long_frame(new, np.arange(5) % 2).rename(columns=rename).to_csv(tmp_path / "new.csv", index=False)  # labelled
    ids, got = read_unlabeled(str(tmp_path / "new.csv"), ds)
    assert list(ids) == [f"s{i}" for i in range(5)]
    np.testing.assert_allclose(got, new.reshape(5, -1), rtol=1e-6)
    np.testing.assert_allclose(ood_inputs(EvalConfig(ood_file=str(tmp_path / "new.csv")), ds), new.reshape(5, -1), rtol=1e-6)
    monkeypatch.setattr(data, "read_table", lambda source: pd.read_csv(tmp_path / "new.csv").iloc[:0])
    with pytest.raises(BdkError, match="^OOD file .*new.csv: the table has no rows"):
        ood_inputs(EvalConfig(ood_file=str(tmp_path / "new.csv")), ds)
    # a missing column: rename it to the run's (soft-labels and evaluate have no column options); predict has them
    long_frame(new).rename(columns={"series": "sid"}).to_csv(tmp_path / "no_hour.csv", index=False)
    with pytest.raises(BdkError, match="no time column \\('hour'\\) .*rename yours to 'hour'$") as e:
        read_unlabeled(str(tmp_path / "no_hour.csv"), ds)
    assert "--" not in str(e.value)
    from distill.sequences import run_sequences

    with pytest.raises(BdkError, match="pass --time-column NAME"):
        run_sequences(pd.read_csv(tmp_path / "no_hour.csv"), ds.feature_names, None, "sid", "hour", "x", column_flags=True)
    # a dataset.json from before the columns were recorded: the defaults
    for key in ("series_column", "time_column"):
        del meta[key]
    (tmp_path / "run" / "data" / "dataset.json").write_text(json.dumps(meta))
    assert data.load_from_run(tmp_path / "run").inputs.time_column is None


def test_wrong_channel_count_and_kind_mismatch_are_refused(tmp_path):
    from distill.errors import BdkError
    from distill.sequences import from_long_table
    from teacher.config import TeacherConfig

    x, y = tiny_sequences(10)
    with pytest.raises(BdkError, match="missing \\['c'\\]"):
        from_long_table(long_frame(x, y), "label", None, None, channels=["a", "b", "c"])
    with pytest.raises(BdkError, match="unexpected \\['b'\\]"):
        from_long_table(long_frame(x, y), "label", None, None, channels=["a"])
    with pytest.raises(BdkError, match="pass --kind brnn"):
        TeacherConfig(kind="flipout").check_data(SequenceInputs(24, 2, ()))
    with pytest.raises(BdkError, match="takes sequences"):
        TeacherConfig(kind="brnn").check_data(TableInputs(48))
    TeacherConfig(kind="brnn").check_data(SequenceInputs(24, 2, ()))  # the right kind passes
    TeacherConfig(kind="flipout").check_data(TableInputs(48))


def test_time_warp_keeps_the_ends_and_zero_strength_is_the_identity():
    from distill.sequences import time_warp

    x, _ = tiny_sequences(20)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(time_warp(x, np.zeros(20), rng), x, atol=1e-6)
    w = time_warp(x, np.full(20, 0.5), rng)
    np.testing.assert_allclose(w[:, [0, -1]], x[:, [0, -1]], atol=1e-5)
    assert np.abs(w - x).max() > 0.1


def test_sequence_transfer_set_warps_copies_and_takes_unlabeled_sequences(sequence_csv, tmp_path):
    from distill import data
    from distill.errors import BdkError
    from distill.transfer import TransferConfig, build_transfer_set

    ds = data.load(data.DataConfig(dataset=str(sequence_csv), series_column="series"))
    x, _ = tiny_sequences(7, seed=9)
    long_frame(x, series=[f"u{i}" for i in range(7)]).to_csv(tmp_path / "unlabeled.csv", index=False)
    cfg = TransferConfig(perturbations=3, noise=(0.2,), time_warp=3.0, interpolations=10, uniform=5, shell=5,
                         unlabeled=str(tmp_path / "unlabeled.csv"))
    table = build_transfer_set(cfg, ds)
    assert list(table.columns[3:]) == ds.feature_names
    unlabeled = table[table.source == "unlabeled"]
    assert list(unlabeled.id) == [f"unlabeled:u{i}" for i in range(7)]
    np.testing.assert_allclose(unlabeled[ds.feature_names].to_numpy(), x.reshape(7, -1), rtol=1e-6)
    assert (table[table.source == "perturbed"].label >= 0).all()
    # the same noise without the warp: only the perturbed copies change, and not at their first and last steps
    plain = build_transfer_set(replace(cfg, time_warp=0.0), ds)
    feats = ds.feature_names
    for source in ("train", "interpolated", "uniform", "shell", "unlabeled"):
        np.testing.assert_array_equal(plain[plain.source == source][feats], table[table.source == source][feats])
    warped = table[table.source == "perturbed"][feats].to_numpy().reshape(-1, LENGTH, CHANNELS)
    unwarped = plain[plain.source == "perturbed"][feats].to_numpy().reshape(-1, LENGTH, CHANNELS)
    np.testing.assert_allclose(warped[:, [0, -1]], unwarped[:, [0, -1]], atol=1e-5)
    assert np.abs(warped - unwarped).max() > 0.1
    long_frame(x[:, :5]).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(BdkError, match="5 time steps, the teacher's 12"):
        build_transfer_set(TransferConfig(unlabeled=str(tmp_path / "short.csv")), ds)


# ---------------------------------------------------------------- the Bayesian GRU


@pytest.fixture(scope="module")
def brnn():
    import tf_keras as tfk

    from teacher.recurrent import build_brnn

    tfk.utils.set_random_seed(0)
    return build_brnn(CHANNELS, 3, n_train=100, hidden=(8,), kl_weight=0.5, posterior_scale_init=-1.0)


def explicit_gru(x, kernel, recurrent, bias):
    """A plain numpy GRU (reset after the matmul) over x [T, C] with fixed weights -> the last state [H]."""
    h = np.zeros(recurrent.shape[0])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for xt in x:
        xz, xr, xn = np.split(xt @ kernel + bias[0], 3)
        hz, hr, hn = np.split(h @ recurrent + bias[1], 3)
        z, r = sig(xz + hz), sig(xr + hr)
        h = z * h + (1 - z) * np.tanh(xn + r * hn)
    return h


def test_training_draws_one_weight_sample_per_sequence_used_at_every_step(brnn):
    import tensorflow as tf

    gru = brnn.get_layer("bayesian_gru")
    x, _ = tiny_sequences(4)
    x[1] = x[0]  # two identical sequences: different draws must give different states
    noise = gru.noise(4)
    states = gru.flipout(tf.constant(x), noise).numpy()[-1]  # [B, H] last states
    kernels, recurrents = (w.numpy() for w in gru.sequence_weights(noise))  # [B, C, 3H], [B, H, 3H]
    for i in range(4):  # the Flipout computation is sequence i run with one fixed weight sample at every step
        np.testing.assert_allclose(states[i], explicit_gru(x[i], kernels[i], recurrents[i], gru.bias.numpy()), atol=1e-5)
    assert np.abs(kernels[0] - kernels[1]).max() > 1e-3 and np.abs(states[0] - states[1]).max() > 1e-4


def test_export_draws_are_whole_sequence_samples(brnn):
    import tensorflow as tf

    from teacher.recurrent import brnn_sampler, forward_batched, forward_one

    x = tf.constant(tiny_sequences(3)[0])
    weights = brnn_sampler(brnn)(tf.constant(7, tf.int64), tf.constant(5))
    heads = forward_batched(x, weights).numpy()  # [S, B, units]
    (kernel, recurrent, bias), (head_kernel, head_bias, _) = [[np.asarray(w) if w is not None else None for w in layer]
                                                              for layer in weights]
    for s in (0, 4):
        np.testing.assert_allclose(forward_one(x, weights, s).numpy(), heads[s], atol=1e-5)
        for b in range(3):
            h = explicit_gru(x.numpy()[b], kernel[s], recurrent[s], bias)
            np.testing.assert_allclose(h @ head_kernel[s] + head_bias, heads[s, b], atol=1e-4)
    assert np.abs(heads[0] - heads[4]).max() > 1e-3  # draws differ


def test_kl_is_scaled_once_like_the_flipout_teacher(brnn):
    import tensorflow as tf
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    brnn(tf.zeros([2, LENGTH, CHANNELS]), training=True)
    gru, head = brnn.get_layer("bayesian_gru"), brnn.get_layer("head")
    expected = 0.0
    for q in [*gru.posteriors(), head.kernel_posterior]:
        d = q.distribution
        prior = tfd.Normal(tf.zeros_like(d.loc), 1.0)
        expected += float(tf.reduce_sum(tfd.kl_divergence(tfd.Normal(d.loc, d.scale), prior)))
    assert float(tf.add_n(brnn.losses)) == pytest.approx(0.5 * expected / 100, rel=1e-5)  # kl_weight * KL / N_train
    assert len(brnn.losses) == 2  # the GRU's two kernels in one term, the head's in another


# ---------------------------------------------------------------- end to end


def test_brnn_run_end_to_end(sequence_run):
    """The report's sequence sections (the run's teacher, soft labels and exports: the task-parametrised tests of
    test_teacher.py, test_soft_labels.py and test_student.py)."""
    report = json.loads((sequence_run / "report" / "metrics.json").read_text())
    over = report["over_time"]
    assert len(over["steps"]) >= 5 and over["steps"][-1] == LENGTH and len(over["teacher/ood"]) == len(over["steps"])
    assert (sequence_run / "report" / "epistemic_over_time.png").stat().st_size > 10_000
    assert "shifted regime" in (sequence_run / "report" / "report.md").read_text()


def test_predict_and_http_serving_take_sequences(sequence_run, tmp_path):
    from serving.server import BackgroundServer, create_app

    x = tiny_sequences(6, seed=4)[0]
    long_frame(x).to_csv(tmp_path / "new.csv", index=False)
    r = run_cli(["predict", str(sequence_run / "student" / "export"), str(tmp_path / "new.csv"), "--out",
                 str(tmp_path / "pred.csv"), "--no-progress"])
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred["series"]) == [f"s{i}" for i in range(6)]
    np.testing.assert_allclose(pred[["probs_fast", "probs_slow"]].sum(1), 1, atol=1e-5)
    bad = long_frame(x[:, :, :1])
    bad.to_csv(tmp_path / "one_channel.csv", index=False)
    r = run_cli(["predict", str(sequence_run / "student" / "export"), str(tmp_path / "one_channel.csv"), "--out",
                 str(tmp_path / "p2.csv")])
    assert r.returncode == 1 and "missing ['b']" in r.stderr and not (tmp_path / "p2.csv").exists()

    # a run trained with --series-column sid --time-column hour predicts on a table with those columns
    renamed = tmp_path / "renamed"
    for part in ("data", "student"):
        shutil.copytree(sequence_run / part, renamed / part)
    meta = json.loads((renamed / "data" / "dataset.json").read_text())
    (renamed / "data" / "dataset.json").write_text(json.dumps({**meta, "series_column": "sid", "time_column": "hour"}))
    long_frame(x).rename(columns={"series": "sid", "time": "hour"}).sample(frac=1.0, random_state=0).to_csv(
        tmp_path / "renamed.csv", index=False)
    r = run_cli(["predict", str(renamed / "student" / "export"), str(tmp_path / "renamed.csv"), "--out",
                 str(tmp_path / "p3.csv"), "--no-progress"])
    assert r.returncode == 0, r.stderr
    renamed_pred = pd.read_csv(tmp_path / "p3.csv")
    assert list(renamed_pred["sid"]) == list(pred["series"])
    np.testing.assert_allclose(renamed_pred[["probs_fast", "probs_slow"]], pred[["probs_fast", "probs_slow"]], atol=1e-6)
    r = run_cli(["predict", str(renamed / "student" / "export"), str(tmp_path / "new.csv"), "--out",
                 str(tmp_path / "p4.csv"), "--series-column", "series", "--time-column", "time", "--no-progress"])
    assert r.returncode == 0, r.stderr  # the options still override the run's columns

    with BackgroundServer(create_app(sequence_run / "teacher" / "export", "teacher")) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            ok = client.post("/v1/models/teacher:predict", json={"instances": x[:2].tolist()})
            assert ok.status_code == 200, ok.text
            rows = ok.json()["predictions"]
            assert len(rows) == 2 and abs(sum(rows[0]["probs"]) - 1) < 1e-5 and rows[0]["mutual_information"] >= 0
            wrong = client.post("/v1/models/teacher:predict", json={"instances": x[:2, :, :1].tolist()})
            assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]


def test_gru_student_distils_and_exports(sequence_run, tmp_path):
    import shutil

    import tensorflow as tf

    from bdk.pipeline import student_stage
    from student.config import StudentConfig

    run = tmp_path / "run"
    for part in ("data", "teacher", "soft_labels"):
        shutil.copytree(sequence_run / part, run / part)
    s = student_stage(StudentConfig(sequence_net="gru", gate=False, epochs=5, baseline_epochs=5), run, progress=False)
    assert s["tflite"].startswith("skipped") and not (run / "student" / "student.tflite").exists()
    out = tf.saved_model.load(str(run / "student" / "export" / "1")).signatures["serving_default"](
        features=tf.constant(tiny_sequences(4, seed=5)[0]))
    np.testing.assert_allclose(out["probs"].numpy().sum(1), 1, atol=1e-5)
    assert out["epistemic"].shape == (4,)

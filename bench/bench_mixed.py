"""Mixed tables (issue 25, "Quality to reach"): `bdk run` on tables as users have them, against plain baselines.

    PYTHONPATH=. .venv/bin/python bench/bench_mixed.py [--seeds 0,1,2] [--tables penguins,interactions,interactions-reg]
        [--runs /tmp/bdk-mixed] [--out experiments/mixed] [--reuse]

Tables:
- `penguins`: data/penguins.csv (Palmer penguins, 344 rows, label `species`; `island`, `sex` text, `year` integer
  codes, NA cells), as shipped;
- `interactions` / `interactions-reg`: bench/make_mixed.py's generated table (seed 0, 4,000 rows; the label's slope
  on a number flips with a text category and with an integer code; empty cells), classes `band` or target `y`.

For each table and seed: `bdk run --dataset FILE --label-column L --out RUNS/TABLE-sS --seed S --no-progress`, every
other setting at its default and no preprocessing. Then, on the run's own split (RUN/data/split.json for the ids,
RUN/data/splits.parquet for the encoded rows):
- teacher, student and the run's hard-label baseline: test NLL from RUN/report/metrics.json (the teacher's is
  recomputed from RUN/report/test_predictions.csv as a check that the ids line up);
- `onehot-mlp`: a plain tf-keras MLP (the teacher's hidden widths, ReLU, Adam 1e-3, batch 32) on the run's encoded
  inputs (one-hot + <oov> + missing indicators, z-scored on train), early-stopped on the validation NLL (patience
  50 epochs, best weights); regression: a mean and a softplus variance head (Gaussian NLL);
- `hgb`: scikit-learn's HistGradientBoosting on the RAW columns (categorical columns as pandas categories,
  categorical_features='from_dtype'; empty cells as NaN, handled natively), the number of boosting iterations
  chosen on the validation split (staged predictions, up to 1000); regression: a constant variance, the validation
  mean squared residual at that iteration.
Nothing is chosen on test. Goals (on the mean over seeds): teacher <= onehot-mlp + 0.02; |teacher - hgb| <= 0.05
(teacher no worse than hgb + 0.05); student <= teacher + 0.02.

Serving check (seed 0 runs): `bdk predict` on the raw test rows, and on the same rows with one categorical column
set to a value the train split never had (the <oov> bucket); mean epistemic output (teacher: mutual information or
epistemic variance, 10 fresh draws per call, and its `predictive_seeded` signature with 100 draws in-process; student:
its epistemic head).

Writes OUT/mixed.md and OUT/mixed.json; run folders stay in --runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import distill  # noqa: E402,F401  (Keras 2, quiet TensorFlow: before anything imports it)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import make_mixed  # noqa: E402
from distill import features as F  # noqa: E402
from distill import metrics  # noqa: E402

GOAL_ONEHOT, GOAL_HGB, GOAL_STUDENT = 0.02, 0.05, 0.02
TABLES = {  # name: (file or generator task, label column, categorical column to make unseen, unseen value)
    "penguins": ("data/penguins.csv", "species", "island", "Anvers"),
    "interactions": ("classification", "band", "region", "arctic"),
    "interactions-reg": ("regression", "y", "region", "arctic"),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def table_file(name: str, runs: Path) -> Path:
    source = TABLES[name][0]
    if source.endswith(".csv"):
        return ROOT / source
    path = runs / f"{name}.csv"
    df, _ = make_mixed.generate(source, rows=4000, seed=0)
    df.to_csv(path, index=False)
    return path


def bdk(*args: str) -> list[str]:
    return [sys.executable, "-m", "bdk.cli", *args]


def run_pipeline(name: str, path: Path, seed: int, runs: Path, reuse: bool) -> tuple[Path, float | None]:
    out = runs / f"{name}-s{seed}"
    timing = runs / f"{name}-s{seed}.seconds"
    if reuse and (out / "report" / "metrics.json").exists():
        return out, float(timing.read_text()) if timing.exists() else None
    cmd = bdk("run", "--dataset", str(path), "--label-column", TABLES[name][1], "--out", str(out), "--seed", str(seed),
              "--no-progress", "--overwrite")
    log("$ " + shlex.join(cmd))
    t0 = time.monotonic()
    with open(runs / f"{name}-s{seed}.log", "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=_env()).returncode
    seconds = time.monotonic() - t0
    if rc:
        raise SystemExit(f"bdk run failed ({rc}) for {name} seed {seed}: see {runs / f'{name}-s{seed}.log'}")
    timing.write_text(f"{seconds:.1f}\n")
    return out, seconds


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---------------------------------------------------------------- the run's split


def load_run(run: Path, path: Path) -> dict:
    meta = json.loads((run / "data" / "dataset.json").read_text())
    split_ids = json.loads((run / "data" / "split.json").read_text())
    rows = pd.read_parquet(run / "data" / "splits.parquet")
    rows["id"] = rows["id"].astype(str)
    raw = pd.read_csv(path)
    id_col = next((c for c in ("id", "Id", "ID") if c in raw.columns), None)
    raw.index = (raw[id_col] if id_col else pd.Series(np.arange(1, len(raw) + 1))).astype(str).to_numpy()
    names = meta["encoded_features"]
    out = {"meta": meta, "raw": {}, "x": {}, "y": {}, "ids": {}}
    for split in ("train", "val", "test"):
        ids = [str(i) for i in split_ids[split]]
        part = rows[rows["split"] == split].set_index("id").loc[ids]
        out["ids"][split] = ids
        out["x"][split] = part[names].to_numpy(np.float32)
        out["y"][split] = part["label"].to_numpy()
        out["raw"][split] = raw.loc[ids, meta["raw_columns"]].reset_index(drop=True)
        label = raw.loc[ids, meta["label_column"]].to_numpy()
        if meta["task"] == "classification":  # the encoded label is the class index: check against the file
            assert (np.array(meta["class_names"], dtype=object)[out["y"][split]] == label.astype(str)).all(), split
        else:
            assert np.allclose(out["y"][split], label.astype(np.float64), rtol=1e-5, atol=1e-5), split
    return out


def run_figures(run: Path, data: dict) -> dict:
    rep = json.loads((run / "report" / "metrics.json").read_text())
    task = data["meta"]["task"]
    fig = {f"{who}": rep[who]["test/nll"] for who in ("teacher", "student", "baseline")}
    key = "test/accuracy" if task == "classification" else "test/rmse"
    fig.update({f"{who}_{key.split('/')[1]}": rep[who][key] for who in ("teacher", "student", "baseline")})
    pred = pd.read_csv(run / "report" / "test_predictions.csv", dtype={"id": str}).set_index("id").loc[data["ids"]["test"]]
    y = data["y"]["test"]
    if task == "classification":
        probs = pred[[f"teacher_prob_{c}" for c in data["meta"]["class_names"]]].to_numpy(np.float64)
        check = float(metrics.nll(probs, y))
    else:
        check = None
        cols = [c for c in pred.columns if c.startswith("teacher_")]
        mean = next((c for c in cols if c.endswith("_mean") or c == "teacher_mean"), None)
        var = next((c for c in cols if c in ("teacher_variance", "teacher_total_variance")), None)
        if mean and var:
            check = metrics.gaussian_nll(y.astype(np.float64), pred[mean].to_numpy(np.float64),
                                         pred[var].to_numpy(np.float64))
    if check is not None:
        assert abs(check - fig["teacher"]) < 2e-3, (check, fig["teacher"])
    fig["teacher_check"] = check
    return fig


# ---------------------------------------------------------------- baselines


def onehot_mlp(data: dict, seed: int, hidden: list[int]) -> dict:
    import tensorflow as tf
    import tf_keras as keras

    tf.get_logger().setLevel("ERROR")
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(seed)
    x = data["x"]
    shift = x["train"].mean(0)
    scale = x["train"].std(0)
    scale[scale == 0] = 1.0
    z = {k: (v - shift) / scale for k, v in x.items()}
    regression = data["meta"]["task"] == "regression"
    layers = [keras.layers.Input((z["train"].shape[1],))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    if regression:
        y_shift, y_scale = float(data["y"]["train"].mean()), float(data["y"]["train"].std())
        y = {k: ((v - y_shift) / y_scale).astype(np.float32) for k, v in data["y"].items()}
        layers.append(keras.layers.Dense(2))

        def loss(t, out):
            mean, var = out[:, 0], tf.nn.softplus(out[:, 1]) + 1e-6
            t = tf.reshape(t, [-1])
            return 0.5 * (tf.math.log(2 * np.pi * var) + tf.square(t - mean) / var)
    else:
        y = {k: v.astype(np.int64) for k, v in data["y"].items()}
        layers.append(keras.layers.Dense(len(data["meta"]["class_names"])))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.Adam(1e-3), loss=loss)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=50, restore_best_weights=True)
    hist = model.fit(z["train"], y["train"], validation_data=(z["val"], y["val"]), batch_size=32, epochs=2000,
                     callbacks=[stop], verbose=0, shuffle=True)
    out = model.predict(z["test"], batch_size=1024, verbose=0).astype(np.float64)
    best = int(np.argmin(hist.history["val_loss"])) + 1
    if regression:
        mean = out[:, 0] * y_scale + y_shift
        var = (np.log1p(np.exp(out[:, 1])) + 1e-6) * y_scale ** 2
        yt = data["y"]["test"].astype(np.float64)
        return {"nll": metrics.gaussian_nll(yt, mean, var), "rmse": metrics.rmse(yt, mean), "epochs": best}
    probs = np.exp(out - out.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return {"nll": float(metrics.nll(probs, y["test"])), "accuracy": float(metrics.accuracy(probs, y["test"])),
            "epochs": best}


def hgb_frame(raw: pd.DataFrame, spec: dict, categories: dict) -> pd.DataFrame:
    """Raw columns as HGB takes them: categorical -> pandas category over the train values (unseen -> NaN), numeric
    and boolean -> float (NaN for empty cells), as the run's feature specification read them."""
    out = {}
    for col in spec["columns"]:
        name, kind = col["name"], col["kind"]
        cells = raw[name]
        if kind == "categorical":
            out[name] = pd.Categorical(F.as_categories(cells), categories=categories[name])
        elif kind == "boolean":
            out[name] = F.as_booleans(cells, name)
        else:
            out[name] = F.as_numbers(cells)
    return pd.DataFrame(out)


def hgb(data: dict, seed: int) -> dict:
    """Iterations chosen on validation (the goal's comparator), and scikit-learn's defaults (100 iterations, no
    early stopping below 10,000 rows) for reference."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    spec = data["meta"]["feature_spec"]
    categories = {}
    for col in spec["columns"]:
        if col["kind"] == "categorical":
            seen = F.as_categories(data["raw"]["train"][col["name"]])
            categories[col["name"]] = sorted({c for c in seen if c is not None})
    frames = {k: hgb_frame(v, spec, categories) for k, v in data["raw"].items()}
    y = data["y"]
    common = dict(max_iter=1000, early_stopping=False, categorical_features="from_dtype", random_state=seed)
    if data["meta"]["task"] == "regression":
        model = HistGradientBoostingRegressor(**common).fit(frames["train"], y["train"])
        val = [float(np.mean((y["val"] - p) ** 2)) for p in model.staged_predict(frames["val"])]
        best = int(np.argmin(val))
        yt = y["test"].astype(np.float64)
        staged = {i: p for i, p in enumerate(model.staged_predict(frames["test"])) if i in (best, 99)}
        test, default = staged[best], staged[99]
        var = np.full(len(yt), val[best])
        return {"nll": metrics.gaussian_nll(yt, test, var), "rmse": metrics.rmse(yt, test), "iterations": best + 1,
                "default_nll": metrics.gaussian_nll(yt, default, np.full(len(yt), val[99])),
                "default_rmse": metrics.rmse(yt, default)}
    model = HistGradientBoostingClassifier(**common).fit(frames["train"], y["train"])
    val = [float(metrics.nll(np.asarray(p, np.float64), y["val"])) for p in model.staged_predict_proba(frames["val"])]
    best = int(np.argmin(val))
    staged = {i: np.asarray(p, np.float64) for i, p in enumerate(model.staged_predict_proba(frames["test"]))
              if i in (best, 99)}
    probs, default = staged[best], staged[99]
    return {"nll": float(metrics.nll(probs, y["test"])), "accuracy": float(metrics.accuracy(probs, y["test"])),
            "iterations": best + 1, "default_nll": float(metrics.nll(default, y["test"])),
            "default_accuracy": float(metrics.accuracy(default, y["test"]))}


def oracle_nll(name: str, data: dict) -> float | None:
    """The generating distribution's test NLL (from the complete inputs, before cells were emptied)."""
    source = TABLES[name][0]
    if source.endswith(".csv"):
        return None
    df, oracle = make_mixed.generate(source, rows=4000, seed=0)
    at = np.array([int(i) - 1 for i in data["ids"]["test"]])  # ids are 1..rows
    y = data["y"]["test"]
    if source == "classification":  # the run's classes are sorted names; the generator's are CLASSES
        order = [make_mixed.CLASSES.index(c) for c in data["meta"]["class_names"]]
        return float(metrics.nll(oracle["probs"][at][:, order], y))
    return metrics.gaussian_nll(y.astype(np.float64), oracle["mean"][at], oracle["std"][at] ** 2)


# ---------------------------------------------------------------- serving check


def serving_check(name: str, run: Path, data: dict, runs: Path) -> dict:
    column, unseen = TABLES[name][2], TABLES[name][3]
    test = data["raw"]["test"].copy()
    test.insert(0, "id", data["ids"]["test"])
    seen_rows = test[~F.missing_mask(test[column])].reset_index(drop=True)
    swapped = seen_rows.assign(**{column: unseen})
    out = {"column": column, "unseen_value": unseen, "rows": len(seen_rows)}
    for stage in ("teacher", "student"):
        for which, frame in (("seen", seen_rows), ("unseen", swapped)):
            src = runs / f"{name}-{stage}-{which}.csv"
            dst = runs / f"{name}-{stage}-{which}-scores.csv"
            frame.to_csv(src, index=False)
            cmd = bdk("predict", str(run / stage / "export"), str(src), "--out", str(dst), "--overwrite",
                      "--no-progress")
            subprocess.run(cmd, check=True, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            scores = pd.read_csv(dst)
            col = next(c for c in ("epistemic", "mutual_information", "epistemic_variance") if c in scores.columns)
            out[f"{stage}_{which}"] = float(scores[col].mean())
            out[f"{stage}_output"] = col
    out.update(teacher_seeded(run, data["meta"], seen_rows, swapped))
    out["command"] = shlex.join(["bdk", "predict", str(run / "teacher" / "export"), "ROWS.csv", "--out", "SCORES.csv"])
    return out


def teacher_seeded(run: Path, meta: dict, seen: pd.DataFrame, unseen: pd.DataFrame, samples: int = 100) -> dict:
    """The same rows through the teacher export's `predictive_seeded` signature with 100 draws (the serving
    signature's 10 fresh draws per call make its mean epistemic output vary from call to call)."""
    import tensorflow as tf

    spec = F.from_meta(meta)
    versions = sorted((run / "teacher" / "export").iterdir(), key=lambda d: int(d.name) if d.name.isdigit() else -1)
    fn = tf.saved_model.load(str(versions[-1])).signatures["predictive_seeded"]
    out = {}
    for which, frame in (("seen", seen), ("unseen", unseen)):
        res = fn(features=tf.constant(spec.encode(frame)), num_samples=tf.constant(samples, tf.int32),
                 seed=tf.constant(0, tf.int64))
        key = "mutual_information" if "mutual_information" in res else "epistemic_variance"
        out[f"teacher{samples}_{which}"] = float(res[key].numpy().mean())
    return out


# ---------------------------------------------------------------- report


def verdict(margin: float) -> str:
    return f"met (by {-margin:.3f})" if margin <= 0 else f"missed (by {margin:.3f})"


def summarise(name: str, per_seed: list[dict]) -> dict:
    keys = ("teacher", "student", "baseline", "onehot_mlp", "hgb", "hgb_default", "oracle")
    mean = {k: float(np.mean([s[k] for s in per_seed])) for k in keys if per_seed[0].get(k) is not None}
    goals = {
        "teacher <= onehot-mlp + 0.02": mean["teacher"] - mean["onehot_mlp"] - GOAL_ONEHOT,
        "teacher <= hgb + 0.05": mean["teacher"] - mean["hgb"] - GOAL_HGB,
        "student <= teacher + 0.02": mean["student"] - mean["teacher"] - GOAL_STUDENT,
    }
    seeds_met = {
        "teacher <= onehot-mlp + 0.02": sum(s["teacher"] <= s["onehot_mlp"] + GOAL_ONEHOT for s in per_seed),
        "teacher <= hgb + 0.05": sum(s["teacher"] <= s["hgb"] + GOAL_HGB for s in per_seed),
        "student <= teacher + 0.02": sum(s["student"] <= s["teacher"] + GOAL_STUDENT for s in per_seed),
    }
    return {"table": name, "mean": mean, "goals": goals, "seeds_met": seeds_met, "seeds": per_seed}


def markdown(results: list[dict], serving: list[dict], command: str, seeds: list[int]) -> str:
    lines = ["# Mixed tables: teacher and student against plain baselines (issue 25)", "",
             f"Reproduce: `{command}`", "",
             "Every run is `bdk run --dataset FILE --label-column L --out DIR --seed S` with every other setting at "
             "its default and no preprocessing. Test NLL (nats) on the run's own test split; mean over seeds "
             f"{', '.join(map(str, seeds))} (per seed below). `baseline` is the run's own hard-label student-sized "
             "network; `onehot-mlp` a plain tf-keras MLP on the same encoded inputs, early-stopped on the run's "
             "validation split; `hgb` scikit-learn's HistGradientBoosting with native categorical support on the raw "
             "columns, its iterations chosen on validation (regression: a constant variance from validation), the goal's "
             "comparator; `hgb-100` the same at scikit-learn's default 100 iterations (for reference); "
             "`oracle` the generating distribution (complete inputs, so below what any model can reach on average).",
             "", "| table | rows | teacher | student | run's baseline | onehot-mlp | hgb | hgb-100 | oracle | "
             "teacher <= onehot-mlp + 0.02 | teacher <= hgb + 0.05 | student <= teacher + 0.02 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m, g, ok = r["mean"], r["goals"], r["seeds_met"]
        n = len(r["seeds"])
        cells = [r["table"], str(r["seeds"][0]["rows"])]
        cells += [f"{m[k]:.4f}" if k in m else "-" for k in ("teacher", "student", "baseline", "onehot_mlp", "hgb",
                                                              "hgb_default", "oracle")]
        cells += [f"{verdict(v)}; {ok[k]}/{n} seeds" for k, v in g.items()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Margins: the mean's distance to the goal's bound (met by x: x below the bound).", "",
              "## Per seed", "", "| table | seed | teacher | student | run's baseline | onehot-mlp (best epoch) | "
              "hgb (iterations) | hgb-100 | oracle | teacher acc/RMSE | student acc/RMSE | onehot-mlp acc/RMSE | hgb acc/RMSE | "
              "bdk run seconds |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r["seeds"]:
            sec = f"{s['seconds']:.0f}" if s.get("seconds") else "(reused)"
            lines.append(f"| {r['table']} | {s['seed']} | {s['teacher']:.4f} | {s['student']:.4f} | {s['baseline']:.4f} | "
                         f"{s['onehot_mlp']:.4f} ({s['onehot_mlp_epochs']}) | {s['hgb']:.4f} ({s['hgb_iterations']}) | "
                         f"{s['hgb_default']:.4f} | {'-' if s['oracle'] is None else format(s['oracle'], '.4f')} | "
                         f"{s['teacher_score']:.4f} | {s['student_score']:.4f} | {s['onehot_mlp_score']:.4f} | "
                         f"{s['hgb_score']:.4f} | {sec} |")
    if serving:
        lines += ["", "## Serving: `bdk predict` on raw rows, seen against unseen category (seed-0 runs)", "",
                  "The raw test rows (text categories, empty cells as they are) through `bdk predict RUN/teacher/export` "
                  "and `RUN/student/export`; then the same rows with one categorical column set to a value absent from "
                  "the train split (encoded as its `<oov>` bucket). Mean epistemic output over the rows (teacher: 10 "
                  "fresh weight draws per call of its serving signature, so the figure varies between calls; also its "
                  "`predictive_seeded` signature with 100 draws, seed 0, loaded in-process; student: its epistemic "
                  "head).", "",
                  "| table | column = unseen value | rows | teacher output | teacher seen | teacher unseen | "
                  "teacher seen (100 draws) | teacher unseen (100 draws) | student seen | student unseen |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in serving:
            lines.append(f"| {name} | {s['column']} = {s['unseen_value']} | {s['rows']} | {s['teacher_output']} | "
                         f"{s['teacher_seen']:.5f} | {s['teacher_unseen']:.5f} | {s['teacher100_seen']:.5f} | "
                         f"{s['teacher100_unseen']:.5f} | {s['student_seen']:.5f} | {s['student_unseen']:.5f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tables", default=",".join(TABLES))
    p.add_argument("--runs", type=Path, default=Path("/tmp/bdk-mixed"))
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "mixed")
    p.add_argument("--reuse", action="store_true", help="reuse finished run folders in --runs")
    p.add_argument("--no-serving", action="store_true")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    a.runs.mkdir(parents=True, exist_ok=True)
    results, serving = [], []
    for name in a.tables.split(","):
        path = table_file(name, a.runs)
        per_seed = []
        for seed in seeds:
            run, seconds = run_pipeline(name, path, seed, a.runs, a.reuse)
            data = load_run(run, path)
            fig = run_figures(run, data)
            hidden = json.loads((run / "teacher" / "config.json").read_text())["teacher"]["hidden"]
            mlp, tree = onehot_mlp(data, seed, hidden), hgb(data, seed)
            score = "accuracy" if data["meta"]["task"] == "classification" else "rmse"
            row = {"table": name, "seed": seed, "rows": sum(len(v) for v in data["ids"].values()),
                   "split": {k: len(v) for k, v in data["ids"].items()}, "seconds": seconds,
                   "teacher": fig["teacher"], "student": fig["student"], "baseline": fig["baseline"],
                   "teacher_score": fig[f"teacher_{score}"], "student_score": fig[f"student_{score}"],
                   "onehot_mlp": mlp["nll"], "onehot_mlp_score": mlp[score], "onehot_mlp_epochs": mlp["epochs"],
                   "hgb": tree["nll"], "hgb_score": tree[score], "hgb_iterations": tree["iterations"],
                   "hgb_default": tree["default_nll"], "hgb_default_score": tree[f"default_{score}"],
                   "oracle": oracle_nll(name, data), "teacher_nll_recomputed": fig["teacher_check"],
                   "features": data["meta"]["encoded_features"], "run": str(run)}
            per_seed.append(row)
            log(f"{name} seed {seed}: teacher {row['teacher']:.4f} student {row['student']:.4f} onehot-mlp "
                f"{row['onehot_mlp']:.4f} hgb {row['hgb']:.4f}" + (f" ({seconds:.0f} s)" if seconds else ""))
            if seed == seeds[0] and not a.no_serving:
                serving.append((name, serving_check(name, run, data, a.runs)))
        results.append(summarise(name, per_seed))
    command = "PYTHONPATH=. .venv/bin/python bench/bench_mixed.py --seeds " + a.seeds + (
        f" --tables {a.tables}" if a.tables != ",".join(TABLES) else "")
    text = markdown(results, serving, command, seeds)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "mixed.md").write_text(text)
    (a.out / "mixed.json").write_text(json.dumps({"command": command, "seeds": seeds, "results": results,
                                                  "serving": dict(serving)}, indent=1, default=float) + "\n")
    log(f"wrote {a.out / 'mixed.md'} and {a.out / 'mixed.json'}")


if __name__ == "__main__":
    main()

"""The evaluation stage: teacher vs student vs baseline, from their SavedModels alone.

Everything here is computed from the exports (loaded with plain `tf.saved_model.load`), the
run's data split and the soft-label dataset, so it measures what would be deployed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from distill import data as data_lib
from distill import inputs as inputs_lib
from distill import metrics, schema, tasks
from distill.errors import BdkError, atomic_dir, read_json, write_csv, write_json
from distill.features import encoding_spec
from distill.transfer import FAR_SHELL_INNER, FAR_SHELL_OUTER, FAR_SHELL_ROWS

REFERENCE_ROW_DRAWS = 2_000_000  # rows x draws of the OOD reference (500 far-shell rows: 2,000 draws each)
REFERENCE_SEED = 1  # the reference's draws: the evaluation's seed + this, independent of the teacher's own
REFERENCE_WEIGHTS = 50_000_000  # ...and at most this many sampled weights in all (the export samples a call's draws up
# front: 2,000 draws of the 1M run's (128, 128) teacher hold 48M of them, +120-170 MB of the evaluation's peak)


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 100  # teacher draws on val/test/OOD
    # The teacher's side of the student's agreement on the OOD rows: a nearly exact predictive, this many draws (at
    # most reference_draws allows). Off the data the teacher's draws disagree, and two `samples`-draw estimates
    # of its predictive differ by a KL the size of the goal (digits' far shell: 0.046 at 100 draws).
    reference_samples: int = 2000
    ood_rows: int = FAR_SHELL_ROWS  # far-away uniform inputs
    ood_inner: float = FAR_SHELL_INNER  # OOD rows lie outside the train box widened by this (box widths)...
    ood_outer: float = FAR_SHELL_OUTER  # ...and inside the box widened by this
    ood_file: str | None = None  # instead of far-away uniform inputs: a .csv/.parquet of real OOD rows
    bootstrap: int = 1000  # resamples; fewer on large splits (at most `bootstrap_rows` resampled rows in all)
    bootstrap_rows: int = 20_000_000
    region_rows: int = 20_000  # at most this many transfer rows per source scored (a seeded uniform draw)
    latency_calls: int = 200
    seed: int = 0


from bdk import report
from bdk.report import EXPORTED, MODELS  # the report owns the model list: evaluate imports report, never the reverse
from distill.training import in_chunks


def ood_inputs(cfg: EvalConfig, ds: data_lib.Dataset) -> np.ndarray:
    """The OOD examples (raw, flat): those of `cfg.ood_file` (tables: the teacher's raw columns, encoded as in
    training, or its encoded ones; sequences: a long table with its channels), else the inputs' default OOD set
    (distill.inputs: far-away uniform rows for a table, a shifted regime for sequences)."""
    if cfg.ood_file is None:
        return ds.inputs.default_ood(ds, cfg.ood_rows, cfg.ood_inner, cfg.ood_outer, cfg.seed)
    what = f"OOD file {cfg.ood_file}"
    return ds.inputs.read(data_lib.read_table(cfg.ood_file), what,
                          lambda table: (None, _ood_rows(table, ds, what), None, None), label_column=ds.label_column)[1]


def _ood_rows(table: pd.DataFrame, ds: data_lib.Dataset, what: str) -> np.ndarray:
    """A table's OOD rows -> raw x [n, F]: its raw columns encoded as in training, or the encoded ones (rows with a
    non-finite value dropped)."""
    spec = ds.feature_spec
    if encoding_spec(spec) is not None and all(c in table.columns for c in spec.raw_columns):
        return spec.encode(table, f"{what}: ")  # raw rows: text and empty cells, encoded as in training
    missing = [c for c in ds.feature_names if c not in table.columns]
    if missing:
        wanted = spec.raw_columns if spec is not None else ds.feature_names
        raise BdkError(f"{what} lacks the teacher's feature columns {missing[:5]}; give it the columns "
                       f"{wanted[:8]}{' ...' if len(wanted) > 8 else ''}")
    x = table[ds.feature_names].to_numpy(np.float32)
    return x[np.isfinite(x).all(axis=1)]


class Exports:
    """The three exports, called as a client would call them."""

    def __init__(self, run: Path, samples: int, task: tasks.Task, seed: int = 0, input_shape: tuple | None = None):
        import tensorflow as tf

        self.tf, self.samples, self.task, self.seed = tf, samples, task, seed
        self.input_shape = input_shape  # one example's shape when not flat (sequences: (T, C))
        paths = {"teacher": schema.teacher_export(run), "student": schema.student_export(run),
                 "baseline": schema.baseline_export(run)}
        for name, path in paths.items():
            if not (path / "saved_model.pb").exists():
                first = {"teacher": f"bdk teacher --out {run}", "student": f"bdk student --run {run}",
                         "baseline": f"bdk student --run {run}"}[name]
                raise BdkError(f"{run} has no {name} export at {path}; run `{first}` first")
        from distill.transfer import soft_labels_digest

        student_cfg = schema.student_dir(run) / "config.json"
        made_from = read_json(student_cfg).get("soft_labels_manifest") if student_cfg.exists() else None
        if made_from is not None and made_from != soft_labels_digest(run):
            raise BdkError(f"the student in {schema.student_dir(run)} was trained on other soft labels than those in "
                           f"{schema.soft_labels_dir(run)}; rerun `bdk student --run {run}`")
        self.paths = paths
        self.models = {name: tf.saved_model.load(str(p)) for name, p in paths.items()}

    def predict(self, name: str, x: np.ndarray, samples: int | None = None,
                seed: int | None = None) -> dict[str, np.ndarray]:
        """The task's outputs and the epistemic score (teacher: its epistemic output at `samples` draws and `seed`,
        default the evaluation's; student: its head), in row chunks. `x` is flat [n, F] (reshaped to the export's
        input) or already shaped."""
        x = np.asarray(x, np.float32)
        if self.input_shape and x.ndim == 2:
            x = x.reshape(len(x), *self.input_shape)
        draws = (samples or self.samples, self.seed if seed is None else seed)
        return in_chunks(lambda chunk: self._predict(name, chunk, *draws), x)

    def _predict(self, name: str, x: np.ndarray, samples: int, seed: int) -> dict[str, np.ndarray]:
        tf = self.tf
        features = tf.constant(x)
        if name == "teacher":
            sig = self.models[name].signatures
            if schema.SEEDED_SIGNATURE in sig:
                out = sig[schema.SEEDED_SIGNATURE](features=features, num_samples=tf.constant(samples),
                                               seed=tf.constant(seed, tf.int64))
            else:  # an export made before seeded signatures existed
                out = sig["predictive"](features=features, num_samples=tf.constant(samples))
            out = {k: v.numpy() for k, v in out.items()}
            out["epistemic"] = out[self.task.epistemic_output]
        else:
            out = {k: v.numpy() for k, v in self.models[name].signatures["serving_default"](features=features).items()}
        return out

    def cost(self, run: Path, calls: int, serving_samples: int) -> dict[str, dict]:
        """What one prediction costs, per way of serving: the teacher at its serving setting (`serving_default`,
        `serving_samples` draws) and at the evaluation's S draws, the student and the baseline SavedModels, and the
        student's TFLite file through LiteRT. Each: single-row latency p50/p95 (ms), rows/s at batch 1 and at
        batch COST_BATCH, FLOPs per row (dense networks), parameters."""
        tf = self.tf
        sig = lambda m: self.models[m].signatures  # noqa: E731
        fn = sig("student")["serving_default"]
        shape = self.input_shape or (int(fn.structured_input_signature[1]["features"].shape[1]),)
        flops = _flops_per_row(run)
        cost_batch = COST_BATCH if len(shape) == 1 else SEQUENCE_COST_BATCH
        teacher_s = (lambda x: sig("teacher")[schema.SEEDED_SIGNATURE](features=x, num_samples=tf.constant(self.samples),
                                                                   seed=tf.constant(self.seed, tf.int64))) \
            if schema.SEEDED_SIGNATURE in sig("teacher") else None
        servers = {"teacher": (lambda x: sig("teacher")["serving_default"](features=x), serving_samples),
                   f"teacher S={self.samples}": (teacher_s, self.samples),
                   "student": (lambda x: fn(features=x), None),
                   "baseline": (lambda x: sig("baseline")["serving_default"](features=x), None)}
        out, timed = {}, {}
        for name, (call, draws) in servers.items():
            if call is None:
                continue
            model = name.split()[0]
            run_call = lambda x, call=call: call(tf.constant(x))  # noqa: E731
            timed[name] = run_call
            out[name] = {**timing(run_call, shape, calls), "parameters": export_parameters(self.paths[model]),
                         "flops_per_row": (flops.get(model) * (draws or 1)) if flops.get(model) else None,
                         "draws": draws}
        tflite = schema.student_dir(run) / "student.tflite"
        if tflite.exists():
            from student.tflite import litert_runner

            runner = litert_runner(tflite)
            timed["student TFLite"] = lambda x: runner(features=x)
            out["student TFLite"] = {**timing(timed["student TFLite"], shape, calls), "bytes": tflite.stat().st_size,
                                     "parameters": out["student"]["parameters"], "flops_per_row": flops.get("student"),
                                     "draws": None}
        for name, rows_per_s in batch_throughput(timed, shape, cost_batch).items():
            out[name][f"rows_per_s_batch{cost_batch}"] = rows_per_s
        return out


COST_BATCH = 4096  # the large batch of the cost table
SEQUENCE_COST_BATCH = 256  # sequences: a recurrent teacher's 100 draws over 4096 sequences take seconds per call


BATCH_ROUNDS, BATCH_SECONDS = 25, 5.0  # the large batch's timed rounds: at least 3, more while under BATCH_SECONDS


def timing(call, shape: tuple, calls: int) -> dict[str, float]:
    """Single-row latency (p50/p95 over `calls`, after warm-up) and throughput at batch 1 of `call(x [n, *shape]
    float32)`."""
    one = np.zeros((1, *shape), np.float32)
    for _ in range(10):
        call(one)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call(one)
        times.append(time.perf_counter() - t0)
    return {"latency_ms_p50": 1e3 * float(np.median(times)), "latency_ms_p95": 1e3 * float(np.quantile(times, 0.95)),
            "rows_per_s_batch1": 1.0 / float(np.mean(times))}


def batch_throughput(calls: dict, shape: tuple, batch: int) -> dict[str, float]:
    """Rows/s of each `calls[name](x [batch, *shape])`, from the median of calls timed in rounds, each model's turn once
    per round: the machine's speed drifts (timed one model after the other, four calls each, the teacher / student ratio
    at 1M rows read 4.9x in one run and 6.0x in the next), and a drift then reaches every model alike. In its turn a
    model is called twice and the second call is timed: a call right after another model's pays for that model's
    footprint (the 1M student took 3.7 ms right after the 100-draw teacher, 2.7 ms on its own), which a server
    running one model does not."""
    many = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for call in calls.values():
        call(many)
    times: dict[str, list[float]] = {name: [] for name in calls}
    rounds, t_start = 0, time.perf_counter()
    while rounds < 3 or (rounds < BATCH_ROUNDS and time.perf_counter() - t_start < BATCH_SECONDS):
        for name, call in calls.items():
            call(many)
            t0 = time.perf_counter()
            call(many)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: batch / float(np.median(v)) for name, v in times.items()}


def _flops_per_row(run: Path) -> dict[str, int]:
    """FLOPs per row of one forward pass of each dense network (teacher: one weight draw), as the student stage
    recorded them (student.train; sequences' networks are not counted)."""
    m = read_json(schema.student_dir(run) / "metrics.json")
    flops = {"student": m.get("flops_per_row"), "baseline": m.get("flops_per_row"),  # the baseline has its widths
             "teacher": m.get("teacher_draw_flops_per_row")}
    return {k: v for k, v in flops.items() if v}


def export_parameters(export: Path) -> int:
    """Stored parameters of a SavedModel (a Flipout kernel counts its loc and its scale)."""
    import tensorflow as tf

    names = tf.train.list_variables(str(Path(export) / "variables" / "variables"))
    return int(sum(np.prod(shape) for name, shape in names if name.endswith("VARIABLE_VALUE") and "save_counter" not in name))


TRANSFER_REGIONS = ("perturbed", "interpolated", "uniform", "shell")  # transfer-set sources the report scores


def trust_by_region(task: tasks.Task, preds: dict) -> tuple[dict, dict, dict]:
    """Where distillation holds: per input region (test, each generated transfer source, the evaluation's OOD
    rows), the mean KL(teacher || student), top-1 agreement, Spearman of the epistemic scores, and how well each
    model tells the region from the test rows (AUROC, best of its total and epistemic scores; 0.5 = cannot).
    Where `preds["reference"]` has the region (the OOD rows), the teacher's side of the agreement is that nearly exact
    predictive, and `<region>/kl_teacher` is the KL of the evaluation's own teacher from it: its Monte Carlo error."""
    agreement, tracking, regions = {}, {}, {}
    for name in ("test", *TRANSFER_REGIONS, "ood"):
        if name not in preds["student"] or name not in preds["teacher"]:
            continue
        t, s = preds.get("reference", {}).get(name, preds["teacher"][name]), preds["student"][name]
        agreement[f"{name}/kl"] = float(task.divergence(t, s).mean())
        if t is not preds["teacher"][name]:
            agreement[f"{name}/kl_teacher"] = float(task.divergence(t, preds["teacher"][name]).mean())
        if "probs" in t:
            agreement[f"{name}/top1_agreement"] = float((t["probs"].argmax(-1) == s["probs"].argmax(-1)).mean())
        tracking[f"{name}/spearman"] = metrics.spearman(t["epistemic"], s["epistemic"])
        regions[name] = {"rows": int(len(t["epistemic"]))}
        if name != "test":
            for m in ("teacher", "student"):
                test = preds[m]["test"]
                regions[name][f"{m}_auroc"] = max(metrics.auroc(test[k], preds[m][name][k])
                                                  for k in (task.total_output, "epistemic"))
    return agreement, tracking, regions


def evaluated_dataset(cfg: EvalConfig, run: Path) -> data_lib.Dataset:
    """The run's dataset as the evaluation needs it: val and test. The default OOD rows of a table (far-away uniform,
    no --ood-file) also need the train box, read batch by batch without the train rows, or the train split itself
    when they take categories from its frequencies (far_uniform on a table that encodes)."""
    meta = data_lib.read_dataset_json(run)
    shell = cfg.ood_file is None and inputs_lib.from_meta(meta).has_shell
    train = shell and encoding_spec(data_lib.feature_spec(meta)) is not None
    ds = data_lib.load_from_run(run, data_lib.SPLITS if train else ("val", "test"))
    if shell and not train:
        ds.train_box = data_lib.train_box(run, ds)
    return ds


def evaluate_run(cfg: EvalConfig, run: Path, progress: bool = True) -> dict:
    """Compute the comparison, write RUN/report atomically, return metrics.json's content."""
    from tqdm.auto import tqdm

    run = Path(run)
    ds = evaluated_dataset(cfg, run)
    task = tasks.get(ds.task)

    steps = tqdm(total=5, desc="evaluate", unit="step", disable=None if progress else True, leave=False)
    steps.set_postfix_str("loading exports")
    exports = Exports(run, cfg.samples, task, cfg.seed, ds.input_shape)
    steps.update()
    steps.set_postfix_str("predicting")
    inputs = {"val": ds["val"].x, "test": ds["test"].x, "ood": ood_inputs(cfg, ds)}
    preds, fitted = predict_all(cfg, run, ds, task, exports, inputs)
    steps.update()
    steps.set_postfix_str("bootstrap intervals")
    out: dict = {"task": ds.task, "ood_set": ds.inputs.ood_name, **fitted, **score_all(cfg, ds, task, preds)}
    if ds.inputs.over_time:
        out["over_time"] = epistemic_over_time(exports, ds.normalise(inputs["test"]), ds.normalise(inputs["ood"]), ds)
    steps.update()
    steps.set_postfix_str("latency")
    serving = read_json(schema.teacher_dir(run) / "config.json").get("teacher", {}).get("serving_samples", 10)
    out["cost"] = exports.cost(run, cfg.latency_calls, serving)
    steps.update()
    steps.set_postfix_str("figures and report")
    out["config"] = cfg

    with atomic_dir(schema.report_dir(run), overwrite=True) as tmp:
        write_json(tmp / "metrics.json", out)
        for split in ("val", "test"):
            write_csv(side_by_side(ds, split, preds), tmp / f"{split}_predictions.csv")
        report.write(tmp, run, ds, preds, out)
    steps.update()
    steps.close()
    return out


def predict_all(cfg: EvalConfig, run: Path, ds: data_lib.Dataset, task, exports: Exports,
                inputs: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Every model's outputs on every input set: model -> input set -> outputs, plus {the baseline's validation-fitted
    temperature, the reference's draws}. `inputs` (val, test, ood) gains the transfer regions' rows, where the
    teacher's side is its soft labels (what the student matched); "reference" holds the teacher's nearly exact
    predictive on the OOD rows (EvalConfig.reference_samples draws, the agreement's teacher side there)."""
    from distill.transfer import encoded_inputs, output_arrays, sample_soft_labels

    preds: dict[str, dict[str, dict[str, np.ndarray]]] = {m: {} for m in MODELS}
    # source -> its rows of the soft labels, at most cfg.region_rows (a uniform draw, in file order), shard by shard
    regions = sample_soft_labels(run, TRANSFER_REGIONS, cfg.region_rows, cfg.seed)
    for src in TRANSFER_REGIONS:
        inputs[src] = encoded_inputs(regions[src], ds)
    for m in EXPORTED:
        for name, x in inputs.items():
            if len(x) and (m == "student" or name not in TRANSFER_REGIONS):  # teacher: soft labels there
                preds[m][name] = exports.predict(m, x)
    # The reference: tables only (sequences' OOD rows are a shifted regime, each row a whole recurrent pass), with
    # draws of its own (another seed) and more of them than the evaluation's, else none.
    ood = inputs["ood"]
    draws = reference_draws(cfg.reference_samples, len(ood), exports.paths["teacher"])
    table = ds.inputs.has_shell and len(ood) > 0 and draws > cfg.samples
    preds["reference"] = {"ood": exports.predict("teacher", ood, draws, cfg.seed + REFERENCE_SEED)} if table else {}
    temperature = task.fit_temperature(ds["val"].y, preds["baseline"]["val"])  # the validation split only
    preds["baseline_ts"] = {name: task.temperature_scaled(p, temperature) for name, p in preds["baseline"].items()}
    for src in TRANSFER_REGIONS:
        if src in preds["student"]:
            t = output_arrays(regions[src], task)
            preds["teacher"][src] = {**t, "epistemic": t[task.epistemic_output]}
    return preds, {"baseline_ts_temperature": temperature, "reference_samples": draws if table else None}


def reference_draws(cap: int, rows: int, teacher_export: Path) -> int:
    """Draws of a nearly exact teacher predictive on `rows` rows: at most `cap`, REFERENCE_ROW_DRAWS row-draws and
    REFERENCE_WEIGHTS sampled weights (the export samples a call's draws up front)."""
    weights = max(export_parameters(teacher_export) // 2, 1)  # a draw's (a Flipout kernel stores loc and scale)
    return min(cap, REFERENCE_ROW_DRAWS // max(rows, 1), REFERENCE_WEIGHTS // weights)


def score_all(cfg: EvalConfig, ds: data_lib.Dataset, task, preds: dict) -> dict:
    """Metrics with bootstrap intervals per model and split, agreement by region, OOD AUROCs."""
    out: dict = {}
    # The epistemic summary of the models that estimate it; the baselines get its keys, empty.
    epistemic = {m: task.uncertainty_summary(preds[m]["test"]) for m in ("teacher", "student")}
    for m in MODELS:
        out[m] = {}
        for split in ("test", "val"):
            resamples = max(100, min(cfg.bootstrap, cfg.bootstrap_rows // max(len(ds[split]), 1)))
            out[m].update(task.metrics_with_intervals(ds[split].y, preds[m][split], split, resamples, cfg.seed))
        out[m].update(epistemic.get(m) or dict.fromkeys(epistemic["teacher"]))
    out["agreement"], out["epistemic_tracking"], out["regions"] = trust_by_region(task, preds)
    total = task.total_output
    ood = {f"{m}/{total}_auroc": metrics.auroc(preds[m]["test"][total], preds[m]["ood"][total]) for m in MODELS}
    ood[f"teacher/{task.epistemic_output}_auroc"] = metrics.auroc(preds["teacher"]["test"]["epistemic"],
                                                                 preds["teacher"]["ood"]["epistemic"])
    ood["student/epistemic_auroc"] = metrics.auroc(preds["student"]["test"]["epistemic"], preds["student"]["ood"]["epistemic"])
    out["ood"] = ood
    return out


OVER_TIME_ROWS = 100  # sequences per set in the epistemic-over-time curves
OVER_TIME_POINTS = 12  # prefix lengths


def epistemic_over_time(exports: Exports, test: np.ndarray, ood: np.ndarray, ds: data_lib.Dataset) -> dict:
    """Sequences: the mean epistemic score of teacher and student on prefixes x[:, :t] of the test and the OOD
    sequences (the first OVER_TIME_ROWS of each), at OVER_TIME_POINTS lengths t: how the uncertainty builds up as
    the hidden state reads the sequence (the OOD ones switch regime halfway). Inputs normalised [n, T, C]."""
    length = ds.input_shape[0]
    steps = sorted({int(t) for t in np.linspace(1, length, OVER_TIME_POINTS).round()})
    out = {"steps": steps}
    for name, z in (("test", test), ("ood", ood)):
        raw = ds.scaler.inverse(z[:OVER_TIME_ROWS])  # [n, T, C]
        for m in ("teacher", "student"):
            out[f"{m}/{name}"] = [float(exports.predict(m, raw[:, :t])["epistemic"].mean()) for t in steps]
    return out


def side_by_side(ds: data_lib.Dataset, split: str, preds) -> pd.DataFrame:
    """Per-example outputs of the three models (vector outputs one column per class) and their KL."""
    s, task = ds[split], tasks.get(ds.task)
    df = pd.DataFrame({"id": s.ids, **task.truth_columns(s.y, ds.class_names)})
    for m in MODELS:
        p = preds[m][split]
        for name, values in task.point_columns(p, ds.class_names, m).items():
            df[name] = values
        if m in ("teacher", "student"):
            df[f"{m}_epistemic"] = p["epistemic"]
    df["kl_teacher_student"] = task.divergence(preds["teacher"][split], preds["student"][split])
    return df

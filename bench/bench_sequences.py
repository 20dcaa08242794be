"""The sequence benchmark: the Bayesian GRU teacher, its distilled students (causal conv and GRU) and their hard-label
baselines on the bundled sequence sets, over seeds; writes experiments/sequences/ (report.md, metrics.csv, figures).

    .venv/bin/python bench/bench_sequences.py --datasets italy_power,regimes --seeds 3 --out experiments/sequences

Per (dataset, seed): `bdk teacher` (brnn) and `bdk soft-labels` once, then `bdk student` with each student network
on copies of that run (the same soft labels), and `bdk evaluate`. Resumable: a finished run is not redone. The table
pools the test rows of every seed (95% bootstrap intervals); OOD is the shifted regime (the test sequences switching
halfway to an unseen fast, large oscillation; distill.sequences.shifted_regime); AUROCs and latencies are seed means.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill  # noqa: E402,F401

from distill import metrics, schema  # noqa: E402
from distill.errors import read_json  # noqa: E402
from bdk.studies.benchmark import _ci  # noqa: E402  (the suite's "value [lo, hi]" cell)

NETS = ("conv", "gru")


def run_seed(dataset: str, seed: int, out: Path) -> None:
    from distill.data import DataConfig
    from bdk.evaluate import EvalConfig
    from bdk.pipeline import evaluate_stage, soft_labels_stage, student_stage, teacher_stage
    from distill.transfer import SoftLabelConfig, TransferConfig
    from student.config import StudentConfig
    from teacher.config import TeacherConfig

    base = out / "runs" / dataset / f"seed{seed}" / "teacher"
    if not (schema.teacher_dir(base) / "metrics.json").exists():
        teacher_stage(DataConfig(dataset=dataset, seed=seed), TeacherConfig(kind="brnn", seed=seed), base, overwrite=True,
                      progress=False)
    if not schema.soft_labels_manifest(base).exists():  # (delete RUN/soft_labels and the student runs to redo them)
        soft_labels_stage(SoftLabelConfig(TransferConfig(seed=seed)), base, progress=False)
    for net in NETS:
        run = base.parent / net
        if (schema.report_dir(run) / "metrics.json").exists():
            continue
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        student_stage(StudentConfig(gate=False, sequence_net=net, tflite=False, seed=seed), run, progress=False)
        evaluate_stage(EvalConfig(seed=seed), run, progress=False)


LATENCY_CALLS = 500


def measure_latency(datasets: list[str], seeds: int, out: Path) -> None:
    """Single-sequence latency of every finished run's exports again, one run at a time (run this on a quiet machine:
    the evaluation's own figure is taken while other runs train). Writes RUN/report/latency.json."""
    import json

    from distill import data as data_lib
    from distill import tasks
    from bdk.evaluate import Exports

    for d in datasets:
        for s in range(seeds):
            for net in NETS:
                run = out / "runs" / d / f"seed{s}" / net
                if (schema.report_dir(run) / "metrics.json").exists():
                    ds = data_lib.load_from_run(run)
                    exports = Exports(run, 10, tasks.get(ds.task), input_shape=ds.input_shape)
                    serving = read_json(schema.teacher_dir(run) / "config.json")["teacher"].get("serving_samples", 10)
                    cost = exports.cost(run, LATENCY_CALLS, serving)
                    (schema.report_dir(run) / "latency.json").write_text(json.dumps(cost, indent=2))


def _cost(run: Path, report: dict) -> dict:
    """The quiet re-measurement when there is one (measure_latency), else the evaluation's."""
    path = schema.report_dir(run) / "latency.json"
    return read_json(path) if path.exists() else report["cost"]


def summarise(datasets: list[str], seeds: int, out: Path) -> pd.DataFrame:
    from bdk.studies.classification import pooled_test

    rows = []
    for d in datasets:
        for net in NETS:
            runs = [out / "runs" / d / f"seed{s}" / net for s in range(seeds)]
            runs = [r for r in runs if (schema.report_dir(r) / "metrics.json").exists()]
            if not runs:
                continue
            reps = [read_json(schema.report_dir(r) / "metrics.json") for r in runs]
            for model in ("teacher", "student", "baseline"):
                if model == "teacher" and net != NETS[0]:
                    continue  # one teacher per seed: its row once
                probs, y = pooled_test(runs, model)
                row = {"dataset": d, "model": model if model == "teacher" else f"{net} {model}", "seeds": len(runs),
                       "rows": len(y), **metrics.classification_metrics_with_intervals(probs, y, "test", 1000, 0)}
                score = {"teacher": "teacher/mutual_information_auroc", "student": "student/epistemic_auroc",
                         "baseline": "baseline/entropy_auroc"}[model]
                row["shifted_auroc"] = float(np.mean([r["ood"][score] for r in reps]))
                row["shifted_auroc_entropy"] = float(np.mean([r["ood"][f"{model}/entropy_auroc"] for r in reps]))
                costs = [_cost(run, r)[model] for run, r in zip(runs, reps)]
                row["parameters"] = int(np.mean([c["parameters"] for c in costs]))
                row["latency_ms_p50"] = float(np.mean([c["latency_ms_p50"] for c in costs]))
                if model == "student":
                    row["kl_test"] = float(np.mean([r["agreement"]["test/kl"] for r in reps]))
                    row["kl_ood"] = float(np.mean([r["agreement"]["ood/kl"] for r in reps]))
                rows.append(row)
        seed0 = out / "runs" / d / "seed0" / NETS[0] / "report" / "epistemic_over_time.png"
        if seed0.exists():
            shutil.copy(seed0, out / f"epistemic_over_time_{d}.png")
    table = pd.DataFrame(rows)
    table.to_csv(out / "metrics.csv", index=False)
    (out / "report.md").write_text(markdown(table, seeds))
    return table


def markdown(table: pd.DataFrame, seeds: int) -> str:
    lines = ["# Sequence benchmark: Bayesian GRU teacher, distilled students", "",
             f"Seeds 0-{seeds - 1} asked for (each its own stratified split; `seeds`: those finished); test rows pooled over "
             "seeds, 95% bootstrap intervals. "
             "Shifted regime: the test sequences switching halfway to an unseen regime (teacher: AUROC by mutual "
             "information; student: by its epistemic output; baseline: by entropy). Latency: one sequence through "
             "`serving_default` (teacher: 10 draws), median, seed mean.", "",
             "Reproduce: `.venv/bin/python bench/bench_sequences.py --datasets "
             f"{','.join(table['dataset'].unique())} --seeds {seeds} --out experiments/sequences`", "",
             "| dataset | model | seeds | accuracy | NLL | ECE | Brier | shifted AUROC (by entropy) | parameters | latency ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['dataset']} | {r['model']} | {r['seeds']} | {_ci(r, 'accuracy')} | {_ci(r, 'nll')} | {_ci(r, 'ece')} | "
                     f"{_ci(r, 'brier')} | {r['shifted_auroc']:.3f} ({r['shifted_auroc_entropy']:.3f}) | {r['parameters']} | "
                     f"{r['latency_ms_p50']:.3f} |")
    lines += ["", "## Goals (issue 15)", ""]
    for d, rows in table.groupby("dataset", sort=False):
        t = rows[rows.model == "teacher"].iloc[0]
        for net in NETS:
            s, b = rows[rows.model == f"{net} student"], rows[rows.model == f"{net} baseline"]
            if s.empty:
                continue
            s, b = s.iloc[0], b.iloc[0]
            checks = [
                (f"teacher accuracy within 2 points of the {net} baseline", t["test/accuracy"] >= b["test/accuracy"] - 0.02,
                 f"{t['test/accuracy']:.3f} vs {b['test/accuracy']:.3f}"),
                (f"teacher NLL no worse than the {net} baseline's interval", t["test/nll"] <= b["test/nll_ci95"][1],
                 f"{t['test/nll']:.3f} vs upper {b['test/nll_ci95'][1]:.3f}"),
                (f"{net} student NLL within 0.02 of the teacher", s["test/nll"] <= t["test/nll"] + 0.02,
                 f"{s['test/nll']:.3f} vs {t['test/nll']:.3f}"),
                ("teacher shifted-regime AUROC (MI) >= 0.85", t["shifted_auroc"] >= 0.85, f"{t['shifted_auroc']:.3f}"),
                (f"{net} student AUROC >= teacher - 0.03", s["shifted_auroc"] >= t["shifted_auroc"] - 0.03,
                 f"{s['shifted_auroc']:.3f}"),
                (f"{net} student latency 5x below the teacher's", s["latency_ms_p50"] * 5 <= t["latency_ms_p50"],
                 f"{t['latency_ms_p50'] / s['latency_ms_p50']:.1f}x"),
            ]
            lines += [f"- {d}: {name}: **{'met' if ok else 'missed'}** ({why})" for name, ok, why in checks]
    lines += ["", "Epistemic uncertainty over time, seed 0 (conv student):", ""]
    lines += [f"![{d}](epistemic_over_time_{d}.png)" for d in table["dataset"].unique()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="italy_power,regimes")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("experiments/sequences"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--latency", action="store_true", help="re-measure every finished run's latency (quiet machine)")
    args = p.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for d, s in tqdm([(d, s) for d in datasets for s in range(args.seeds)], desc="sequence benchmark", unit="run"):
            run_seed(d, s, args.out)
    if args.latency:
        measure_latency(datasets, args.seeds, args.out)
    print(summarise(datasets, args.seeds, args.out).to_string())


if __name__ == "__main__":
    main()

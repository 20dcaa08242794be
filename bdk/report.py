"""Figures and report.md for the evaluation stage (matplotlib, headless Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from distill import metrics, schema, tasks  # noqa: E402
from distill.errors import read_json  # noqa: E402

# The evaluation's models, in its order. baseline_ts: the hard-label baseline with a temperature fitted on the
# validation split (Guo et al. 2017), the cheap peer a distilled student has to beat (computed from the baseline export).
MODELS = ("teacher", "student", "baseline", "baseline_ts")
EXPORTED = MODELS[:3]  # the models that have an export of their own
LEVELS = np.round(np.arange(0.05, 1.0, 0.05), 2)  # nominal central-interval levels (regression calibration)
COLORS = {"teacher": "tab:blue", "student": "tab:orange", "baseline": "tab:gray", "baseline_ts": "tab:green"}


def reliability_axes(ax, probs: np.ndarray, y: np.ndarray, label: str, color: str) -> None:
    b = metrics.reliability_bins(probs, y)
    centers = (b["edges"][:-1] + b["edges"][1:]) / 2
    filled = b["count"] > 0
    width = b["edges"][1] - b["edges"][0]
    ax.bar(centers[filled], b["accuracy"][filled], width=width, alpha=0.6, color=color, edgecolor="k", label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")


def figure_reliability(path: Path, ds, preds) -> None:
    y = np.r_[ds["val"].y, ds["test"].y]
    fig, axes = plt.subplots(1, len(MODELS), figsize=(4 * len(MODELS), 4), sharey=True)
    for ax, m in zip(axes, MODELS):
        probs = np.r_[preds[m]["val"]["probs"], preds[m]["test"]["probs"]]
        reliability_axes(ax, probs, y, m, COLORS[m])
        ax.set_title(f"{m}: ECE {metrics.ece(probs, y):.3f} (val+test, n={len(y)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_rejection(path: Path, ds, preds) -> None:
    y = np.r_[ds["val"].y, ds["test"].y]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m in MODELS:
        probs = np.r_[preds[m]["val"]["probs"], preds[m]["test"]["probs"]]
        ent = np.r_[preds[m]["val"]["entropy"], preds[m]["test"]["entropy"]]
        f, acc = metrics.accuracy_vs_rejection(probs, y, ent)
        ax.plot(f, acc, "o-", color=COLORS[m], label=m)
    ax.set(xlabel="fraction rejected (highest predictive entropy first)", ylabel="accuracy on kept rows",
           title="Accuracy vs rejection by predictive entropy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_teacher_training(path: Path, history: pd.DataFrame, kind: str = "flipout") -> None:
    """The ELBO's terms per epoch and, for a Flipout teacher, its posterior scales against optimiser steps."""
    if "member" in history:  # a deep ensemble: one history per member, averaged by epoch
        history = history.groupby("epoch", as_index=False).mean(numeric_only=True)
    penalty = "kl_weight * KL / N_train" if kind == "flipout" else "L2 penalty (weight decay)"
    scales = "sigma_median" in history
    fig, axes = plt.subplots(1, 3 if scales else 2, figsize=(16 if scales else 11, 4))
    x, xlabel = (history["step"], "optimiser step") if "step" in history else (history["epoch"], "epoch")
    a, b = axes[0], axes[1]
    a.plot(x, history["train_nll"], label="train NLL (one draw)")
    a.plot(x, history["val_nll"], label="val NLL (MC predictive, fixed draws)")
    a.set(xlabel=xlabel, ylabel="nats per example", title="Teacher likelihood term")
    a.legend()
    b.plot(x, history["kl"], color="tab:red")
    b.set(xlabel=xlabel, ylabel=penalty, title="Teacher KL term" if kind == "flipout" else "Teacher regulariser", yscale="log")
    if scales:
        c = axes[2]
        c.fill_between(x, history["sigma_p10"], history["sigma_p90"], alpha=0.3, label="posterior sigma, 10-90%")
        c.plot(x, history["sigma_median"], label="posterior sigma, median")
        for col in [k for k in history.columns if k.startswith("prior_scale_")]:
            c.plot(x, history[col], "--", lw=1, label=f"prior scale, layer {col.rsplit('_', 1)[1]}")
        c.set(xlabel=xlabel, ylabel="scale", yscale="log", title="Posterior and (empirical-Bayes) prior scales")
        c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ood_label(cfg, default_set: str = "far-away uniform") -> str:
    """The OOD set's name: the given file's, else the inputs' default set (distill.inputs: `ood_name`)."""
    return f"OOD ({Path(cfg.ood_file).name if cfg.ood_file else default_set})"


def figure_over_time(path: Path, over_time: dict) -> None:
    """Sequences: the mean epistemic score on prefixes of in-regime (test) and shifted sequences, teacher and student."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, m in zip(axes, ("teacher", "student")):
        ax.plot(over_time["steps"], over_time[f"{m}/test"], "o-", label="test (in regime)")
        ax.plot(over_time["steps"], over_time[f"{m}/ood"], "o-", label="shifted regime (from the middle on)")
        ax.set(xlabel="time steps read", ylabel="mean mutual information (nats)" if m == "teacher" else "mean epistemic output",
               title=f"{m}: epistemic uncertainty over time")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_coverage(path: Path, ds, preds) -> None:
    """Regression calibration: observed coverage of the central Gaussian intervals vs their nominal level."""
    y = np.r_[ds["val"].y, ds["test"].y]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for m in MODELS:
        mean = np.r_[preds[m]["val"]["mean"], preds[m]["test"]["mean"]]
        variance = np.r_[preds[m]["val"]["variance"], preds[m]["test"]["variance"]]
        ax.plot(LEVELS, metrics.interval_coverage(y, mean, variance, LEVELS), "o-", color=COLORS[m], label=m)
    ax.set(xlabel="nominal level of the central interval", ylabel=f"observed coverage (val+test, n={len(y)})",
           xlim=(0, 1), ylim=(0, 1), title="Interval calibration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_uncertainty(path: Path, preds, ood: str, total: str = "entropy") -> None:
    panels = [("teacher", total), ("teacher", "epistemic"), ("student", total), ("student", "epistemic")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (m, key) in zip(axes, panels):
        both = np.r_[preds[m]["test"][key], preds[m]["ood"][key]]
        bins = np.linspace(0, max(float(both.max()), 1e-6), 30)
        # stepfilled: one polygon per histogram instead of a patch per bar (a fraction of the drawing time)
        ax.hist(preds[m]["test"][key], bins=bins, alpha=0.6, density=True, label="test", histtype="stepfilled")
        ax.hist(preds[m]["ood"][key], bins=bins, alpha=0.6, density=True, label=ood, histtype="stepfilled")
        name = {"entropy": "predictive entropy", "variance": "predictive variance",
                "epistemic": ("mutual information" if total == "entropy" else "epistemic variance") if m == "teacher"
                else "epistemic output"}[key]
        ax.set(title=f"{m}: {name}", xlabel="nats" if total == "entropy" else "target units²")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: float, ci: list[float] | None = None) -> str:
    return f"{v:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def calibration_verdict(out: dict, n_test: int) -> str:
    t, s = out["teacher"], out["student"]
    dn, de = s["test/nll"] - t["test/nll"], s["test/ece"] - t["test/ece"]
    kl = out["agreement"].get("test/kl", float("nan"))
    kept = dn <= 0.02 and (de <= 0.02 or s["test/ece"] <= t["test/ece_ci95"][1])
    verdict = "kept" if kept else "did not keep"
    return (
        f"The student {verdict} the teacher's calibration on the test split: its NLL is {s['test/nll']:.4f} against the "
        f"teacher's {t['test/nll']:.4f} ({dn:+.4f} nats) and its ECE {s['test/ece']:.4f} against {t['test/ece']:.4f} "
        f"({de:+.4f}), with a mean KL(teacher || student) of {kl:.4f} nats and top-1 agreement of "
        f"{out['agreement'].get('test/top1_agreement', float('nan')):.0%}. The baseline trained on hard labels only scores "
        f"NLL {out['baseline']['test/nll']:.4f} and ECE {out['baseline']['test/ece']:.4f}, and "
        f"{out['baseline_ts']['test/nll']:.4f} and {out['baseline_ts']['test/ece']:.4f} after temperature scaling: the student reproduces the "
        f"teacher, so it is as well (or as poorly) calibrated as the teacher is. With "
        f"{n_test} test rows the intervals are wide; read NLL and Brier before ECE."
    )


def _regression_sections(ds, out: dict) -> list[str]:
    lines = [f"# Bayesian dark knowledge report: {ds.source}", "",
             f"Regression of {ds.label_column}. Test split: {len(ds['test'])} rows, validation: {len(ds['val'])} rows. "
             f"Teacher: Monte Carlo predictive with {out['config'].samples} weight draws (its Gaussian moment match). "
             "NLL in nats per row in the target's units (the UCI tables' log-likelihood is its negative); coverage of the "
             "central 95% interval. Intervals: 95% bootstrap.", "",
             "## Accuracy and calibration on test", "", "| model | RMSE | NLL | 95% interval coverage |", "|---|---|---|---|"]
    for m in MODELS:
        r = out[m]
        lines.append(f"| {m} | " + " | ".join(_fmt(r[f"test/{k}"], r[f"test/{k}_ci95"]) for k in ("rmse", "nll", "coverage_95")) + " |")
    lines += ["", "Validation split:", "", "| model | RMSE | NLL | 95% coverage |", "|---|---|---|---|"]
    for m in MODELS:
        lines.append(f"| {m} | " + " | ".join(_fmt(out[m][f"val/{k}"]) for k in ("rmse", "nll", "coverage_95")) + " |")
    t, s = out["teacher"], out["student"]
    lines += ["", f"Epistemic share of the predictive variance on test (mean over rows): teacher "
              f"{t['test/mean_epistemic_share']:.3f}, student (epistemic head / variance) {s['test/mean_epistemic_share']:.3f}; "
              "the rest is the heteroscedastic noise (aleatoric).", "", "![calibration](calibration.png)"]
    return lines


REGION_NAMES = {"test": "test rows", "perturbed": "perturbed training rows (transfer)",
                "interpolated": "between training rows (transfer)", "uniform": "widened training box (transfer)",
                "shell": "far shell (transfer's own draws)", "ood": "evaluation's OOD rows (never trained on)"}


def _trust_section(out: dict, task) -> list[str]:
    """Where the student is trustworthy: per input region, how closely it reproduces the teacher, and whether
    it still tells that region from the test rows as well as the teacher does."""
    a, t, regions = out["agreement"], out["epistemic_tracking"], out.get("regions", {})
    top1 = "probs" in task.outputs
    lines = ["", "## Where the student is trustworthy", "",
             "Per input region: mean KL(teacher ‖ student) in nats, " + ("top-1 agreement, " if top1 else "")
             + f"Spearman of the teacher's {task.epistemic_output.replace('_', ' ')} and the student's epistemic score, and "
             "AUROC of each model telling that region's rows from the test rows (the better of its total and epistemic "
             "scores). On transfer regions the teacher's side is its soft labels; on the evaluation's OOD rows its "
             + (f"predictive with {out['reference_samples']} draws, nearly exact" if out.get("reference_samples") else
                "predictive") + ". A student AUROC well below the teacher's marks where its uncertainty cannot be "
             "trusted.", "",
             "| region | rows | KL | " + ("top-1 | " if top1 else "") + "Spearman | teacher AUROC | student AUROC |",
             "|---|---|---|" + ("---|" if top1 else "") + "---|---|---|"]
    for name, label in REGION_NAMES.items():
        if f"{name}/kl" not in a:
            continue
        r = regions.get(name, {})
        auroc = [f"{r[k]:.3f}" if k in r else "n/a" for k in ("teacher_auroc", "student_auroc")]
        lines.append(f"| {label} | {r.get('rows', '')} | {a[f'{name}/kl']:.4f} | "
                     + (f"{a[f'{name}/top1_agreement']:.3f} | " if top1 else "")
                     + f"{t[f'{name}/spearman']:.3f} | {auroc[0]} | {auroc[1]} |")
    if "ood/kl_teacher" in a:
        lines += ["", f"The Monte Carlo error of the teacher's own {out['config'].samples}-draw predictive on the OOD rows, "
                  f"as a KL from that reference: {a['ood/kl_teacher']:.4f} nats (a student that copied it exactly would "
                  "score this)."]
    return lines


def _ood_and_tail_sections(out: dict, task) -> list[str]:
    """OOD detection (by the total uncertainty and by the epistemic score), then the figures, the teacher's
    training and the cost: the same for every task, named by the task's outputs."""
    o, total, epistemic = out["ood"], task.total_output, task.epistemic_output
    by = {"entropy": "entropy", "variance": "predictive variance"}[total]
    name = epistemic.replace("_", " ")
    over_time = ["The epistemic score on prefixes of the sequences (the shifted ones switch regime halfway):", "",
                 "![epistemic over time](epistemic_over_time.png)", ""] if "over_time" in out else []
    ood = ood_label(out["config"], out.get("ood_set", "far-away uniform"))[5:-1]
    return ["", f"## Out-of-distribution detection (test vs {ood} inputs)", "",
            f"| model | AUROC by {by} | AUROC by epistemic score |", "|---|---|---|",
            f"| teacher | {o[f'teacher/{total}_auroc']:.3f} | {o[f'teacher/{epistemic}_auroc']:.3f} ({name}) |",
            f"| student | {o[f'student/{total}_auroc']:.3f} | {o['student/epistemic_auroc']:.3f} (its epistemic output) |",
            f"| baseline | {o[f'baseline/{total}_auroc']:.3f} | n/a |",
            f"| baseline_ts | {o[f'baseline_ts/{total}_auroc']:.3f} | n/a |", "",
            f"baseline_ts is the hard-label baseline with a temperature of {out['baseline_ts_temperature']:.3f} fitted on the "
            "validation split (its NLL, shrunk towards 1 on few rows; Guo et al. 2017): what a plain network gets from "
            "post-hoc calibration, without a teacher.", "",
            "![uncertainty](uncertainty_test_vs_ood.png)", "", *over_time,
            "## Teacher training", "", "![teacher training](teacher_training.png)", "", *_cost_section(out)]


def write(out_dir: Path, run: Path, ds, preds, out: dict) -> None:
    task = tasks.get(ds.task)
    kind = read_json(schema.teacher_dir(run) / "config.json")["teacher"].get("kind", "flipout")
    figure_teacher_training(out_dir / "teacher_training.png", pd.read_csv(schema.teacher_dir(run) / "history.csv"), kind)
    figure_uncertainty(out_dir / "uncertainty_test_vs_ood.png", preds, ood_label(out["config"], ds.inputs.ood_name),
                       task.total_output)
    if "over_time" in out:
        figure_over_time(out_dir / "epistemic_over_time.png", out["over_time"])
    if not task.has_classes:  # a predictive density: coverage instead of reliability over classes
        figure_coverage(out_dir / "calibration.png", ds, preds)
        lines = _regression_sections(ds, out) + _trust_section(out, task) + _ood_and_tail_sections(out, task)
        (out_dir / "report.md").write_text("\n".join(lines) + "\n")
        return
    figure_reliability(out_dir / "reliability.png", ds, preds)
    figure_rejection(out_dir / "accuracy_vs_rejection.png", ds, preds)

    lines = [f"# Bayesian dark knowledge report: {ds.source}", "",
             f"Test split: {len(ds['test'])} rows, validation: {len(ds['val'])} rows, classes: {', '.join(ds.class_names)}. "
             f"Teacher: Monte Carlo predictive with {out['config'].samples} weight draws. Intervals: 95% bootstrap.", "",
             "## Calibration on test", "",
             "| model | accuracy | NLL | ECE (15 bins) | Brier |", "|---|---|---|---|---|"]
    for m in MODELS:
        r = out[m]
        lines.append(f"| {m} | " + " | ".join(_fmt(r[f"test/{k}"], r[f"test/{k}_ci95"]) for k in ("accuracy", "nll", "ece", "brier")) + " |")
    lines += ["", "Validation split:", "", "| model | accuracy | NLL | ECE | Brier |", "|---|---|---|---|---|"]
    for m in MODELS:
        r = out[m]
        lines.append(f"| {m} | " + " | ".join(_fmt(r[f"val/{k}"]) for k in ("accuracy", "nll", "ece", "brier")) + " |")
    if ds.source == "iris":
        lines += ["", "Published on Iris, for scale (docs/references.md in the project): TensorFlow's walkthrough reaches 96.7% "
                  "test accuracy; repeated 5-fold CV of small scikit-learn classifiers gives accuracy 0.955-0.965, NLL "
                  "0.09-0.15 nats, 10-bin ECE 0.04-0.11, Brier 0.055-0.071."]
    lines += ["", calibration_verdict(out, len(ds['test'])), "", "![reliability](reliability.png)", "",
              "![accuracy vs rejection](accuracy_vs_rejection.png)"]
    lines += _trust_section(out, task) + _ood_and_tail_sections(out, task)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def _cost_section(out: dict) -> list[str]:
    """Cost per way of serving (bdk.evaluate.Exports.cost): latency, throughput, FLOPs per row."""
    cost = out["cost"]
    big = next((k for k in next(iter(cost.values())) if k.startswith("rows_per_s_batch") and k != "rows_per_s_batch1"),
               "rows_per_s_batch4096")
    lines = ["## Cost of one prediction", "",
             f"| export | draws | parameters | FLOPs per row | latency p50 (ms) | latency p95 (ms) | rows/s at batch 1 | "
             f"rows/s at batch {big.removeprefix('rows_per_s_batch')} |", "|---|---|---|---|---|---|---|---|"]
    for name, c in cost.items():
        flops = f"{c['flops_per_row']:,}" if c.get("flops_per_row") else "n/a"
        lines.append(f"| {name} | {c.get('draws') or 1} | {c['parameters']:,} | {flops} | {c['latency_ms_p50']:.3f} | "
                     f"{c['latency_ms_p95']:.3f} | {c['rows_per_s_batch1']:,.0f} | {c[big]:,.0f} |")
    s, t = cost.get("student"), cost.get("teacher")
    if s and t:
        lines += ["", f"The student answers {t['latency_ms_p50'] / s['latency_ms_p50']:.1f}x faster than the teacher's "
                  f"serving setting for one row and serves {s[big] / t[big]:.1f}x more rows/s at the large batch"
                  + (f"; its FLOPs per row are {t['flops_per_row'] / s['flops_per_row']:.1f}x fewer." if s.get("flops_per_row")
                     and t.get("flops_per_row") else ".")]
    if "student TFLite" in cost:
        lines += ["", f"Student TFLite file: {cost['student TFLite']['bytes']:,} bytes, run through the LiteRT interpreter."]
    lines += ["", "Latency: one row per call, in-process, after warm-up. Batch 4096: the models timed in rounds, each "
              "once per round, the second of two calls in a row (median over the rounds). A teacher draw costs one "
              "forward pass of its network (FLOPs counted from the dense layers' widths, 2 per multiply-add)."]
    return lines

"""Studies users run to decide whether a Bayesian teacher is worth deploying.

- `kl_weight_study`: the Flipout teacher at several KL weights over several seeds, each distilled.
- `teachers_study`: Flipout vs deep ensemble vs MC dropout, each with its distilled student.
- `digits_study`: the same comparison on a shifted benchmark (train on digits 0-4, 5-9 are OOD).

Every configuration is a full pipeline run (`bdk.pipeline.run_all`) in `OUT/runs/<name>`; the
studies read back each run's report and use the same metric functions as the pipeline's report.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from distill import metrics, schema
from distill.data import DataConfig
from distill.errors import BdkError, atomic_dir, read_json, write_json
from bdk.evaluate import EvalConfig  # noqa: E402
from distill.transfer import SoftLabelConfig
from student.config import StudentConfig
from teacher.config import TABLE_KINDS, TeacherConfig



@dataclass(frozen=True)
class StudyConfig:
    """Settings shared by every run of a study (the pipeline defaults unless said otherwise)."""

    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    soft_labels: SoftLabelConfig = SoftLabelConfig()
    student: StudentConfig = StudentConfig(gate=False, tflite=False)  # studies keep every student: they compare, they do not deploy
    evaluation: EvalConfig = EvalConfig()


def _run(cfg: StudyConfig, out: Path, seed: int) -> Path:
    from bdk.pipeline import run_all, with_seed

    # The transfer set keeps its own seed here (the studies' figures were made so); the benchmark seeds it too.
    run_all(with_seed(cfg.data, seed), with_seed(cfg.teacher, seed), cfg.soft_labels, with_seed(cfg.student, seed),
            with_seed(cfg.evaluation, seed), out, overwrite=True, progress=False)
    return out


def pooled_test(runs: list[Path], model: str) -> tuple[np.ndarray, np.ndarray]:
    """Test predictions of `model` pooled over runs (each run has its own seed and split)."""
    probs, labels = [], []
    for run in runs:
        df = pd.read_csv(schema.report_dir(run) / "test_predictions.csv")
        classes = read_json(schema.data_dir(run) / "dataset.json")["class_names"]
        probs.append(df[[f"{model}_prob_{c}" for c in classes]].to_numpy())
        labels.append(df["true_class"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy())
    return np.concatenate(probs), np.concatenate(labels)


def reliability_band(probs: np.ndarray, y: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-bin accuracy with a 95% bootstrap band (rows resampled); NaN where a bin is empty."""
    rng = np.random.default_rng(seed)
    base = metrics.reliability_bins(probs, y)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        draws.append(metrics.reliability_bins(probs[idx], y[idx])["accuracy"])
    with warnings.catch_warnings():  # bins empty in every resample stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(np.array(draws), [0.025, 0.975], axis=0)
    return {**base, "lo": lo, "hi": hi}


def bands_overlap(a: dict, b: dict, tolerance: float = 0.02, min_count: int = 5) -> tuple[bool, list[int]]:
    """Whether two reliability curves overlap within their intervals widened by +-tolerance, in
    every bin that both populate with at least `min_count` rows; also the bins where they do not."""
    apart = []
    for i in range(len(a["count"])):
        if a["count"][i] >= min_count and b["count"][i] >= min_count:
            if a["lo"][i] - tolerance > b["hi"][i] + tolerance or b["lo"][i] - tolerance > a["hi"][i] + tolerance:
                apart.append(i)
    return not apart, apart


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- KL weight


def kl_weight_study(cfg: StudyConfig, weights: list[float], seeds: int, out: Path, progress: bool = True) -> dict:
    """Flipout teachers at each KL weight and seed, each distilled; reliability, metrics, verdict."""
    if not weights or min(weights) < 0:
        raise BdkError("--weights needs one or more KL weights >= 0, e.g. 0.25,1,4")
    if seeds < 1:
        raise BdkError("--seeds must be at least 1")
    out = Path(out)
    with atomic_dir(out, overwrite=True, marker=True) as tmp:
        runs: dict[float, list[Path]] = {w: [] for w in weights}
        jobs = [(w, s) for w in weights for s in range(seeds)]
        for w, s in tqdm(jobs, desc="kl-weight runs", unit="run", disable=None if progress else True):
            study = replace(cfg, teacher=replace(cfg.teacher, kind="flipout", kl_weight=w))
            runs[w].append(_run(study, tmp / "runs" / f"kl{w:g}-seed{s}", s))

        rows, bands = [], {}
        for w in weights:
            for model in ("teacher", "student"):
                probs, y = pooled_test(runs[w], model)
                m = metrics.classification_metrics_with_intervals(probs, y, "test")
                rows.append({"kl_weight": w, "model": model, "rows": len(y), **m})
                if model == "teacher":
                    bands[w] = reliability_band(probs, y)
        table = pd.DataFrame(rows)
        table.to_csv(tmp / "metrics.csv", index=False)

        lo_w, hi_w = min(weights), max(weights)
        overlap = {f"{a:g} vs {b:g}": bands_overlap(bands[a], bands[b]) for i, a in enumerate(weights) for b in weights[i + 1:]}
        null = all(ok for ok, _ in overlap.values())
        t = table[table["model"] == "teacher"].set_index("kl_weight")
        ece_better = t.loc[hi_w, "test/ece"] < t.loc[lo_w, "test/ece"]
        acc_kept = t.loc[hi_w, "test/accuracy_ci95"][1] >= t.loc[lo_w, "test/accuracy"]
        if null:
            verdict = (f"null: the teacher's reliability curves at KL weights {', '.join(f'{w:g}' for w in weights)} overlap "
                       "within their 95% bootstrap intervals widened by +-2% in every bin, so these runs give no evidence that a "
                       "larger KL weight improves calibration.")
        elif ece_better and acc_kept:
            verdict = (f"supported: the reliability curves separate, the teacher's ECE falls from {t.loc[lo_w, 'test/ece']:.3f} "
                       f"(weight {lo_w:g}) to {t.loc[hi_w, 'test/ece']:.3f} (weight {hi_w:g}) and accuracy stays within its interval.")
        else:
            verdict = (f"rejected: the reliability curves separate, but the larger KL weight gives ECE {t.loc[hi_w, 'test/ece']:.3f} "
                       f"against {t.loc[lo_w, 'test/ece']:.3f} and accuracy {t.loc[hi_w, 'test/accuracy']:.3f} against "
                       f"{t.loc[lo_w, 'test/accuracy']:.3f}.")
        lo_ci, hi_ci = t.loc[lo_w, "test/ece_ci95"], t.loc[hi_w, "test/ece_ci95"]
        if hi_ci[0] > lo_ci[1] or lo_ci[0] > hi_ci[1]:
            direction = "worse" if t.loc[hi_w, "test/ece"] > t.loc[lo_w, "test/ece"] else "better"
            verdict += (f" Beside the rule: the ECE intervals at weights {lo_w:g} and {hi_w:g} do not overlap "
                        f"({t.loc[lo_w, 'test/ece']:.3f} [{lo_ci[0]:.3f}, {lo_ci[1]:.3f}] vs {t.loc[hi_w, 'test/ece']:.3f} "
                        f"[{hi_ci[0]:.3f}, {hi_ci[1]:.3f}]): the larger weight is {direction} calibrated, because it moves "
                        "predictions to lower-confidence bins (see the histogram under the curves), not because the curves differ.")
        _kl_figures(tmp, weights, bands, runs)
        summary = {"weights": weights, "seeds": seeds, "verdict": verdict, "null": null,
                   "overlap": {k: {"overlap": ok, "bins_apart": apart} for k, (ok, apart) in overlap.items()}}
        write_json(tmp / "summary.json", summary)
        _kl_markdown(tmp, table, summary)
    return summary


def _kl_figures(out: Path, weights, bands, runs) -> None:
    plt = _plt()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1 / (len(weights) + 1) / 15
    for j, w in enumerate(weights):
        b = bands[w]
        centers = (b["edges"][:-1] + b["edges"][1:]) / 2
        ok = b["count"] > 0
        ax.plot(centers[ok], b["accuracy"][ok], "o-", label=f"KL weight {w:g}")
        ax.fill_between(centers[ok], b["lo"][ok], b["hi"][ok], alpha=0.2)
        hist.bar(b["edges"][:-1] + (j + 0.5) * width, b["count"], width=width, label=f"{w:g}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(ylabel="accuracy", title="Teacher reliability (test, pooled seeds, 95% bands)", xlim=(0, 1), ylim=(0, 1.02))
    hist.set(xlabel="confidence", ylabel="rows per bin")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reliability_by_kl_weight.png", dpi=110)
    plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for w in weights:
        h = pd.concat([pd.read_csv(schema.teacher_dir(r) / "history.csv") for r in runs[w]]).groupby("epoch").mean()
        a.plot(h.index, h["train_nll"], label=f"{w:g}")
        b.plot(h.index, h["kl"], label=f"{w:g}")
    a.set(xlabel="epoch", ylabel="nats per example", title="Likelihood term (train NLL), mean over seeds")
    b.set(xlabel="epoch", ylabel="kl_weight * KL / N_train", title="KL term, mean over seeds", yscale="log")
    a.legend(title="KL weight"), b.legend(title="KL weight")
    fig.tight_layout()
    fig.savefig(out / "elbo_terms_by_kl_weight.png", dpi=110)
    plt.close(fig)


def _ci(row, key) -> str:
    lo, hi = row[f"{key}_ci95"]
    return f"{row[key]:.4f} [{lo:.3f}, {hi:.3f}]"


def _kl_markdown(out: Path, table: pd.DataFrame, summary: dict) -> None:
    lines = ["# KL-weight study", "",
             f"Flipout teacher at KL weights {', '.join(f'{w:g}' for w in summary['weights'])}, {summary['seeds']} seeds each "
             "(each seed its own split); test rows pooled over seeds; 95% bootstrap intervals.", "",
             "| KL weight | model | rows | accuracy | NLL | ECE | Brier |", "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['kl_weight']:g} | {r['model']} | {r['rows']} | {_ci(r, 'test/accuracy')} | {_ci(r, 'test/nll')} | "
                     f"{_ci(r, 'test/ece')} | {_ci(r, 'test/brier')} |")
    lines += ["", f"**Verdict** (null if the reliability curves overlap within +-2% of their intervals): {summary['verdict']}", "",
              "![reliability](reliability_by_kl_weight.png)", "", "![ELBO terms](elbo_terms_by_kl_weight.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


# ---------------------------------------------------------------- teacher families


def teachers_study(cfg: StudyConfig, out: Path, kinds: tuple[str, ...] = TABLE_KINDS, title: str = "Teacher families",
                   progress: bool = True) -> pd.DataFrame:
    """Each teacher family and its distilled student, on the same split: one table, one figure."""
    out = Path(out)
    with atomic_dir(out, overwrite=True, marker=True) as tmp:
        rows = []
        for kind in tqdm(kinds, desc="teachers", unit="run", disable=None if progress else True):
            run = _run(replace(cfg, teacher=replace(cfg.teacher, kind=kind)), tmp / "runs" / kind, cfg.data.seed)
            rep = read_json(schema.report_dir(run) / "metrics.json")
            tm = read_json(schema.teacher_dir(run) / "metrics.json")
            sm = read_json(schema.student_dir(run) / "metrics.json")
            for model, epi, seconds in (("teacher", "teacher/mutual_information_auroc", tm["train_seconds"]),
                                        ("student", "student/epistemic_auroc", sm["train_seconds"])):
                r = rep[model]
                rows.append({"teacher_kind": kind, "model": model, "accuracy": r["test/accuracy"], "nll": r["test/nll"],
                             "ece": r["test/ece"], "brier": r["test/brier"],
                             "ood_auroc_entropy": rep["ood"][f"{model}/entropy_auroc"], "ood_auroc_epistemic": rep["ood"][epi],
                             "train_seconds": seconds, "latency_ms_p50": rep["cost"][model]["latency_ms_p50"],
                             "parameters": rep["cost"][model]["parameters"]})
        table = pd.DataFrame(rows)
        table.to_csv(tmp / "metrics.csv", index=False)
        _teachers_figure(tmp / "teachers.png", table, title)
        lines = [f"# {title}", "", f"Dataset: {Path(cfg.data.dataset).name}, seed {cfg.data.seed}. OOD: "
                 + (f"rows of {Path(cfg.evaluation.ood_file).name}" if cfg.evaluation.ood_file else "far-away uniform inputs")
                 + ". Epistemic score: mutual information for teachers, the epistemic head for students.", "",
                 "| teacher | model | accuracy | NLL | ECE | Brier | OOD AUROC (entropy) | OOD AUROC (epistemic) | train s | latency ms | params |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in table.iterrows():
            lines.append(f"| {r['teacher_kind']} | {r['model']} | {r['accuracy']:.3f} | {r['nll']:.4f} | {r['ece']:.4f} | {r['brier']:.4f} | "
                         f"{r['ood_auroc_entropy']:.3f} | {r['ood_auroc_epistemic']:.3f} | {r['train_seconds']:.1f} | "
                         f"{r['latency_ms_p50']:.3f} | {r['parameters']} |")
        lines += ["", "![teachers](teachers.png)", ""]
        (tmp / "report.md").write_text("\n".join(lines))
    return table


def _teachers_figure(path: Path, table: pd.DataFrame, title: str) -> None:
    plt = _plt()
    cols = ["accuracy", "nll", "ece", "brier", "ood_auroc_entropy", "ood_auroc_epistemic"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.6))
    kinds = list(dict.fromkeys(table["teacher_kind"]))
    x = np.arange(len(kinds))
    for ax, col in zip(axes, cols):
        for j, model in enumerate(("teacher", "student")):
            vals = table[table["model"] == model].set_index("teacher_kind").loc[kinds, col]
            ax.bar(x + (j - 0.5) * 0.38, vals, width=0.38, label=model)
        ax.set_xticks(x, kinds, rotation=20)
        ax.set_title(col)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- shifted digits


def digits_files(out: Path) -> tuple[Path, Path]:
    """scikit-learn's bundled 8x8 digits (1797 rows, offline) as two CSVs: digits 0-4, digits 5-9."""
    from sklearn.datasets import load_digits

    d = load_digits(as_frame=True)
    df = d.data.copy()
    df.columns = [f"pixel_{i}" for i in range(df.shape[1])]
    df.insert(0, "id", np.arange(1, len(df) + 1))
    df["digit"] = d.target.to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    inside, outside = out / "digits_0-4.csv", out / "digits_5-9.csv"
    df[df["digit"] <= 4].to_csv(inside, index=False)
    df[df["digit"] >= 5].drop(columns=["digit"]).to_csv(outside, index=False)
    return inside, outside


def digits_study(cfg: StudyConfig, out: Path, kinds: tuple[str, ...] = TABLE_KINDS, progress: bool = True) -> pd.DataFrame:
    out = Path(out)
    inside, outside = digits_files(out.parent / f".{out.name}-data")
    study = replace(cfg, data=replace(cfg.data, dataset=str(inside), label_column="digit", id_column="id"),
                    evaluation=replace(cfg.evaluation, ood_file=str(outside)))
    table = teachers_study(study, out, kinds, "Shifted digits: trained on 0-4, digits 5-9 as OOD", progress)
    import shutil

    shutil.rmtree(inside.parent, ignore_errors=True)
    return table

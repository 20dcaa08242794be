"""The UCI regression benchmark: Bayes by Backprop teacher and its distilled student over 20 splits.

Protocol of Hernandez-Lobato & Adams (2015): random 90/10 train/test splits, inputs and target
z-scored on the training part, test log-likelihood and RMSE in the target's units reported as mean
+- standard error over splits. Each split is an ordinary regression run folder (OUT/runs/split-XX)
made by the pipeline's own stages (bdk.pipeline):

    teacher_stage (data split i, seed + i) -> soft_labels_stage (the Beam job on the training inputs
    + Gaussian-perturbed copies) -> student_stage (no gate: the study compares, it does not deploy)

and the study writes OUT/report.md (table beside the published figures), OUT/splits.csv (one row
per split), OUT/summary.json, OUT/config.json and figures (predictive intervals, interval
calibration, ELBO terms per epoch). OUT is written atomically: a failed study leaves nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from distill import metrics, schema
from distill.data import DataConfig
from distill.errors import BdkError, atomic_dir, write_json
from distill.transfer import SoftLabelConfig, TransferConfig
from student.config import StudentConfig
from teacher.config import TeacherConfig

UCI_DATASETS = ("boston", "concrete")

# Published test RMSE / log-likelihood (docs/references.md), shown beside ours, never targets.
PUBLISHED = {
    "boston": {
        "PBP": (3.01, -2.57), "MC dropout": (2.97, -2.46), "deep ensembles": (3.28, -2.41),
        "VI (Graves)": (None, -2.90), "SGLD (BDK)": (None, -2.306), "distilled SGLD (BDK)": (None, -2.350),
    },
    "concrete": {"PBP": (5.67, -3.16), "MC dropout": (5.23, -3.04), "deep ensembles": (6.03, -3.06)},
}
LEVELS = np.round(np.arange(0.05, 1.0, 0.05), 2)  # nominal central-interval levels for the calibration figure


@dataclass(frozen=True)
class UciStudyConfig:
    dataset: str = "boston"
    test_fraction: float = 0.1  # the benchmark's 90/10
    val_fraction: float = 0.1  # of the training part: early stopping, never the test rows
    seed: int = 0  # split i uses seed + i
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=lambda: StudentConfig(gate=False, tflite=False))
    # Transfer set: the training inputs plus 10 copies with N(0, 0.05^2) noise in the normalised input space
    # (Korattikara et al. 2015 on Boston); no uniform points.
    soft_labels: SoftLabelConfig = field(default_factory=lambda: SoftLabelConfig(
        TransferConfig(perturbations=10, noise=(0.05,), interpolations=0, uniform=0, shell=0), samples=100))

    def __post_init__(self):
        if self.dataset not in UCI_DATASETS:
            raise BdkError(f"unknown UCI dataset {self.dataset!r}; choose one of {', '.join(UCI_DATASETS)}")


def study_config(dataset: str, seed: int = 0, epochs: int | None = None, kl_weight: float | None = None,
                 samples: int | None = None, student_epochs: int | None = None) -> UciStudyConfig:
    """The defaults with the CLI's overrides (None keeps the default). Raises BdkError on bad values
    before TensorFlow loads."""
    base = UciStudyConfig()
    teacher = {k: v for k, v in (("epochs", epochs), ("kl_weight", kl_weight), ("eval_samples", samples)) if v is not None}
    return replace(base, dataset=dataset, seed=seed, teacher=replace(base.teacher, **teacher),
                   student=replace(base.student, **({"epochs": student_epochs} if student_epochs is not None else {})),
                   soft_labels=replace(base.soft_labels, samples=samples or base.soft_labels.samples))


def run_split(cfg: UciStudyConfig, index: int, run: Path) -> dict:
    """One split end to end in its own run folder; returns its row of splits.csv."""
    from bdk.pipeline import soft_labels_stage, student_stage, teacher_stage

    seed = cfg.seed + index
    data = DataConfig(dataset=cfg.dataset, task="regression", test_fraction=cfg.test_fraction,
                      val_fraction=cfg.val_fraction, seed=seed)
    teacher = teacher_stage(data, replace(cfg.teacher, seed=seed), run, overwrite=True, progress=False)
    soft_labels_stage(replace(cfg.soft_labels, transfer=replace(cfg.soft_labels.transfer, seed=seed)), run, progress=False)
    student = student_stage(replace(cfg.student, seed=seed), run, progress=False)
    row = {"split": index, "n_train": teacher["n_train"]}
    row.update({f"teacher/{k}": v for k, v in teacher.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    row.update({k if k.startswith("student/") else f"student/{k}": v for k, v in student.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("baseline/")})
    for model in ("teacher", "student"):
        for split in ("val", "test"):
            row[f"{model}/{split}/log_likelihood"] = -row[f"{model}/{split}/nll"]
    row["teacher/test/log_likelihood_mixture"] = -teacher["test/nll_mixture"]
    row["gap/log_likelihood"] = row["student/test/log_likelihood"] - row["teacher/test/log_likelihood"]
    return row


def _predictions(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """Test predictions pooled over splits, for teacher and student."""
    return {model: pd.concat([pd.read_csv(getattr(schema, f"{model}_dir")(r) / "test_predictions.csv").assign(split=i)
                              for i, r in enumerate(runs)], ignore_index=True)
            for model in ("teacher", "student")}


def summarize_splits(per_split: pd.DataFrame) -> dict[str, tuple[float, float]]:
    keys = ["teacher/test/log_likelihood", "teacher/test/log_likelihood_mixture", "teacher/test/rmse",
            "student/test/log_likelihood", "student/test/rmse", "gap/log_likelihood", "teacher/val/log_likelihood",
            "student/val/log_likelihood", "teacher/epochs_run",
            "teacher/best_epoch", "student/best_epoch", "teacher/train_seconds", "student/train_seconds"]
    return {k: metrics.mean_and_standard_error(per_split[k]) for k in keys}


def uci_study(cfg: UciStudyConfig, splits: int, out: Path, progress: bool = True) -> dict:
    """Run `splits` splits, write the report folder OUT (replaced atomically). Returns the summary."""
    if splits < 2:
        raise BdkError(f"--splits must be at least 2 (a standard error needs two splits), got {splits}")
    out = Path(out)
    with atomic_dir(out, overwrite=True, marker=True) as tmp:
        write_json(tmp / "config.json", {"study": asdict(cfg), "splits": splits})
        rows, runs = [], []
        bar = tqdm(range(splits), desc=f"uci {cfg.dataset}", unit="split", disable=None if progress else True)
        for i in bar:
            runs.append(tmp / "runs" / f"split-{i:02d}")
            rows.append(run_split(cfg, i, runs[-1]))
            done = pd.DataFrame(rows)
            bar.set_postfix({"teacher LL": f"{done['teacher/test/log_likelihood'].mean():.3f}",
                             "student LL": f"{done['student/test/log_likelihood'].mean():.3f}"})
        per_split = pd.DataFrame(rows)
        per_split.to_csv(tmp / "splits.csv", index=False)
        stats = summarize_splits(per_split)
        predictions = _predictions(runs)
        coverage = {m: metrics.interval_coverage(p["y"].to_numpy(), p["mean"].to_numpy(), p["variance"].to_numpy(), LEVELS)
                    for m, p in predictions.items()}
        pd.DataFrame({"nominal": LEVELS, **{f"{m}_observed": c for m, c in coverage.items()}}).to_csv(
            tmp / "coverage.csv", index=False)
        _interval_figure(tmp / "intervals.png", predictions, cfg.dataset)
        _calibration_figure(tmp / "calibration.png", coverage, cfg.dataset)
        _elbo_figure(tmp / "elbo.png", runs, cfg.teacher.resolved("regression").kl_weight)
        summary = {"dataset": cfg.dataset, "splits": splits, "kl_weight": cfg.teacher.resolved("regression").kl_weight, **{k: list(v) for k, v in stats.items()},
                   "coverage_95": {m: float(c[LEVELS.tolist().index(0.95)]) for m, c in coverage.items()},
                   "published": PUBLISHED.get(cfg.dataset, {})}
        write_json(tmp / "summary.json", summary)
        (tmp / "report.md").write_text(report_markdown(cfg, summary))
    return summary


# ---------------------------------------------------------------- report


def _pm(value: tuple[float, float] | list[float], digits: int = 2) -> str:
    mean, se = value
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def results_table(summary: dict) -> list[str]:
    """The headline table: ours (mean ± s.e. over splits) beside the published figures."""
    published = summary["published"]
    head = ["", "BBB teacher (ours)", "student (ours)", *published]
    ll = ["test log-likelihood", _pm(summary["teacher/test/log_likelihood"]), _pm(summary["student/test/log_likelihood"]),
          *[f"{p[1]:.2f}" for p in published.values()]]
    rm = ["test RMSE", _pm(summary["teacher/test/rmse"]), _pm(summary["student/test/rmse"]),
          *[f"{p[0]:.2f}" if p[0] is not None else "–" for p in published.values()]]
    return ["| " + " | ".join(r) + " |" for r in (head, ["---"] * len(head), ll, rm)]


def report_markdown(cfg: UciStudyConfig, summary: dict) -> str:
    t = cfg.teacher.resolved("regression")
    s = cfg.student.resolved("regression", teacher_hidden=t.hidden)
    name = {"boston": "Boston housing", "concrete": "Concrete compressive strength"}[summary["dataset"]]
    gap = summary["gap/log_likelihood"]
    lines = [
        f"# UCI regression: {name}", "",
        f"{summary['splits']} random 90/10 train/test splits (Hernandez-Lobato & Adams 2015); inputs and target z-scored "
        "on the training part; a validation slice of "
        f"{cfg.val_fraction:.0%} of the training part for early stopping (no tuning on test rows). Test log-likelihood "
        "(nats per row) and RMSE in the target's units, mean ± standard error over splits.", "",
        *results_table(summary), "",
        f"- Teacher log-likelihood is that of the Gaussian with the Monte Carlo predictive's mean and total variance "
        f"({t.eval_samples} weight draws), what the export returns and the student learns. The mixture of the draws "
        f"(how MC dropout's figures are computed) gives {_pm(summary['teacher/test/log_likelihood_mixture'])}.",
        f"- Student minus teacher log-likelihood, paired per split: {_pm(gap, 3)} nats.",
        f"- Validation slices (where settings were chosen): teacher {_pm(summary['teacher/val/log_likelihood'])}, "
        f"student {_pm(summary['student/val/log_likelihood'])} nats.",
        f"- Coverage of the central 95% Gaussian interval on test rows (pooled): teacher "
        f"{summary['coverage_95']['teacher']:.1%}, student {summary['coverage_95']['student']:.1%}.",
        f"- Teacher: Flipout MLP {list(t.hidden)}, heteroscedastic Gaussian likelihood (a second output of the Bayesian "
        "last layer), "
        f"N(0, {t.prior_scale:g}²) prior, KL weight {t.kl_weight:g} (ELBO = NLL + {t.kl_weight:g} · KL / N_train), Adam "
        f"{t.learning_rate:g}, batch {t.batch_size}, up to {t.epochs} epochs (patience {t.patience}; ran "
        f"{_pm(summary['teacher/epochs_run'], 0)}, best epoch {_pm(summary['teacher/best_epoch'], 0)}).",
        f"- Soft labels: the Beam job (FnApiRunner, in-process) on the teacher's training inputs plus "
        f"{cfg.soft_labels.transfer.perturbations} copies each with N(0, {cfg.soft_labels.transfer.noise[0]:g}²) noise in the "
        f"normalised input space; {cfg.soft_labels.samples} draws per row.",
        f"- Student: deterministic MLP {list(s.hidden)} with a mean and a softplus variance output, loss "
        "0.5·[log s² + (var_t + (μ_t − μ_s)²)/s²] (expected Gaussian NLL under the teacher's predictive), Adam "
        f"{s.learning_rate:g} decayed along a cosine, batch {s.batch_size} (more on large transfer sets), up to {s.epochs} "
        "epochs, early-stopped on "
        + (f"its loss against the teacher on a held-out {s.holdout:.0%} of the transfer set."
           if s.monitor == "transfer" else "the validation NLL of the true targets.")
        + f" Best epoch {_pm(summary['student/best_epoch'], 0)}.", "",
        "## Figures", "",
        "Predictive intervals (mean ± 2 sd) on the test rows of split 0, sorted by the true value:", "",
        "![intervals](intervals.png)", "",
        "Calibration of the central intervals (observed coverage vs nominal level, test rows of all splits):", "",
        "![calibration](calibration.png)", "",
        "ELBO terms per epoch (training, mean over splits still running): likelihood (expected NLL per example) and "
        "KL weight · KL / N_train:", "",
        "![elbo](elbo.png)", "",
        "Per-split metrics: `splits.csv`; coverage per level: `coverage.csv`; each split's run folder: `runs/split-XX/` "
        "(teacher and student exports, soft labels, histories).", "",
    ]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interval_figure(path: Path, predictions: dict[str, pd.DataFrame], dataset: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, (model, df) in zip(axes, predictions.items()):
        d = df[df["split"] == 0].sort_values("y")
        k = np.arange(len(d))
        sd = np.sqrt(d["variance"].to_numpy())
        ax.fill_between(k, d["mean"] - 2 * sd, d["mean"] + 2 * sd, alpha=0.25, label="mean ± 2 sd")
        ax.plot(k, d["mean"], ".-", lw=0.8, label="predicted mean")
        ax.plot(k, d["y"], "k.", label="true")
        inside = (np.abs(d["y"] - d["mean"]) <= 2 * sd).mean()
        ax.set(title=f"{model}: {inside:.0%} of test rows inside", xlabel="test rows, sorted by true value")
    axes[0].set_ylabel(f"{dataset} target")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _calibration_figure(path: Path, coverage: dict[str, np.ndarray], dataset: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for model, c in coverage.items():
        ax.plot(LEVELS, c, "o-", label=model)
    ax.set(xlabel="nominal level of the central interval", ylabel="observed coverage (test)", xlim=(0, 1), ylim=(0, 1),
           title=f"{dataset}: interval calibration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _elbo_figure(path: Path, runs: list[Path], kl_weight: float) -> None:
    plt = _plt()
    h = pd.concat([pd.read_csv(schema.teacher_dir(r) / "history.csv") for r in runs]).groupby("epoch").mean()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(h.index, h["train_nll"], label="train: expected NLL")
    a.plot(h.index, h["val_nll"], label="validation NLL (predictive)")
    a.set(xlabel="epoch", ylabel="nats per example (normalised target)", title="Likelihood term")
    a.legend()
    b.plot(h.index, h["kl"])
    b.set(xlabel="epoch", ylabel=f"{kl_weight:g} · KL / N_train", title="KL term", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

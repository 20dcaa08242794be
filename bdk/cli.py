"""`bdk`: the command line. Each command parses options and forwards to one library function."""
from __future__ import annotations

import distill  # noqa: F401  (Keras 2, quiet TensorFlow: before anything imports it)

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from distill.errors import BdkError

app = typer.Typer(help="Bayesian dark knowledge: a Flipout teacher, Beam soft labels, a cheap calibrated student.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
console = Console(stderr=True)
DATASET_HELP = ("Bundled name (iris, wine, breast_cancer, digits, boston, concrete; sequences: italy_power, regimes), "
                "a .csv/.parquet file, an .npz of sequences, or hf:NAME.")
KIND_HELP = ("Teacher family: flipout | ensemble | mc-dropout | swag (tables), brnn (sequences: a Bayesian GRU); "
             "default flipout, or brnn for sequences.")
SERIES_HELP = ("Sequences: the series id column of a long table (one row per series and time step), which makes the "
               "dataset sequences (bundled italy_power and regimes, and .npz files, are sequences already).")
SEQUENCE_NET_HELP = ("Sequences: the student (and baseline) network, conv (causal 1-D convolutions, one pass) or gru "
                     "(a deterministic GRU).")
TASK_HELP = ("classification | regression (default: the bundled dataset's, else inferred: a numeric label with fractional "
             "values or more than 20 distinct integers is regression, anything else classification).")
LABEL_HELP = "Label column (default: the bundled dataset's, else 'label')."
ID_HELP = "Row id column (default: the bundled dataset's, id/Id/ID if present, else the row number)."
MISSING_HELP = ("Empty feature cells: impute (numeric: the train median plus a COL_missing 0/1 feature; categorical: a "
                "category of its own), drop (the rows), or refuse.")
DROP_MISSING_HELP = "Drop rows with empty or NaN cells (the same as --missing drop)."
CATEGORICAL_HELP = ("Feature columns to treat as categorical, comma-separated (default: inferred: text, or integer codes "
                    "with at most 10 distinct values).")
NUMERIC_HELP = "Feature columns to treat as numbers, comma-separated (overrides the inference)."
INTERPOLATION_SHARE_HELP = ("Interpolated points as a share of the training rows, at least --interpolations and the "
                            "share's part at most 200,000 (default 10 on tables of classes from 2,500 training rows, "
                            "else 0: --interpolations points).")
INTERPOLATION_PAIRS_HELP = ("Interpolation pairs: random (half of one class, half of any; the default) or neighbour (a row "
                            "and one of its nearest training rows in the normalised space).")
MAX_CATEGORIES_HELP = "A categorical column with more distinct train values than this is refused (drop or hash it)."


# The options several commands share, each declared once (typer reads the Annotated metadata).
DatasetOption = Annotated[Optional[str], typer.Option(help=DATASET_HELP)]
TaskOption = Annotated[Optional[str], typer.Option(help=TASK_HELP)]
KindOption = Annotated[Optional[str], typer.Option(help=KIND_HELP)]
SeriesOption = Annotated[Optional[str], typer.Option(help=SERIES_HELP)]
TimeOption = Annotated[Optional[str], typer.Option(help="Sequences: the long table's time column (default: time).")]
LabelOption = Annotated[Optional[str], typer.Option(help=LABEL_HELP)]
IdOption = Annotated[Optional[str], typer.Option(help=ID_HELP)]
MissingOption = Annotated[Optional[str], typer.Option(help=MISSING_HELP)]
DropMissingOption = Annotated[bool, typer.Option(help=DROP_MISSING_HELP)]
CategoricalOption = Annotated[Optional[str], typer.Option(help=CATEGORICAL_HELP)]
NumericOption = Annotated[Optional[str], typer.Option(help=NUMERIC_HELP)]
MaxCategoriesOption = Annotated[Optional[int], typer.Option(min=2, help=MAX_CATEGORIES_HELP)]
SeedOption = Annotated[Optional[int], typer.Option(help="Seed of splits, initialisers and draws (default 0).")]
NewRunOption = Annotated[Path, typer.Option("--out", help="Run folder to create.")]
OverwriteRunOption = Annotated[bool, typer.Option(help="Replace an existing run folder.")]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]
# The studies' small-budget overrides (each run of a study takes them).
StudyEpochsOption = Annotated[Optional[int], typer.Option(min=1, help="Teachers' maximum epochs; default by task.")]
StudySamplesOption = Annotated[Optional[int], typer.Option(min=2, help="Teacher weight draws (default 100).")]
StudyUniformOption = Annotated[Optional[int], typer.Option(min=0, help="Uniform transfer points (default 2000).")]
StudyStudentEpochsOption = Annotated[Optional[int], typer.Option(min=1, help="Students' maximum epochs (default 300).")]
# The transfer set's options (`bdk soft-labels`, `bdk run`). Defaults by table: distill.transfer.SMALL_TABLE_DEFAULTS on
# small class tables, else TABLE_DEFAULTS (tests/test_cli.py holds the help to them).
SMALL_TABLES = "class tables of fewer than 2,500 training rows"
PerturbationsOption = Annotated[Optional[int], typer.Option(
    help=f"Gaussian-perturbed copies of each training input (default 80 on {SMALL_TABLES}, else 10).")]
NoiseOption = Annotated[Optional[str], typer.Option(
    help="Perturbation noise stds, comma-separated, per feature in box widths (classes) or stds (regression); copy j "
         "uses the (j mod n)-th (default 0.05,0.2,0.5).")]
NoiseUnitOption = Annotated[Optional[str], typer.Option(
    help="Unit of --noise: box (per feature, the train box's width), std (per feature, the train std) or neighbour "
         "(the perturbation's length, in median nearest-neighbour distances); default by task.")]
InterpolationsOption = Annotated[Optional[int], typer.Option(
    help=f"Points between pairs of training inputs (default 40,000 on {SMALL_TABLES}, else 2,000; with "
         "--interpolation-share, at least this many).")]
InterpolationShareOption = Annotated[Optional[float], typer.Option(help=INTERPOLATION_SHARE_HELP)]
InterpolationPairsOption = Annotated[Optional[str], typer.Option(help=INTERPOLATION_PAIRS_HELP)]
UniformOption = Annotated[Optional[int], typer.Option(
    help="Points uniform over the training box widened on each side (`bdk soft-labels --margin`, default 0.1 box "
         "widths); default 2000.")]
UniformShareOption = Annotated[Optional[float], typer.Option(
    help="Uniform points as a share of the training rows, at least --uniform (default 0: --uniform points).")]
ShellOption = Annotated[Optional[int], typer.Option(
    help=f"Points in the far shell, box widths outside the training box (`bdk soft-labels --shell-inner/--shell-outer`, "
         f"default 0.25 to 3) (default 32,000 on {SMALL_TABLES}, else 2,000).")]
ShellShareOption = Annotated[Optional[float], typer.Option(
    help="Far-shell points as a share of the training rows, at least --shell (default 0: --shell points).")]


@app.callback()
def _root() -> None:
    """Bayesian dark knowledge: a Flipout teacher, Beam soft labels, a cheap calibrated student."""


def user_errors(fn: Callable) -> Callable:
    """Turn a BdkError into one line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.filterwarnings("ignore", module=r"tensorflow_probability.*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"tf_keras.*")
        logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes across runs of a study
        logging.getLogger("apache_beam").setLevel(logging.ERROR)  # optional GCP client notes
        try:
            return fn(*args, **kwargs)
        except BdkError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(1)

    return wrapper


def summary_table(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


NCP_HELP = ("Flipout classifier: weight of the noise-contrastive prior (logits ~ N(0, 3^2) across weight draws on "
            "training rows pushed off the data); 0 turns it off; default by task.")
NcpOption = Annotated[Optional[float], typer.Option(min=0.0, help=NCP_HELP)]


@app.command()
@user_errors
def teacher(
    out: NewRunOption,
    dataset: DatasetOption = None,
    task: TaskOption = None,
    kind: KindOption = None,
    series_column: SeriesOption = None,
    time_column: TimeOption = None,
    members: Optional[int] = typer.Option(None, min=2, help="Ensemble size (--kind ensemble; default 5)."),
    label_column: LabelOption = None,
    id_column: IdOption = None,
    missing: MissingOption = None,
    drop_missing: DropMissingOption = False,
    categorical: CategoricalOption = None,
    numeric: NumericOption = None,
    max_categories: MaxCategoriesOption = None,
    epochs: Optional[int] = typer.Option(None, min=1, help="Maximum epochs (early stopping on the validation NLL); default by task."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Default by task."),
    samples: Optional[int] = typer.Option(None, min=2, help="Monte Carlo weight draws for the evaluation (default 100)."),
    kl_weight: Optional[str] = typer.Option(None, help="Multiplier of the KL / N_train term of the ELBO, or `auto` "
                                            "(the best validation NLL of 0.01, 0.03, 0.1); default by task."),
    learning_rate: Optional[float] = typer.Option(None, min=0.0, help="Adam's; default by task."),
    learning_rate_decay: Optional[str] = typer.Option(None, help="Adam's rate: constant, or cosine (to 0 over the "
                                                      "budget); default by task (cosine for the Flipout classifier "
                                                      "from 32,000 training rows)."),
    patience: Optional[int] = typer.Option(None, min=1, help="Default by task."),
    ncp_weight: NcpOption = None,
    seed: SeedOption = None,
    overwrite: OverwriteRunOption = False,
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Stage 1: train the teacher (Flipout BNN, deep ensemble or MC dropout), evaluate by Monte Carlo, export."""
    from bdk.pipeline import teacher_stage
    from teacher.config import TeacherConfig

    data_cfg = _data_config(dataset=dataset, label_column=label_column, id_column=id_column, task=task,
                            drop_missing=drop_missing, missing=missing, categorical=categorical, numeric=numeric,
                            max_categories=max_categories, series_column=series_column, time_column=time_column,
                            seed=seed)
    cfg = TeacherConfig(**_given(kind=_kind(kind, data_cfg), members=members, epochs=epochs, batch_size=batch_size,
                                 eval_samples=samples, learning_rate=learning_rate, patience=patience,
                                 learning_rate_decay=learning_rate_decay, ncp_weight=ncp_weight, seed=seed), **_kl(kl_weight))
    s = teacher_stage(data_cfg, cfg, out, overwrite=overwrite, progress=progress)
    summary_table(f"teacher ({s['task']}, {s['kind']} on {s['device']}, {s['epochs_run']} epochs, best {s['best_epoch']})",
                  {k: v for k, v in s.items() if "/" in k})
    if "most_uncertain_pair" in s:
        a, b = s["most_uncertain_pair"]
        print(f"most epistemic uncertainty between {a} and {b} ({s['most_uncertain_pair_share']:.0%} of the mutual information)")
    print(f"export: {out / 'teacher' / 'export' / '1'}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def soft_labels(
    ctx: typer.Context,
    run: Path = typer.Option(..., "--run", help="Run folder with a trained teacher."),
    samples: Optional[int] = typer.Option(None, help=f"Teacher weight draws per row (at least 2; default 1000 on {SMALL_TABLES}, else 100)."),
    perturbations: PerturbationsOption = None,
    noise: NoiseOption = None,
    noise_unit: NoiseUnitOption = None,
    interpolations: InterpolationsOption = None,
    interpolation_share: InterpolationShareOption = None,
    interpolation_pairs: InterpolationPairsOption = None,
    interpolation_neighbours: Optional[int] = typer.Option(None, help="With --interpolation-pairs neighbour: the partner is "
                                                           "one of the row's this many nearest training rows (default 10)."),
    uniform: UniformOption = None,
    uniform_share: UniformShareOption = None,
    margin: Optional[float] = typer.Option(None, help="Widening of the training box for --uniform on each side, box widths (default 0.1)."),
    shell: ShellOption = None,
    shell_share: ShellShareOption = None,
    shell_inner: Optional[float] = typer.Option(None, help="Inner edge of the far shell, box widths outside the training box (default 0.25)."),
    shell_outer: Optional[float] = typer.Option(None, help="Outer edge of the far shell, box widths outside the training box (default 3)."),
    unlabeled: Optional[str] = typer.Option(None, help="Extra unlabeled rows: a .csv/.parquet with the teacher's feature columns "
                                             "(the raw columns, text and empty cells included: the run's encoding is applied)."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per teacher call in the Beam job (default 16384 at 100 draws; rows x draws at most 1,638,400)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the transfer set (default 0)."),
    progress: bool = typer.Option(True, help="Show a status line while the job runs."),
):
    """Stage 2: label a transfer set with the teacher's posterior predictive in an Apache Beam job.

    Beam pipeline options go after `--`, e.g. `-- --direct_running_mode=multi_processing --direct_num_workers=2`
    (default: the embedded FnApiRunner, no network).
    """
    from bdk.pipeline import soft_labels_stage
    from distill.transfer import SoftLabelConfig

    cfg = SoftLabelConfig(_transfer(perturbations=perturbations, noise=noise, noise_unit=noise_unit,
                                    interpolations=interpolations, interpolation_share=interpolation_share,
                                    interpolation_pairs=interpolation_pairs,
                                    interpolation_neighbours=interpolation_neighbours, uniform=uniform,
                                    uniform_share=uniform_share, margin=margin, shell=shell, shell_share=shell_share,
                                    shell_inner=shell_inner, shell_outer=shell_outer,
                                    unlabeled=unlabeled, seed=seed), **_given(samples=samples, batch_size=batch_size))
    out = soft_labels_stage(cfg, run, beam_options(ctx.args), progress=progress)
    from distill.errors import read_json

    m = read_json(out / "manifest.json")
    summary_table(f"soft labels: S={m['num_samples']}, {m['runner']}",
                  {**{f"rows/{s}": n for s, n in m["rows_per_source"].items()}, "rows": m["rows"],
                   "rows/s": round(m["rows_per_second"] or 0), "seconds": f"{m['job_seconds']:.1f}"})
    print(f"soft labels: {out} ({len(m['shards'])} shard(s))")


@app.command()
@user_errors
def student(
    run: Path = typer.Option(..., "--run", help="Run folder with a teacher and soft labels."),
    hidden: Optional[str] = typer.Option(None, help="Hidden layer sizes, comma-separated (e.g. 32 or 64,32), or auto (the "
                                         "best on a held-out slice of the transfer set among those costing at most one "
                                         "teacher weight draw per row); default: the teacher's widths."),
    temperature: Optional[float] = typer.Option(None, min=1e-3, help="Distillation temperature T (loss scaled by T^2; default 1)."),
    alpha: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Weight of the hard-label loss on labelled rows (default 0)."),
    uncertainty: Optional[str] = typer.Option(None, help="Student's epistemic score: ratio (a second head regressing the "
                                              "teacher's share of epistemic in its total uncertainty, served as that share "
                                              "of the student's own; the default for tables of classes), dirichlet (classes; "
                                              "the default for sequences), regressor (the teacher's score itself; the "
                                              "regression default), log_regressor or sqrt_regressor (its logarithm or "
                                              "square root)."),
    epistemic_weight: Optional[float] = typer.Option(None, min=0.0, help="Weight of the epistemic loss (the second head's MSE; default 1)."),
    sequence_net: Optional[str] = typer.Option(None, help=SEQUENCE_NET_HELP),
    epochs: Optional[int] = typer.Option(None, min=1, help="Maximum epochs (default 300)."),
    gate_nll_margin: Optional[float] = typer.Option(None, help="Allowed excess of student over teacher validation NLL (default 0.05)."),
    gate_ece_margin: Optional[float] = typer.Option(None, help="Allowed excess of student over teacher validation ECE (default 0.05)."),
    gate: bool = typer.Option(True, help="Refuse to publish a student worse calibrated than its teacher by more than "
                              "the margins (--no-gate publishes it anyway; the report still compares them)."),
    seed: SeedOption = None,
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Stage 3: distil the compact student (and a hard-label baseline) from the soft labels; gate; export."""
    from bdk.pipeline import student_stage
    from student.config import StudentConfig

    cfg = StudentConfig(**_hidden(hidden), **_given(temperature=temperature, alpha=alpha, uncertainty=uncertainty,
                                                    epistemic_weight=epistemic_weight, sequence_net=sequence_net,
                                                    epochs=epochs, gate_nll_margin=gate_nll_margin,
                                                    gate_ece_margin=gate_ece_margin, gate=gate, seed=seed))
    s = student_stage(cfg, run, progress=progress)
    summary_table(f"student ({s['epochs_run']} epochs, best {s['best_epoch']}; gate {'passed' if gate else 'off'})",
                  {k: v for k, v in s.items() if k.startswith(("student/", "baseline/"))})
    print(f"export: {run / 'student' / 'export' / '1'}")


@app.command()
@user_errors
def evaluate(
    run: Path = typer.Option(..., "--run", help="Run folder with teacher, soft labels and student."),
    samples: Optional[int] = typer.Option(None, min=2, help="Teacher weight draws (default 100)."),
    seed: SeedOption = None,
    progress: bool = typer.Option(True, help="Show progress."),
):
    """Compare calibration of teacher, student and baseline; write RUN/report (metrics, figures, report.md)."""
    from bdk.evaluate import EvalConfig
    from bdk.pipeline import evaluate_stage

    out = evaluate_stage(EvalConfig(**_given(samples=samples, seed=seed)), run, progress=progress)
    summary_table("evaluation (test)", _headline(out))
    print(f"report: {run / 'report' / 'report.md'}")


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def run_pipeline(
    ctx: typer.Context,
    out: NewRunOption,
    dataset: DatasetOption = None,
    task: TaskOption = None,
    label_column: LabelOption = None,
    id_column: IdOption = None,
    missing: MissingOption = None,
    drop_missing: DropMissingOption = False,
    categorical: CategoricalOption = None,
    numeric: NumericOption = None,
    max_categories: MaxCategoriesOption = None,
    kind: KindOption = None,
    series_column: SeriesOption = None,
    time_column: TimeOption = None,
    epochs: Optional[int] = typer.Option(None, min=1, help="Teacher's maximum epochs; default by task."),
    kl_weight: Optional[str] = typer.Option(None, help="Teacher's KL weight, or `auto`; default by task."),
    ncp_weight: NcpOption = None,
    samples: Optional[int] = typer.Option(None, min=2, help=f"Teacher weight draws for evaluation and soft labels (default 100; soft labels of {SMALL_TABLES} 1000)."),
    perturbations: PerturbationsOption = None,
    noise: NoiseOption = None,
    noise_unit: NoiseUnitOption = None,
    interpolations: InterpolationsOption = None,
    interpolation_share: InterpolationShareOption = None,
    interpolation_pairs: InterpolationPairsOption = None,
    uniform: UniformOption = None,
    uniform_share: UniformShareOption = None,
    shell: ShellOption = None,
    shell_share: ShellShareOption = None,
    student_epochs: Optional[int] = typer.Option(None, min=1, help="Student's maximum epochs (default 300)."),
    hidden: Optional[str] = typer.Option(None, help="Student hidden layer sizes, comma-separated, or auto; default: the "
                                         "teacher's widths (one teacher draw's cost per row)."),
    sequence_net: Optional[str] = typer.Option(None, help=SEQUENCE_NET_HELP),
    gate: bool = typer.Option(True, help="Refuse to publish a student worse calibrated than its teacher (see `bdk student`)."),
    seed: SeedOption = None,
    overwrite: OverwriteRunOption = False,
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """All stages: teacher -> soft labels (Beam) -> student -> evaluation, into one run folder. Beam options after --."""
    options = {k: v for k, v in locals().items() if k not in ("ctx", "out", "overwrite", "progress")}  # the stages'
    import time

    from bdk.pipeline import STAGES, run_all

    t0 = time.perf_counter()
    configs = _run_configs(**options)

    def announce(i: int, name: str) -> None:
        console.rule(f"[{i}/{len(STAGES)}] {name}  ({time.perf_counter() - t0:.0f} s)")

    s = run_all(*configs, out, overwrite=overwrite, beam_args=beam_options(ctx.args), progress=progress, announce=announce)
    rows = _headline(s["evaluate"])
    rows["wall seconds"] = time.perf_counter() - t0
    summary_table(f"bdk run: {configs[0].dataset}", rows)
    print(f"report: {out / 'report' / 'report.md'}")


experiment_app = typer.Typer(help="Studies: KL weight, teacher families, shifted digits.", no_args_is_help=True,
                               rich_markup_mode=None)
app.add_typer(experiment_app, name="experiment")


def _study(dataset: Optional[str], label_column: Optional[str], epochs: Optional[int], samples: Optional[int],
           uniform: Optional[int], student_epochs: Optional[int], id_column: Optional[str] = None):
    """A study's shared settings: the options given, StudyConfig's defaults for the rest."""
    from dataclasses import replace

    from bdk.studies.classification import StudyConfig

    base = StudyConfig()
    return replace(base, data=_data_config(dataset=dataset, label_column=label_column, id_column=id_column),
                   teacher=replace(base.teacher, **_given(epochs=epochs, eval_samples=samples)),
                   soft_labels=replace(base.soft_labels, transfer=_transfer(uniform=uniform), **_given(samples=samples)),
                   student=replace(base.student, **_given(epochs=student_epochs)),
                   evaluation=replace(base.evaluation, **_given(samples=samples)))


@experiment_app.command("kl-weight")
@user_errors
def experiment_kl_weight(
    out: Path = typer.Option(Path("experiments/kl-weight"), "--out", help="Report folder (replaced)."),
    dataset: DatasetOption = None,
    label_column: LabelOption = None,
    id_column: IdOption = None,
    weights: str = typer.Option("0.01,0.03,0.1,0.25,1,4", help="KL weights, comma-separated (default: the temperatures "
                                "--kl-weight auto chooses from, and the design's 0.25, 1, 4)."),
    seeds: int = typer.Option(5, min=1, help="Seeds per weight (each its own split)."),
    epochs: StudyEpochsOption = None, samples: StudySamplesOption = None, uniform: StudyUniformOption = None,
    student_epochs: StudyStudentEpochsOption = None, progress: ProgressOption = True,
):
    """Flipout teachers (and students) at several KL weights over seeds; reliability bands and a verdict."""
    try:  # before the study's imports (TensorFlow): a typo is an instant error line
        ws = [float(w) for w in weights.split(",") if w.strip()]
    except ValueError:
        raise BdkError(f"--weights {weights!r}: expected comma-separated numbers such as 0.25,1,4") from None
    from bdk.studies.classification import kl_weight_study

    s = kl_weight_study(_study(dataset, label_column, epochs, samples, uniform, student_epochs, id_column), ws, seeds, out, progress)
    print(s["verdict"])
    print(f"report: {out / 'report.md'}")


@experiment_app.command("teachers")
@user_errors
def experiment_teachers(
    out: Path = typer.Option(Path("experiments/teachers"), "--out", help="Report folder (replaced)."),
    dataset: DatasetOption = None,
    label_column: LabelOption = None,
    id_column: IdOption = None,
    epochs: StudyEpochsOption = None, samples: StudySamplesOption = None, uniform: StudyUniformOption = None,
    student_epochs: StudyStudentEpochsOption = None, progress: ProgressOption = True,
):
    """Flipout vs deep ensemble vs MC dropout teachers and their students: one table, one figure."""
    from bdk.studies.classification import teachers_study

    table = teachers_study(_study(dataset, label_column, epochs, samples, uniform, student_epochs, id_column), out, progress=progress)
    Console().print(table.round(4).to_string(index=False))
    print(f"report: {out / 'report.md'}")


@experiment_app.command("digits")
@user_errors
def experiment_digits(
    out: Path = typer.Option(Path("experiments/digits"), "--out", help="Report folder (replaced)."),
    epochs: StudyEpochsOption = None, samples: StudySamplesOption = None, uniform: StudyUniformOption = None,
    student_epochs: StudyStudentEpochsOption = None, progress: ProgressOption = True,
):
    """Shifted benchmark: 8x8 digits 0-4 in distribution, 5-9 as OOD; each teacher family and its student."""
    from bdk.studies.classification import digits_study

    table = digits_study(_study("digits", "digit", epochs, samples, uniform, student_epochs), out, progress=progress)
    Console().print(table.round(4).to_string(index=False))
    print(f"report: {out / 'report.md'}")


@experiment_app.command("uci")
@user_errors
def experiment_uci(
    dataset: str = typer.Option("boston", help="UCI regression dataset: boston | concrete."),
    splits: int = typer.Option(20, help="Random 90/10 train/test splits (at least 2)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (replaced); default experiments/uci-DATASET."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Teacher's maximum epochs (early stopping on a validation slice)."),
    kl_weight: Optional[float] = typer.Option(None, min=0.0, help="Teacher's KL weight (ELBO = NLL + w * KL / N_train)."),
    samples: Optional[int] = typer.Option(None, min=2, help="Teacher draws for the evaluation and per soft label."),
    student_epochs: Optional[int] = typer.Option(None, min=1, help="Student's maximum epochs."),
    seed: int = typer.Option(0, help="Split i uses seed + i."),
    progress: ProgressOption = True,
):
    """UCI regression benchmark: Bayes by Backprop teacher, Beam soft labels, mean-and-variance student.

    Options left out take the defaults of bdk.studies.uci.UciStudyConfig (written to OUT/config.json).
    """
    from bdk.studies.uci import study_config, uci_study

    cfg = study_config(dataset, seed=seed, epochs=epochs, kl_weight=kl_weight, samples=samples,
                       student_epochs=student_epochs)
    out = out or Path(f"experiments/uci-{dataset}")
    s = uci_study(cfg, splits, out, progress=progress)
    rows = {f"{m} test/{k}": "{:.3f} ± {:.3f}".format(*s[f"{m}/test/{k}"])
            for m in ("teacher", "student") for k in ("log_likelihood", "rmse")}
    summary_table(f"UCI {dataset}: {splits} splits (mean ± s.e.)", rows)
    print(f"report: {out / 'report.md'}")


@app.command("benchmark")
@user_errors
def benchmark_command(
    out: Path = typer.Option(Path("experiments/benchmark"), "--out", help="Report folder (resumable: finished runs are kept)."),
    datasets: str = typer.Option(",".join(("iris", "wine", "breast_cancer", "digits")), help="Bundled classification datasets."),
    seeds: int = typer.Option(3, min=1, help="Seeds per dataset (each its own split)."),
    kinds: str = typer.Option("flipout,ensemble", help="Teacher kinds, each distilled: flipout, ensemble, mc-dropout, swag."),
    held_out_class: bool = typer.Option(True, help="Also train each teacher without the last class (held-out-class OOD)."),
    doubling: bool = typer.Option(True, help="Also train the Flipout teacher with its step budget doubled (seed 0)."),
    ablation: bool = typer.Option(True, help="Also train the ablation of the teacher recipe (seed 0)."),
    student_ablation: bool = typer.Option(True, help="Also distil the students of the transfer-set and epistemic-output "
                                          "ablation (seed 0, Flipout)."),
    report_only: bool = typer.Option(False, help="Write the report from the finished runs; train nothing."),
    progress: ProgressOption = True,
):
    """The pipeline over a suite of offline datasets and seeds: Flipout and ensemble teachers, their students, the
    hard-label baseline; calibration with intervals, far-shell and held-out-class OOD, convergence and ablation."""
    from bdk.studies.benchmark import BenchmarkConfig, benchmark

    cfg = BenchmarkConfig(datasets=tuple(d.strip() for d in datasets.split(",") if d.strip()), seeds=seeds,
                          kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), held_out_class=held_out_class,
                          doubling=doubling, ablation=ablation, student_ablation=student_ablation)
    table = benchmark(cfg, out, progress=progress, report_only=report_only)
    Console().print(table[["dataset", "model", "test/accuracy", "test/nll", "test/ece", "far_shell_auroc"]].round(4)
                    .to_string(index=False))
    print(f"report: {out / 'report.md'}")


def beam_options(args: list[str]) -> list[str]:
    """The extra arguments, checked to be Beam pipeline options (a mistyped bdk option is refused,
    not passed to Beam, which would drop it with a warning)."""
    if not args:
        return []
    import difflib

    from apache_beam.options.pipeline_options import PipelineOptions

    if any("dask" in a.lower() for a in args):  # Dask's options register when its runner module is imported
        try:
            import apache_beam.runners.dask.dask_runner  # noqa: F401
        except ImportError:
            raise BdkError("the Dask runner needs dask and distributed: pip install 'dask[distributed]'") from None
    flags: set[str] = set()  # every option string of every registered option class, e.g. --dask_client_address
    PipelineOptions([]).get_all_options(add_extra_args_fn=lambda parser: flags.update(parser._option_string_actions))
    known = {f[2:] for f in flags if f.startswith("--")}
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name not in known and name.replace("-", "_") not in known:
                guess = difflib.get_close_matches(name, [*known, "samples", "student-epochs", "perturbations", "uniform",
                                                         "epochs", "seed", "noise", "unlabeled", "task"], n=1)
                hint = f" (did you mean --{guess[0]}?)" if guess else ""
                raise BdkError(f"unknown option {arg.split('=', 1)[0]}{hint}; Beam pipeline options go after `--`")
    return list(args)


def _kind(kind: Optional[str], data_cfg) -> str:
    """--kind, by default the inputs' teacher (distill.inputs: Flipout for tables, the Bayesian GRU for sequences)."""
    from distill.inputs import kind_of_source

    return kind or kind_of_source(data_cfg.dataset, data_cfg.series_column).default_teacher


def _kl(text: Optional[str]) -> dict:
    """--kl-weight: a number, `auto` (chosen on the validation NLL), or absent (the task's default)."""
    if text is None:
        return {}
    from teacher.config import KL_SEARCH

    if text.strip().lower() == "auto":
        return {"kl_weight_search": KL_SEARCH}
    try:
        value = float(text)
    except ValueError:
        raise BdkError(f"--kl-weight {text!r}: expected a number >= 0 or auto") from None
    return {"kl_weight": value}


def _run_configs(dataset, task, label_column, id_column, missing, drop_missing, categorical, numeric, max_categories,
                 kind, series_column, time_column, epochs, kl_weight, ncp_weight, samples, perturbations, noise,
                 noise_unit, interpolations, interpolation_share, interpolation_pairs, uniform, uniform_share, shell,
                 shell_share, student_epochs, hidden, sequence_net, gate, seed) -> tuple:
    """`bdk run`'s options -> the five stage configs (data, teacher, soft labels, student, evaluation); an option not
    given keeps its config's default."""
    from bdk.evaluate import EvalConfig
    from distill.transfer import SoftLabelConfig
    from student.config import StudentConfig
    from teacher.config import TeacherConfig

    data_cfg = _data_config(dataset=dataset, label_column=label_column, id_column=id_column, task=task,
                            drop_missing=drop_missing, missing=missing, categorical=categorical, numeric=numeric,
                            max_categories=max_categories, series_column=series_column, time_column=time_column,
                            seed=seed)
    teacher_cfg = TeacherConfig(**_given(kind=_kind(kind, data_cfg), epochs=epochs, eval_samples=samples, seed=seed,
                                         ncp_weight=ncp_weight), **_kl(kl_weight))
    soft_cfg = SoftLabelConfig(_transfer(perturbations=perturbations, noise=noise, noise_unit=noise_unit,
                                         interpolations=interpolations, interpolation_share=interpolation_share,
                                         interpolation_pairs=interpolation_pairs, uniform=uniform,
                                         uniform_share=uniform_share, shell=shell, shell_share=shell_share, seed=seed),
                               **_given(samples=samples))
    student_cfg = StudentConfig(**_hidden(hidden), **_given(epochs=student_epochs, gate=gate, sequence_net=sequence_net,
                                                            seed=seed))
    return data_cfg, teacher_cfg, soft_cfg, student_cfg, EvalConfig(**_given(samples=samples, seed=seed))


def _given(**values) -> dict:
    """The options the user gave (not None): the config dataclass supplies every other default (one home)."""
    return {k: v for k, v in values.items() if v is not None}


def _data_config(**options):
    """The data options shared by every command that reads a table -> DataConfig (options not given: its defaults)."""
    from distill.data import DataConfig

    return DataConfig(**_given(**options))


def _transfer(noise: Optional[str] = None, **given):
    """The transfer set's config from the options given (an option left out keeps TransferConfig's default)."""
    from distill.transfer import TransferConfig

    if noise is not None:
        try:
            given["noise"] = tuple(float(v) for v in noise.split(",") if v.strip())
        except ValueError:
            raise BdkError(f"--noise {noise!r}: expected comma-separated numbers such as 0.05 or 0.05,0.2,0.5") from None
    return TransferConfig(**_given(**given))


def _hidden(text: Optional[str]) -> dict:
    """--hidden: layer sizes, `auto` (chosen on the held-out transfer slice), or absent (the task's default)."""
    if text is None:
        return {}
    if text.strip().lower() == "auto":
        from student.config import HIDDEN_SEARCH

        return {"hidden_search": HIDDEN_SEARCH}
    return {"hidden": _sizes(text)}


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise BdkError(f"--hidden {text!r}: expected comma-separated layer sizes such as 32 or 64,32") from None
    if not sizes or min(sizes) < 1:
        raise BdkError(f"--hidden {text!r}: expected positive layer sizes such as 32 or 64,32")
    return sizes


def _headline(out: dict) -> dict:
    from distill import tasks

    task = tasks.get(out.get("task", "classification"))
    rows = {}
    for m in ("teacher", "student", "baseline"):
        for k in task.metric_names:
            rows[f"{m} test/{k}"] = out[m][f"test/{k}"]
    rows.update({f"agreement {k}": v for k, v in out["agreement"].items()})
    rows.update({f"ood {k}": v for k, v in out["ood"].items()})
    return rows


@app.command()
@user_errors
def serve(
    export_dir: Path = typer.Argument(..., help="SavedModel base path (highest integer version is served) or a version folder."),
    name: Optional[str] = typer.Option(None, help="Model name in the URL (default: the stage folder, e.g. teacher or student)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8501, min=0, max=65535, help="TF Serving's REST port by default."),
    max_batch: int = typer.Option(1024, min=1, help="Rows per request above which the server answers 413."),
    max_body_bytes: int = typer.Option(4 * 1024 * 1024, min=1, help="Request body size above which the server answers 413."),
    max_work: int = typer.Option(1 << 20, min=1, help="Work budget of one request, draws x rows x steps (time steps of "
                                 "a sequence, 1 for a table row); above it a 400, before any computation."),
    max_response_mb: float = typer.Option(16.0, min=0.001, help="Largest JSON answer (estimated before computing); "
                                          "above it a 400."),
    timeout: float = typer.Option(30.0, min=0.001, help="Seconds a request may wait for and run in a model call "
                                  "(then 503 / 504)."),
    max_concurrency: int = typer.Option(2, min=1, help="Model calls at once (a semaphore; about one per core)."),
):
    """Serve an export over TF Serving's REST API (GET /v1/models/NAME[/metadata], POST /v1/models/NAME:predict)."""
    from serving.server import serve as serve_export

    serve_export(export_dir, name=name, host=host, port=port, max_batch=max_batch, max_body_bytes=max_body_bytes,
                 max_work=max_work, max_response_bytes=int(max_response_mb * 2 ** 20), timeout=timeout,
                 max_concurrency=max_concurrency)


@app.command()
@user_errors
def predict(
    export_dir: Path = typer.Argument(..., help="SavedModel base path or version folder."),
    input: Path = typer.Argument(..., help="Rows to score: a .csv or .parquet table with the run's raw feature columns "
                                 "(text and empty cells are encoded as the run recorded; sequences: a long table with "
                                 "series, time and the channel columns)."),
    out: Path = typer.Option(..., "--out", help="Output table (.csv or .parquet): the id plus every output of the signature."),
    batch_size: int = typer.Option(1024, min=1, help="Rows per call of the signature."),
    signature: str = typer.Option("serving_default", help="Signature to run; it must take one [batch, features] input."),
    id_column: Optional[str] = typer.Option(None, "--id-column", "--series-column",
                                            help="Row id column (default: id/Id/ID if present, else row number; "
                                                 "sequences: the series id column, default the run's)."),
    time_column: Optional[str] = typer.Option(None, help="Sequences: the time column (default: the run's)."),
    samples: Optional[int] = typer.Option(None, help="A teacher export: this many weight draws from --seed "
                                          "(predictive_seeded) instead of the serving signature's fresh draws."),
    seed: int = typer.Option(0, help="With --samples: the seed of the weight draws."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Batch prediction: score a table with an export and write every output beside each row's id."""
    from serving.predict import predict_file

    s = predict_file(export_dir, input, out, batch_size=batch_size, signature=signature, id_column=id_column,
                     time_column=time_column, overwrite=overwrite, progress=progress, samples=samples, seed=seed)
    print(f"{s['rows']} rows through {s['signature']} ({', '.join(s['outputs'])}) -> {s['out']}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

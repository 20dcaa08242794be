"""Cheap, user-facing CLI behaviour: help texts and option errors that come before any training."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from bdk.cli import app

REPO = Path(__file__).resolve().parents[1]

TRANSFER_FLAGS = ("--perturbations", "--noise", "--noise-unit", "--interpolations", "--interpolation-share",
                  "--interpolation-pairs", "--uniform", "--uniform-share", "--shell", "--shell-share")


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# each transfer option, a value other than its default, and where it lands in the TransferConfig
TRANSFER_OPTIONS = {"--perturbations": ("3", "perturbations", 3), "--noise": ("0.2,0.4", "noise", (0.2, 0.4)),
                    "--noise-unit": ("std", "noise_unit", "std"), "--interpolations": ("7", "interpolations", 7),
                    "--interpolation-share": ("0.5", "interpolation_share", 0.5),
                    "--interpolation-pairs": ("neighbour", "interpolation_pairs", "neighbour"),
                    "--uniform": ("9", "uniform", 9), "--uniform-share": ("0.1", "uniform_share", 0.1),
                    "--shell": ("11", "shell", 11), "--shell-share": ("0.2", "shell_share", 0.2)}
assert set(TRANSFER_OPTIONS) == set(TRANSFER_FLAGS)


def test_run_and_soft_labels_take_every_transfer_option(monkeypatch, tmp_path):
    """`bdk run` and `bdk soft-labels` list the transfer options in their help and turn each into the TransferConfig
    (the stages are stopped before any work); each value differs from the default, so a dropped option fails here."""
    from distill.errors import BdkError
    from distill.transfer import SoftLabelConfig, TransferConfig

    from bdk import pipeline

    seen = []

    def stop(*args, **kwargs):
        seen.append(next(a for a in (*args, *kwargs.values()) if isinstance(a, SoftLabelConfig)).transfer)
        raise BdkError("stopped here")

    monkeypatch.setattr(pipeline, "soft_labels_stage", stop)
    monkeypatch.setattr(pipeline, "run_all", stop)
    default = TransferConfig()
    args = [a for flag, (value, _, _) in TRANSFER_OPTIONS.items() for a in (flag, value)]
    for command, where in (("run", "--out"), ("soft-labels", "--run")):
        r = CliRunner().invoke(app, [command, "--help"])
        assert r.exit_code == 0, r.output
        for flag in TRANSFER_FLAGS:
            assert f"  {flag} " in r.output, (command, flag)
        r = CliRunner().invoke(app, [command, where, str(tmp_path / "run"), *args, "--no-progress"])
        assert _errors(r.output) == ["error: stopped here"], r.output
        for flag, (_, field, value) in TRANSFER_OPTIONS.items():
            assert getattr(seen[-1], field) == value != getattr(default, field), (command, flag)
    assert len(seen) == 2


def test_transfer_help_gives_the_defaults_by_table():
    """The help of the transfer-size options (shared by `bdk run` and `bdk soft-labels`) states the defaults that
    distill.transfer resolves: a changed default fails here instead of leaving the help behind."""
    from bdk import cli
    from distill.transfer import (CLASS_TABLE_DEFAULTS, MAX_SHARED_INTERPOLATIONS, SAMPLES, SMALL_TABLE_DEFAULTS,
                                  SMALL_TABLE_ROWS, SMALL_TABLE_SAMPLES, TABLE_DEFAULTS)

    assert f"fewer than {SMALL_TABLE_ROWS:,} training rows" in cli.SMALL_TABLES
    options = {"perturbations": cli.PerturbationsOption, "interpolations": cli.InterpolationsOption,
               "shell": cli.ShellOption}
    assert set(options) | {"interpolation_share"} == set(SMALL_TABLE_DEFAULTS) == set(TABLE_DEFAULTS)
    share = cli.INTERPOLATION_SHARE_HELP
    assert (f"at most {MAX_SHARED_INTERPOLATIONS:,}" in share and f"default {CLASS_TABLE_DEFAULTS['interpolation_share']:g} "
            f"on tables of classes from {SMALL_TABLE_ROWS:,} training rows" in share)
    for name, option in options.items():
        text = option.__metadata__[0].help
        assert f"default {SMALL_TABLE_DEFAULTS[name]:,} on {cli.SMALL_TABLES}, else {TABLE_DEFAULTS[name]:,}" in text, name
    r = CliRunner().invoke(app, ["soft-labels", "--help"], terminal_width=400)
    assert f"default {SMALL_TABLE_SAMPLES} on {cli.SMALL_TABLES}, else {SAMPLES}" in " ".join(r.output.split()), r.output


def test_bad_options_are_one_error_line_before_tensorflow_loads(tmp_path):
    """An invalid --missing, --kl-weight or --learning-rate-decay is refused in a fresh process without importing TensorFlow."""
    script = textwrap.dedent(f"""
        import json, sys
        from typer.testing import CliRunner
        from bdk.cli import app
        out = []
        for args in (["run", "--missing", "never"], ["teacher", "--missing", "sometimes"],
                     ["teacher", "--kl-weight", "x"], ["run", "--kl-weight", "lots"],
                     ["teacher", "--learning-rate-decay", "linear"]):
            r = CliRunner().invoke(app, [*args, "--out", {str(tmp_path / "run")!r}, "--no-progress"])
            out.append([args, r.exit_code, r.output, "tensorflow" in sys.modules])
        print(json.dumps(out))
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout.splitlines()[-1])
    needles = ["--missing must be one of impute, drop, refuse, got 'never'", "got 'sometimes'",
               "--kl-weight 'x': expected a number >= 0 or auto", "--kl-weight 'lots'",
               "unknown learning-rate decay 'linear'; choose one of constant, cosine"]
    for (args, code, output, tf_loaded), needle in zip(results, needles):
        errors = _errors(output)
        assert code == 1 and len(errors) == 1 and needle in errors[0], (args, output)
        assert not tf_loaded, args
    assert not (tmp_path / "run").exists()


def test_experiment_kl_weight_bad_weights_are_one_error_line(tmp_path):
    for weights, needle in (("x", "--weights 'x': expected comma-separated numbers"),
                            ("0.5,abc", "--weights '0.5,abc'"),
                            ("-1,2", "--weights needs one or more KL weights >= 0"),
                            (",", "--weights needs one or more KL weights >= 0")):
        r = CliRunner().invoke(app, ["experiment", "kl-weight", "--weights", weights, "--out", str(tmp_path / "klw"),
                                     "--no-progress"])
        errors = _errors(r.output)
        assert r.exit_code == 1 and len(errors) == 1 and needle in errors[0], (weights, r.output)
        assert "Traceback" not in r.output
    assert not (tmp_path / "klw").exists()


def test_teacher_learning_rate_decay_reaches_the_config(monkeypatch, tmp_path):
    """`bdk teacher --learning-rate-decay cosine` sets the config field (the stage is stopped before any work)."""
    from distill.errors import BdkError

    from bdk import pipeline

    seen = []

    def stop(data_cfg, cfg, *args, **kwargs):
        seen.append(cfg)
        raise BdkError("stopped here")

    monkeypatch.setattr(pipeline, "teacher_stage", stop)
    for given, expected in ((["--learning-rate-decay", "cosine"], "cosine"), ([], None)):
        r = CliRunner().invoke(app, ["teacher", "--out", str(tmp_path / "run"), *given, "--no-progress"])
        assert _errors(r.output) == ["error: stopped here"], r.output
        assert seen[-1].learning_rate_decay == expected

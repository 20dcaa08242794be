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


def test_run_and_soft_labels_help_list_the_transfer_options():
    for command in ("run", "soft-labels"):
        r = CliRunner().invoke(app, [command, "--help"])
        assert r.exit_code == 0, r.output
        for flag in TRANSFER_FLAGS:
            assert f"  {flag} " in r.output, (command, flag)


def test_bad_options_are_one_error_line_before_tensorflow_loads(tmp_path):
    """An invalid --missing or --kl-weight is refused in a fresh process without importing TensorFlow."""
    script = textwrap.dedent(f"""
        import json, sys
        from typer.testing import CliRunner
        from bdk.cli import app
        out = []
        for args in (["run", "--missing", "never"], ["teacher", "--missing", "sometimes"],
                     ["teacher", "--kl-weight", "x"], ["run", "--kl-weight", "lots"]):
            r = CliRunner().invoke(app, [*args, "--out", {str(tmp_path / "run")!r}, "--no-progress"])
            out.append([args, r.exit_code, r.output, "tensorflow" in sys.modules])
        print(json.dumps(out))
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout.splitlines()[-1])
    needles = ["--missing must be one of impute, drop, refuse, got 'never'", "got 'sometimes'",
               "--kl-weight 'x': expected a number >= 0 or auto", "--kl-weight 'lots'"]
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

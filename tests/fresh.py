"""A script in a fresh Python interpreter: what a deployment that loads an export sees (nothing of this process, and
by default not even the project on its path). The script prints one JSON line last; `result` returns it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(script: str, *args, project: bool = False) -> subprocess.Popen:
    """`python -c script args...`, quiet TensorFlow; `project`: the repository on the path (to import its helpers)."""
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "", **({"PYTHONPATH": str(ROOT)} if project else {})}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT) if project else None)


def result(proc: subprocess.Popen, timeout: float = 180) -> dict:
    """The process's last stdout line as JSON, after it exited 0 (else the assertion shows its stderr's tail)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def run(script: str, *args, project: bool = False, timeout: float = 180) -> dict:
    return result(start(script, *args, project=project), timeout)

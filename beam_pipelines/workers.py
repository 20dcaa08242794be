"""Beam's local worker processes die with the job that started them.

The DirectRunner's multi-process mode (`--direct_running_mode=multi_processing`) starts each SDK worker with
`subprocess.Popen(command, shell=True)` from a thread of the job. Left alone, a job killed with SIGKILL leaves those
workers (~200 MB each) running. Inside `workers_die_with_job()`:

- each worker stays in the job's process group (no new session), so `kill -- -PGID` or Ctrl-C in a terminal reaches
  it with the job;
- on Linux it asks the kernel for SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG, set between fork and exec;
  the shell is told to `exec` the worker so the flag stays on the worker itself), which covers `kill -9` of the job;
- SIGTERM and SIGINT to the job kill the workers it started, then take their usual course.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Iterator

PR_SET_PDEATHSIG = 1
_children: set[subprocess.Popen] = set()
_guard = threading.Lock()


def _die_with_parent(parent: int) -> None:
    """Between fork and exec of a worker: SIGKILL when the parent (its starting thread) goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class _Popen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        if sys.platform.startswith("linux") and kwargs.get("preexec_fn") is None:
            parent = os.getpid()
            kwargs["preexec_fn"] = lambda: _die_with_parent(parent)
            if kwargs.get("shell") and isinstance(args, str) and not args.lstrip().startswith("exec "):
                args = "exec " + args  # the shell becomes the worker: the death signal stays on the worker
        super().__init__(args, *rest, **kwargs)
        with _guard:
            _children.add(self)

    def wait(self, timeout=None):
        try:
            return super().wait(timeout)
        finally:
            if self.returncode is not None:
                with _guard:
                    _children.discard(self)


class _Subprocess:
    """`subprocess` as Beam's local job service sees it: the same module, with `_Popen`."""

    Popen = _Popen

    def __getattr__(self, name):
        return getattr(subprocess, name)


def kill_workers() -> None:
    with _guard:
        children = list(_children)
    for child in children:
        with contextlib.suppress(OSError):
            child.kill()


@contextlib.contextmanager
def workers_die_with_job() -> Iterator[None]:
    """Hold while a Beam pipeline runs locally (see the module docstring)."""
    from apache_beam.runners.portability import local_job_service

    patched = local_job_service.subprocess
    local_job_service.subprocess = _Subprocess()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old = signal.getsignal(sig)

            def handler(signum, frame, old=old):
                kill_workers()
                if callable(old):
                    return old(signum, frame)
                if old == signal.SIG_IGN:
                    return None
                signal.signal(signum, signal.SIG_DFL)  # the default action: terminate, as without us
                os.kill(os.getpid(), signum)

            previous[sig] = old
            signal.signal(sig, handler)
    try:
        yield
    finally:
        local_job_service.subprocess = patched
        for sig, old in previous.items():
            signal.signal(sig, old)
        kill_workers()  # a job that failed mid-way

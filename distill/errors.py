"""User-facing errors and atomic output folders.

A `BdkError` is a mistake in the user's input: the CLI prints its message on one line and exits 1,
with no traceback. Stages write into a temporary sibling folder and rename it into place on success,
so a failed or interrupted stage never leaves a half-written artifact behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator


class BdkError(Exception):
    """An input problem with a one-line explanation of what is wrong and what to do."""


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename.

    The old folder (when `overwrite`) is moved aside first and deleted only after the new one is
    in place, so readers see either the complete old artifact or the complete new one. While it runs,
    a lock file beside `final` names this process: a second writer of the same folder is refused with
    that pid, and temp folders left by a writer that died (kill -9, power loss) are removed on entry.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise BdkError(f"{final} already exists; pass --overwrite to replace it or choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(final):
        for stale in [*final.parent.glob(f".{final.name}.tmp-*"), *final.parent.glob(f".{final.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # a dead writer's: we hold the lock
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def _writer_lock(final: Path) -> Iterator[None]:
    """`.NAME.lock` beside `final` holding "pid host": created exclusively; a lock whose process is gone
    (same host) is taken over; one held by a live process is a BdkError naming it."""
    lock = final.parent / f".{final.name}.lock"
    me = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid, host = (lock.read_text().split() + ["", ""])[:2]
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)  # its writer died: take it over
                continue
            raise BdkError(f"{final} is being written by another bdk process (pid {pid} on {host or 'this host'}); "
                           f"wait for it or stop it (if it is gone, delete {lock})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if lock.read_text() == me:
                lock.unlink()


def first_line(e: BaseException) -> str:
    """An exception's first line (or its type), for one-line error messages."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def to_jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def write_json(path: Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())

"""User-facing errors and atomic output folders.

A `BdkError` is a mistake in the user's input: the CLI prints its message on one line and exits 1,
with no traceback. Stages write into a temporary sibling folder and rename it into place on success,
so a failed or interrupted stage never leaves a half-written artifact behind.
"""
from __future__ import annotations

import contextlib
import json
import shutil
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
    in place, so readers see either the complete old artifact or the complete new one.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise BdkError(f"{final} already exists; pass --overwrite to replace it or choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
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

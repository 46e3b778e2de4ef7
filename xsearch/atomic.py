"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write goes to a hidden temporary file beside the target, renamed over it when complete; a process killed mid-write
leaves that temporary behind (:func:`temporary_target` recognises one, for whoever owns the folder to remove).
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())  # not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?")
"""An :func:`atomic_path` temporary: ``.<target name>.<tempfile's 8 random characters><the target's suffix>``."""


def temporary_target(name: str) -> str | None:
    """The name of the file that ``name`` was the :func:`atomic_path` temporary of (``.items.3.jsonl.k2x9_a0b.jsonl``
    -> ``items.3.jsonl``), or ``None`` when ``name`` is not named like one. A temporary outlives its write only when
    the writing process was killed."""
    match = _TEMPORARY.fullmatch(name)
    if match is None or (match["suffix"] or "") != Path(match["target"]).suffix:
        return None
    return match["target"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

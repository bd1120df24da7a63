"""Writing what a command produces: one line for an OS error, and results written so that
a killed write is never read as a whole result (:func:`write_result`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError


def write_result(
    directory: str | Path, writers: dict[str, Callable[[Path], object]], last: str
) -> list[Path]:
    """Write a result's files so that a killed write is never read as a whole result, nor
    as a mix of two: every file of ``writers`` is removed first, each is written beside its
    place and renamed into it, ``last`` (the file a reader takes as the result's mark)
    after the others. ``writers``: file name -> a function writing that file to the path
    it is given. Returns the paths, in ``writers``' order."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in writers if n != last] + [last]
    for name in [last, *names]:  # the mark first: no old mark beside new files
        (out / name).unlink(missing_ok=True)
    for name in names:
        stem, dot, ext = name.rpartition(".")
        tmp = out / (f".{stem}.tmp.{ext}" if dot else f".{name}.tmp")  # keeps the format
        writers[name](tmp)
        tmp.replace(out / name)
    return [out / n for n in writers]


def write_text(path: str | Path, text: str, what: str) -> Path:
    """Write a file beside its place and rename it into it (a killed write leaves the old
    file whole, never half of the new one); an OS error (disk full, permissions) is one
    line."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ComemInputError(f"{p}: cannot write the {what} ({exc.strerror})") from None
    return p


def refuse_foreign_file(
    path: str | Path | None, is_ours: Callable[[Any], bool], what: str, flag: str = "--out"
) -> None:
    """Refuse to overwrite an existing file at ``path`` unless it is an earlier output of
    the same kind (``is_ours`` of its JSON is true): a user's file is never replaced by a
    command's result. ``what``: the kind, for the message ("a profile")."""
    if path is None:
        return
    p = Path(path)
    if not p.is_file():
        return
    try:
        ours = bool(is_ours(json.loads(p.read_text())))
    except (OSError, ValueError):  # unreadable, not text, not JSON: not ours
        ours = False
    if not ours:
        raise ComemInputError(
            f"{flag} {path}: the file exists and is not {what}: it is not overwritten"
            " (write elsewhere, or remove it first)"
        )

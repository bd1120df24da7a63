"""Writing what a command produces: one line for an OS error, and results written so that
a killed write is never read as a whole result (:func:`write_result`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
    """Write a file; an OS error (disk full, permissions) is one line."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    except OSError as exc:
        raise ComemInputError(f"{p}: cannot write the {what} ({exc.strerror})") from None
    return p

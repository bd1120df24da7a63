"""Writing what a command produces: checked before any work (the place can be written, it
is no input of the command, no user's file or measurement is replaced), one line for an
OS error, and results written so that a killed write is never read as a whole result
(:func:`write_result`): a long run never ends in a traceback because its results cannot
be written."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError

#: the hidden file naming which command's result a directory holds, and its files
RESULT_MARKER = ".comem-result.json"

#: each command's result in a directory: the file that marks it whole, the keys that file
#: has (how a result written before :data:`RESULT_MARKER` existed is recognized), and
#: the other files it may write
RESULT_KINDS: dict[str, tuple[str, frozenset[str], tuple[str, ...]]] = {
    "run": (
        "config.json",
        frozenset({"architectures", "workload"}),
        ("steps.parquet", "tasks.parquet", "requests.parquet", "engine_steps.parquet"),
    ),
    "engine-sim": (
        "config.json",
        frozenset({"engine", "load"}),
        ("requests.parquet", "engine_steps.parquet"),
    ),
    "bench-serve": (
        "bench_serve.json",
        frozenset({"simulator", "completed"}),
        ("requests.parquet", "engine_steps.parquet"),
    ),
    "plan": (
        "plan.json",
        frozenset({"spec", "chosen"}),
        ("plan.md", "pareto.png", "chosen_scenario.toml"),
    ),
    # a CSV ``last`` file: its header row holds the keys
    "paper": (
        "paper_table.csv",
        frozenset({"experiment", "variant", "architecture", "speedup_step"}),
        ("paper_table.md", "paper_speedups.png", "sensitivity.json", "sensitivity.png"),
    ),
    "families": (
        "families.csv",
        frozenset({"family", "gpu", "kv_bytes_per_token", "crossover_agents"}),
        ("families.png",),
    ),
    # a Parquet ``last`` file: its columns are the keys (the table sim.sweep.collect
    # writes from the point files under points/, which it resumes from)
    "sweep": ("results.parquet", frozenset({"key", "point", "replicate", "error"}), ()),
}


def check_result_dir(directory: str | Path | None, kind: str) -> None:
    """Refuse, before any work, an ``--out`` directory holding another command's result
    or a user's file under a name a ``kind`` result writes."""
    if directory is None or not Path(directory).is_dir():
        return
    last, _, others = RESULT_KINDS[kind]
    _earlier_result(Path(directory), [*others, last], last, kind)


def write_result(
    directory: str | Path,
    writers: dict[str, Callable[[Path], object]],
    last: str,
    kind: str = "result",
) -> list[Path]:
    """Write a result's files so that a killed write is never read as a whole result, nor
    as a mix of two: every file of ``writers`` is removed first, each is written beside its
    place and renamed into it, ``last`` (the file a reader takes as the result's mark)
    after the others. ``writers``: file name -> a function writing that file to the path
    it is given. Returns the paths, in ``writers``' order.

    A directory is written only if what it holds under those names is an earlier result
    of the same ``kind`` (the marker :data:`RESULT_MARKER` says so; a result written before
    the marker existed: its ``last`` file has the kind's keys): a user's file is never
    replaced, and one command's result never left beside another's tables. The files of
    the earlier result the new one does not write go too."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_result(out, list(writers), last, kind)
    names = [n for n in writers if n != last] + [last]
    mark_result(out, kind, sorted(set(names) | set(earlier)))
    for name in [last, *earlier, *names]:  # the mark first: no old mark beside new files
        (out / name).unlink(missing_ok=True)
    for name in names:
        write_atomic(out / name, writers[name], f"{kind} result's {name}")
    mark_result(out, kind, names)
    return [out / n for n in writers]


def mark_result(directory: str | Path, kind: str, names: list[str]) -> None:
    """Name ``names`` in ``directory`` as a ``kind`` result, for a command that writes its
    files itself (each renamed into place whole): a later run of another command, or a
    user, is then told the files are this one's (:func:`check_result_dir`)."""
    marker = json.dumps({"kind": kind, "files": sorted(names)}) + "\n"
    write_text(Path(directory) / RESULT_MARKER, marker, f"{kind} marker")


def _earlier_result(out: Path, names: list[str], last: str, kind: str) -> list[str]:
    """The files of the earlier result of ``kind`` in ``out`` (none: there is none);
    refuses a directory holding another command's result, or a file of the user's
    under a name the result writes."""
    marker = out / RESULT_MARKER
    if marker.is_file():
        other, files = _marker(marker)
        if other == kind:
            return files
        if other is not None and any((out / f).exists() for f in files):
            raise ComemInputError(
                f"--out {out}: holds a comem {other} result, not {_article(kind)} {kind} result:"
                " it is not overwritten (write elsewhere, or remove it first)"
            )
    taken = [n for n in names if (out / n).exists()]
    if not taken:
        return []
    keys = RESULT_KINDS[kind][1] if kind in RESULT_KINDS else frozenset()
    if not (keys and keys <= _result_keys(out / last, kind)):
        raise ComemInputError(
            f"--out {out}: {taken[0]} exists and is not part of a comem {kind} result: it is"
            " not overwritten (write elsewhere, or remove it first)"
        )
    return []


def _result_keys(path: Path, kind: str) -> set[str]:
    """The keys of a result's ``last`` file: a JSON object's, a CSV file's header row, a
    Parquet file's columns (an empty set: not such a file)."""
    from calibration.inputs import read_json

    if not path.is_file():
        return set()
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        except Exception:  # pyarrow raises many kinds for a file that is no Parquet
            return set()
    if path.suffix == ".csv":
        try:
            with path.open(newline="", errors="replace") as f:
                return set(next(csv.reader([f.readline(1 << 16)]), []))
        except (OSError, csv.Error):
            return set()
    try:
        data = read_json(path, kind)
    except ComemInputError:
        return set()
    return set(data) if isinstance(data, dict) else set()


def _marker(path: Path) -> tuple[str | None, list[str]]:
    """A marker's kind and file names (None, []: not a marker this code wrote)."""
    from calibration.inputs import read_json

    try:
        data = read_json(path, "result marker")
    except ComemInputError:
        return None, []
    if not isinstance(data, dict):
        return None, []
    kind, files = data.get("kind"), data.get("files")
    if not isinstance(kind, str) or not isinstance(files, list):
        return None, []
    return kind, [f for f in files if isinstance(f, str) and _plain_name(f)]


def _plain_name(name: str) -> bool:
    """A file directly in the directory, not the marker itself (a tampered marker must not
    reach outside it, nor delete itself)."""
    return name not in ("", ".", "..") and "/" not in name and not name.startswith(RESULT_MARKER)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def temporary_beside(target: Path, directory: Path | None = None) -> Path:
    """Where ``target`` is written before it is renamed into place: hidden, named by this
    process, with the target's extension kept (writers that read the format from the name,
    a figure or a table, still write the right one); in ``directory`` when given (one a
    re-run clears), beside the target otherwise."""
    stem, dot, ext = target.name.rpartition(".")
    pid = os.getpid()
    name = f".{stem}.{pid}.tmp.{ext}" if dot and stem else f".{target.name}.{pid}.tmp"
    return (directory or target.parent) / name


def write_atomic(
    path: str | Path,
    write: Callable[[Path], object],
    what: str,
    directory: Path | None = None,
) -> Path:
    """``write(tmp)`` a file beside its place, then rename it into place: a killed write
    leaves the old file whole, never half of the new one. An OS error (disk full,
    permissions) is one line, and its temporary file is removed. A link's file is written,
    not the link replaced. The one place every result file is written this way."""
    p = Path(path)
    target = p.resolve() if p.is_symlink() else p
    tmp = temporary_beside(target, directory)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):  # its directory cannot be reached: nothing left
            tmp.unlink(missing_ok=True)
        raise ComemInputError(f"{p}: cannot write the {what} ({exc.strerror})") from None
    except BaseException:  # a writer's own error, or an interrupt: no temporary left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return p


def write_text(path: str | Path, text: str, what: str) -> Path:
    """:func:`write_atomic` of a text."""
    return write_atomic(path, lambda tmp: tmp.write_text(text), what)


def refuse_foreign_file(
    path: str | Path | None, is_ours: Callable[[Any], bool], what: str, flag: str = "--out"
) -> None:
    """Refuse to overwrite an existing file at ``path`` unless it is an earlier output of
    the same kind (``is_ours`` of its JSON is true): a user's file is never replaced by a
    command's result. ``is_ours`` may also raise what the kind's reader raises on another
    file. ``what``: the kind, for the message ("a profile")."""
    if path is None:
        return
    from calibration.inputs import read_json

    p = Path(path)
    if not p.is_file():
        return
    try:
        ours = bool(is_ours(read_json(p, what)))
    except (ComemInputError, KeyError, TypeError, ValueError):
        ours = False  # unreadable, not JSON, too deep, or what the reader refuses: not ours
    if not ours:
        raise ComemInputError(
            f"{flag} {path}: the file exists and is not {what}: it is not overwritten"
            " (write elsewhere, or remove it first)"
        )


# --- checks before a command writes -------------------------------------------------


def writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Make ``path`` (a directory) and prove a file can be written in it; fail before a
    long run, not after it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".comem-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except FileExistsError:
        raise ComemInputError(f"{flag} {path}: is a file, expected a directory") from None
    except OSError as exc:
        raise ComemInputError(f"{flag} {path}: cannot write there ({exc.strerror})") from None
    return p


def writable_file(path: str | Path, flag: str = "--out") -> Path:
    """Check that ``path`` (a file to write) can be written, without writing it: its
    directory is made and probed, and it is not a directory itself."""
    p = Path(path)
    if p.is_dir():
        raise ComemInputError(f"{flag} {path}: is a directory, expected a file name")
    writable_dir(p.parent if str(p.parent) else ".", flag)
    if p.exists() and not os.access(p, os.W_OK):
        raise ComemInputError(f"{flag} {path}: cannot write there (permission denied)")
    return p


#: the most of an existing figure read to tell whether this tool drew it
_FIGURE_READ = 64 << 20


def refuse_foreign_figure(path: str | Path | None, flag: str = "--figure") -> None:
    """A figure file to write: writable, a .png / .pdf / .svg name, and where a file is
    there already, one this tool drew (matplotlib names itself in every PNG, PDF and SVG
    it writes): a user's own image under that name is kept."""
    if path is None:
        return
    p = writable_file(path, flag)
    if p.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ComemInputError(f"{flag} {path}: expected a .png, .pdf or .svg file name")
    if p.is_file():
        with p.open("rb") as f:
            drawn = b"matplotlib" in f.read(_FIGURE_READ).lower()
        if not drawn:
            raise ComemInputError(
                f"{flag} {path}: the file exists and is not a figure this tool drew: it is"
                " not overwritten (write elsewhere, or remove it first)"
            )


def refuse_overwrite(paths: list[Path], force: bool, flag: str = "--out") -> None:
    """Measurements are expensive (GPU hours): refuse to replace an existing file unless
    ``force`` (the CLI's ``--force``)."""
    if force:
        return
    for p in paths:
        if p.exists():
            raise ComemInputError(
                f"{flag}: {p} already exists and measurements are never overwritten;"
                " choose another path, or pass --force to replace it"
            )


def refuse_input_as_output(
    out: str | Path | None, inputs: dict[str, str | Path | None], flag: str = "--out"
) -> None:
    """An output that is one of the command's input files would replace what it reads
    (``calibrate fit --measurements m.csv --out m.csv``): one line, before anything."""
    if out is None or not Path(out).exists():
        return
    for name, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        try:
            same = os.path.samefile(out, path)
        except OSError:
            continue
        if same:
            raise ComemInputError(
                f"{flag} {out}: is the {name} file this command reads (writing would"
                " replace it); write elsewhere"
            )


def refuse_outputs_over_inputs(
    outputs: list[Path], inputs: dict[str, Any], flag: str = "--out"
) -> None:
    """:func:`refuse_input_as_output` for every file a command writes (the files inside
    a directory ``--out`` too, and sidecars): none may be a file the command reads."""
    for out in outputs:
        refuse_input_as_output(out, inputs, flag)

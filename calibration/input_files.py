"""The files a command's settings name, and a digest of their bytes: what a resumable
output (a sweep's point, a plan's candidate) is keyed by besides the settings, so that a
result computed from a trace or profile since changed is not read back as good."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from calibration.inputs import read_bytes


def input_paths(value: Any, where: str = "") -> dict[str, Path]:
    """Every file a command's settings name (a model's config.json, a profile, a trace),
    by the field that names it: each string in ``value`` (nested dicts and lists, e.g. a
    validated scenario's ``model_dump()``) that is an existing file, or a directory
    holding a ``config.json`` (a Hugging Face model directory)."""
    found: dict[str, Path] = {}
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        name, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(node))
        elif isinstance(node, str | Path) and str(node).strip():
            p = Path(node)
            try:
                if p.is_file():
                    found[name] = p
                elif p.is_dir() and (p / "config.json").is_file():
                    found[name] = p / "config.json"
            except (OSError, ValueError):  # a name too long, a NUL byte: no file
                continue
    return found


def files_digest(settings: Any) -> str:
    """A hash of the bytes of every file ``settings`` names (:func:`input_paths`), "" when
    it names none: a resumable output keyed by its settings alone would be read back as
    good after the trace or profile it was computed from changed."""
    import hashlib

    found = input_paths(settings)
    if not found:
        return ""
    digest = hashlib.sha256()
    for name in sorted(found):
        p = found[name]
        st = p.stat()
        digest.update(f"{name}\0".encode())
        digest.update(_file_sha256(str(p.resolve()), st.st_mtime_ns, st.st_size))
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, mtime_ns: int, size: int) -> bytes:
    """A file's SHA-256, once per version of it (a sweep keys thousands of points by the
    same trace)."""
    import hashlib

    return hashlib.sha256(read_bytes(path, "input")).digest()

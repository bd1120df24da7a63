"""Helpers for tests that run ``comem`` as a real subprocess.

A plain module next to the tests (not ``tests.test_cli``): ``pytest`` puts this
directory on ``sys.path`` (rootdir conftest, prepend import mode), while the repo
root is on it only under ``python -m pytest``; CI runs plain ``pytest``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_comem(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m comem *args`` from the repo root, without COMEM_SHARED set."""
    base = {k: v for k, v in os.environ.items() if k != "COMEM_SHARED"}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "comem", *args],
        cwd=REPO_ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code 2, one non-empty stderr line naming the problem, no traceback."""
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, report
    assert proc.returncode == 2, report
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), report
    line = lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in: {line}"
    return line

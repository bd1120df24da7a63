"""Shared fixtures: where the real measured data is, when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from calibration.report import find_shared

# Property tests draw the same examples on every run: the regimes they assert they reach
# (saturation, preemption, eviction, late summaries) cannot depend on the day's luck, and a
# failure reproduces. No example database either: replayed examples from an earlier run
# would change what a run draws. Each test's own @settings inherits this.
settings.register_profile("comem", derandomize=True, database=None)
settings.load_profile("comem")


def _no_local_constants() -> None:
    """Hypothesis (>= 6.131) also draws literals it finds in every project module imported
    so far, so a test's examples depend on which tests ran before it in the process (the
    hybrid saturation test reached preemption in 4 of 25 draws after ``comem figures`` had
    been imported in-process, 5+ alone). Draw only from the test's own strategies."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - a Hypothesis without local constants
        return
    empty = getattr(providers, "_local_constants", None)
    if empty is not None and hasattr(providers, "_get_local_constants"):
        providers._get_local_constants = lambda: type(empty)()


_no_local_constants()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``shared/`` data checkout, or skip: a fresh clone does not have it."""
    found = find_shared()
    if found is None:
        pytest.skip("needs ../shared (real kernel / e2e measurements); not present in this clone")
    return found


@pytest.fixture(scope="session")
def shared_dir_or_none() -> Path | None:
    """The ``shared/`` data checkout if present (tests that only add checks with it)."""
    return find_shared()


@pytest.fixture(scope="session")
def kernel_dir(shared_dir: Path):
    def _dir(gpu: str) -> Path:
        d = shared_dir / "data" / "kernels" / gpu / "vllm-0.19.0"
        if not d.is_dir():
            pytest.skip(f"kernel tables for {gpu} not in {shared_dir}")
        return d

    return _dir


@pytest.fixture(scope="session")
def e2e_csv(shared_dir: Path) -> Path:
    p = shared_dir / "data" / "e2e" / "vllm_static_batch_h100.csv"
    if not p.is_file():
        pytest.skip(f"end-to-end CSV not in {shared_dir}")
    return p

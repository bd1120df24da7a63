"""Shared fixtures: where the real measured data is, when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from calibration.report import find_shared

# Property tests draw the same examples on every run: the regimes they assert they reach
# (saturation, preemption, eviction, late summaries) cannot depend on the day's luck, and a
# failure reproduces. Each test's own @settings inherits this.
settings.register_profile("comem", derandomize=True)
settings.load_profile("comem")


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

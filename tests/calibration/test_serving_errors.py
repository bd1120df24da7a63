"""The README's calibration tables: read from the embedded calibration, and consistent
with what the serving fit recorded in the profiles (no ../shared needed)."""

from __future__ import annotations

import pytest

from calibration.profile import Profile, profile_path
from calibration.serving_errors import (
    OVERHEAD_TERM_MEANING,
    REFERENCE_PROFILE,
    load_serving_cv,
    overhead_terms_table,
    serving_error_table,
    trust_section,
)


@pytest.fixture(scope="module")
def cv():  # type: ignore[no-untyped-def]
    return load_serving_cv()


@pytest.fixture(scope="module")
def serving_entry():  # type: ignore[no-untyped-def]
    return Profile.load(profile_path(*REFERENCE_PROFILE)).overheads["vllm-serving"]


def test_held_out_rows_are_the_ones_the_fit_recorded(cv, serving_entry) -> None:  # type: ignore[no-untyped-def]
    """serving_cv.json and the profile's cross-validation come from one run: per held-out
    model, the same rows and the same MAPE."""
    recorded = serving_entry["cv_leave_one_model_out"]
    lomo = cv[cv["fold"] == "model"]
    assert set(lomo["held_out"]) == set(recorded)
    for model, part in lomo.groupby("held_out"):
        assert len(part) == recorded[model]["rows"]
        assert part["tpot_error"].abs().mean() == pytest.approx(
            recorded[model]["tpot_mape"], abs=1e-4
        )
        assert part["ttft_error"].abs().mean() == pytest.approx(
            recorded[model]["ttft_mape"], abs=1e-4
        )
    # each row is held out once by model and once by GPU
    assert (cv["fold"] == "gpu").sum() == len(lomo) == serving_entry["rows"]


def test_error_table_has_every_model_and_gpu_and_the_pooled_row(cv) -> None:  # type: ignore[no-untyped-def]
    table = serving_error_table(cv)
    lines = table.splitlines()
    pairs = cv[["model", "gpu"]].drop_duplicates()
    assert len(lines) == 2 + len(pairs) + 1
    lomo = cv[cv["fold"] == "model"]
    pooled = f"{lomo['tpot_error'].abs().mean():.1%} ({lomo['tpot_error'].mean():+.1%})"
    assert lines[-1].startswith("| **all** |") and pooled in lines[-1]


def test_terms_table_names_every_fitted_term(serving_entry) -> None:  # type: ignore[no-untyped-def]
    table = overhead_terms_table(serving_entry)
    for term, meaning in OVERHEAD_TERM_MEANING.items():
        shown = f"`{term}`" in table
        assert shown == bool(serving_entry.get(term) or term == "request_overhead_s")
        if shown:
            assert meaning in table


def test_section_states_the_intervals_and_the_knee() -> None:
    text = trust_section()
    assert "held out" in text and "80% of held-out rows" in text
    assert "KV cache" in text  # the knee rows are named, not averaged away

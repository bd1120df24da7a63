"""comem families: what each row compares is in the row (FC's finished tasks)."""

from __future__ import annotations


def test_a_family_row_says_full_context_ran_past_its_context() -> None:
    """The authors' benchmark (64 steps x ~1224 tokens) passes FC's 65,536-token limit:
    FC finishes none of its tasks, and the row says so beside its speedups."""
    from comem.families import CAVEATS, family_row

    calls: list[int] = []
    row = family_row("GQA dense", "h200_sxm", agents=(1, 4), done=lambda: calls.append(1))
    assert len(calls) == 2 and not row.refused
    assert row.fc_finished == "1: 0/1; 4: 0/4"
    assert row.speedups.startswith("1: ") and "; 4: " in row.speedups
    assert any("65,536" in c for c in CAVEATS) and any("2 more GPUs" in c for c in CAVEATS)


def test_a_refused_family_still_counts_its_runs() -> None:
    from comem.families import family_row

    calls: list[int] = []
    row = family_row("DSA", "b200_sxm", agents=(1, 4, 16), done=lambda: calls.append(1))
    assert row.refused and len(calls) == 3

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


def test_families_never_replaces_a_users_file_and_writes_one_result(tmp_path, monkeypatch) -> None:
    """A user's families.png in --out is refused before any run, in one line; a result
    is written whole with its marker, and a re-run replaces it."""
    from cli_helpers import assert_user_error, run_comem

    import comem.families as families
    from calibration.outputs import RESULT_MARKER

    (tmp_path / "families.png").write_text("my figure")
    proc = run_comem("families", "--gpus", "h200_sxm", "--out", str(tmp_path))
    assert_user_error(proc, str(tmp_path), "families.png exists and is not part of")
    assert (tmp_path / "families.png").read_text() == "my figure"

    def row(family, gpu, agents, done):  # type: ignore[no-untyped-def]
        return families.FamilyRow(
            family, gpu, "m", 1, "bf16", 1, 1, 1, 2, 1.1, 1.2, 1.3, speedups="1: 0.9; 2: 1.1"
        )

    monkeypatch.setattr(families, "family_row", row)
    out = tmp_path / "result"
    for _ in range(2):
        written = families.run_families(["h200_sxm"], out, agents=(1,))
        assert [p.name for p in written] == ["families.csv", "families.png"]
    assert sorted(p.name for p in out.iterdir()) == [RESULT_MARKER, "families.csv", "families.png"]

"""calibration.inputs: writing a result so that a killed write is never read as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.outputs import write_result


def _writers(tag: str, fail_at: str | None = None) -> dict:
    def writer(name: str):  # type: ignore[no-untyped-def]
        def write(path: Path) -> None:
            if name == fail_at:
                path.write_text("half")  # a write cut short
                raise KeyboardInterrupt
            path.write_text(f"{tag} {name}")

        return write

    return {n: writer(n) for n in ("a.parquet", "b.png", "result.json")}


def test_a_result_is_whole_or_has_no_mark(tmp_path: Path) -> None:
    paths = write_result(tmp_path, _writers("old"), "result.json")
    assert [p.name for p in paths] == ["a.parquet", "b.png", "result.json"]
    assert all(p.read_text().startswith("old") for p in paths)
    with pytest.raises(KeyboardInterrupt):  # killed while writing the second table
        write_result(tmp_path, _writers("new", fail_at="b.png"), "result.json")
    # no mark, no old file beside a new one, no partial file under a real name
    assert not (tmp_path / "result.json").exists()
    assert not (tmp_path / "b.png").exists()
    assert (tmp_path / "a.parquet").read_text() == "new a.parquet"
    write_result(tmp_path, _writers("new"), "result.json")
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if not p.name.startswith(".")} == {
        "a.parquet": "new a.parquet", "b.png": "new b.png", "result.json": "new result.json"
    }  # fmt: skip


@pytest.mark.parametrize(
    "text,needle",
    [
        ("a,b,a\n1,2,3\n", "names column 'a' twice"),
        ("a,b,c\n1,2,3,9,9\n4,5,6\n", "row 2 has 5 cells, the header 3"),
        ("a,b,c\n1,2,3\n4,5\n", "row 3 has 2 cells, the header 3"),
    ],
)
def test_a_csv_whose_cells_do_not_match_its_header_is_one_line(
    tmp_path: Path, text: str, needle: str
) -> None:
    """pandas would rename a duplicated column, or take a row's extra cells as an index
    and shift every value into the wrong column: refused before any value is read."""
    from calibration.errors import ComemInputError
    from calibration.inputs import read_csv

    path = tmp_path / "rows.csv"
    path.write_text(text)
    with pytest.raises(ComemInputError, match=needle):
        read_csv(path, "serving")


def test_what_pandas_reads_still_reads(tmp_path: Path) -> None:
    """The cell check reads as pandas does: a whitespace-only line is skipped, a file
    compressed under any case of its suffix is opened compressed, long cells pass."""
    import gzip

    from calibration.inputs import read_csv

    spaced = tmp_path / "spaced.csv"
    spaced.write_text("a,b,c\n1,2,3\n   \n4,5,6\n")
    assert len(read_csv(spaced, "serving")) == 2
    packed = tmp_path / "rows.CSV.GZ"
    packed.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    assert len(read_csv(packed, "serving")) == 1
    long = tmp_path / "long.csv"
    long.write_text("a,b\n1," + "x" * 200_000 + "\n")
    assert len(read_csv(long, "serving")) == 1


def test_profile_fields_are_what_a_profile_writes() -> None:
    from calibration.profile import PROFILE_FIELDS, default_profile

    assert set(default_profile("h100_sxm", "bf16").to_dict()) == set(PROFILE_FIELDS)


@pytest.mark.parametrize(
    ("data", "field", "expected"),
    [
        ({"workload": {"agents": "2"}}, "workload.agents", "an integer, got the string '2'"),
        ({"workload": {"tool_s": "0.5"}}, "workload.tool_s", "a number, got the string"),
        (
            {"architectures": [{"name": "FC", "kind": "fc", "agent": {"async_scheduling": "no"}}]},
            "architectures.0.agent.async_scheduling",
            "true or false, got the string 'no'",
        ),
    ],
)
def test_a_scalar_written_as_another_type_is_refused(data: dict, field: str, expected: str) -> None:
    """pydantic's lax mode reads "no" as false and "2" as 2: a file must say what it means."""
    from calibration.errors import ComemInputError
    from calibration.inputs import validate
    from sim.scenario import UNION_TAGS, Scenario

    with pytest.raises(ComemInputError) as info:
        validate(Scenario, data, "s.toml", UNION_TAGS)
    msg = str(info.value)
    assert msg.startswith(f"s.toml: {field}: expected") and expected in msg, msg


def test_lists_for_tuples_and_plain_numbers_stay_accepted() -> None:
    from calibration.inputs import validate
    from sim.scenario import UNION_TAGS, Scenario

    s = validate(Scenario, {"seed": 3, "workload": {"agents": 2, "tool_s": 1}}, "s", UNION_TAGS)
    assert (s.seed, s.workload.agents, s.workload.tool_s) == (3, 2, 1.0)


def test_a_result_never_replaces_a_users_file_or_another_commands_result(
    tmp_path: Path,
) -> None:
    from calibration.errors import ComemInputError
    from calibration.outputs import RESULT_MARKER, check_result_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.parquet").write_text("a measurement")
    with pytest.raises(ComemInputError, match="a.parquet exists and is not part of"):
        write_result(mine, _writers("new"), "result.json", "run")
    assert (mine / "a.parquet").read_text() == "a measurement"
    (tmp_path / "engine").mkdir()
    write_result(tmp_path / "engine", _writers("old"), "result.json", "engine-sim")
    for attempt in (
        lambda: check_result_dir(tmp_path / "engine", "run"),
        lambda: write_result(tmp_path / "engine", {"x.parquet": _writers("n")["a.parquet"],
                             "result.json": _writers("n")["result.json"]}, "result.json", "run"),
    ):  # fmt: skip
        with pytest.raises(ComemInputError, match="holds a comem engine-sim result, not a run"):
            attempt()
    assert (tmp_path / "engine" / "b.png").read_text() == "old b.png"
    # the same kind again: replaced whole, its earlier files that the new one lacks gone
    fewer = {n: w for n, w in _writers("new").items() if n != "b.png"}
    write_result(tmp_path / "engine", fewer, "result.json", "engine-sim")
    left = sorted(p.name for p in (tmp_path / "engine").iterdir())
    assert left == [RESULT_MARKER, "a.parquet", "result.json"]


def test_a_result_written_before_the_marker_is_recognized_by_its_mark(tmp_path: Path) -> None:
    import json

    from calibration.errors import ComemInputError

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"architectures": [], "workload": {}}))
    (old / "steps.parquet").write_text("old")
    write_result(
        old,
        {
            "steps.parquet": lambda p: p.write_text("new"),
            "config.json": lambda p: p.write_text("{}"),
        },
        "config.json",
        "run",
    )
    assert (old / "steps.parquet").read_text() == "new"
    (old / ".comem-result.json").unlink()
    (old / "config.json").write_text(json.dumps({"someone": "else"}))
    with pytest.raises(ComemInputError, match="config.json exists and is not part of"):
        write_result(old, {"config.json": lambda p: p.write_text("{}")}, "config.json", "run")


def test_a_marker_whose_files_are_gone_or_malformed_blocks_nothing(tmp_path: Path) -> None:
    """A directory holding only another command's marker looks empty and is: written. A
    marker whose file list is not a list of names deletes nothing of the user's."""
    import json

    from calibration.outputs import RESULT_MARKER, check_result_dir

    (tmp_path / RESULT_MARKER).write_text(json.dumps({"kind": "engine-sim", "files": ["x"]}))
    check_result_dir(tmp_path, "run")  # x is gone: a stale marker
    write_result(tmp_path, _writers("new"), "result.json", "run")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "c").write_text("the user's")
    (odd / RESULT_MARKER).write_text(json.dumps({"kind": "run", "files": "c"}))
    write_result(odd, _writers("new"), "result.json", "run")
    assert (odd / "c").read_text() == "the user's"


def test_a_csv_result_written_before_the_marker_is_recognized_by_its_header(
    tmp_path: Path,
) -> None:
    """``paper`` and ``families`` end in a CSV table: one written before the marker (the
    committed figures) is theirs by its header row; a user's CSV under that name is not."""
    from calibration.errors import ComemInputError
    from calibration.outputs import check_result_dir

    old = tmp_path / "old"
    old.mkdir()
    (old / "families.csv").write_text("family,gpu,model,kv_bytes_per_token,crossover_agents\n")
    (old / "families.png").write_text("old figure")
    check_result_dir(old, "families")
    write_result(
        old,
        {"families.csv": lambda p: p.write_text("new"), "families.png": lambda p: p.write_text("")},
        "families.csv",
        "families",
    )
    assert (old / "families.csv").read_text() == "new"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper_table.csv").write_text("experiment,my,own,columns\n1,2,3,4\n")
    with pytest.raises(ComemInputError, match="paper_table.csv exists and is not part of"):
        check_result_dir(mine, "paper")
    assert (mine / "paper_table.csv").read_text().startswith("experiment,my")

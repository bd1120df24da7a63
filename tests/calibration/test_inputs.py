"""calibration.inputs: writing a result so that a killed write is never read as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.inputs import write_result


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

"""Result files are renamed into place: a failed or killed write never leaves half a file
where a later run reads a result, nor a temporary file beside it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from calibration.errors import ComemInputError
from calibration.outputs import write_atomic, write_text


def _fails_halfway(error: BaseException):
    def write(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise error

    return write


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()]
)
def test_a_write_that_fails_halfway_keeps_the_old_file_whole(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "results.parquet"
    target.write_text("the old result")
    expected = ComemInputError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        write_atomic(target, _fails_halfway(error), "sweep results")
    assert target.read_text() == "the old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]
    if expected is ComemInputError:  # disk full: one line naming the file and the cause
        msg = str(info.value)
        assert msg == f"{target}: cannot write the sweep results (No space left on device)"


def test_the_temporary_file_keeps_the_format_and_can_live_elsewhere(tmp_path: Path) -> None:
    seen: list[Path] = []
    scratch = tmp_path / "points"
    scratch.mkdir()
    write_atomic(tmp_path / "figure.png", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")),
                 "figure", scratch)  # fmt: skip
    assert seen[0].parent == scratch and seen[0].suffix == ".png" and seen[0].name[0] == "."
    assert (tmp_path / "figure.png").read_bytes() == b"x" and not list(scratch.iterdir())


def test_a_link_keeps_pointing_at_its_file(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_text(link, '{"a": 1}', "config")
    assert link.is_symlink() and real.read_text() == '{"a": 1}'


def test_a_report_figure_replaces_only_a_figure_this_tool_drew(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from calibration.report import _save_figure

    mine = tmp_path / "e2e_static_batch_h100.png"
    mine.write_text("my own plot")
    with pytest.raises(ComemInputError, match="not a figure this tool drew"):
        _save_figure(plt.figure(), mine)
    assert mine.read_text() == "my own plot"
    drawn = tmp_path / "ops.png"
    _save_figure(plt.figure(), drawn)
    _save_figure(plt.figure(), drawn)  # its own figure: replaced
    assert drawn.read_bytes()[:4] == b"\x89PNG" and sorted(p.name for p in tmp_path.iterdir()) == [
        "e2e_static_batch_h100.png", "ops.png"]  # fmt: skip

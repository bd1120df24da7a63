"""The documentation: the site builds (mkdocs, strict), its generated pages are current,
the README stays a door, and every shell command in the README and docs/ runs.

A ```sh block holds commands to run as written (each is run here, in order, from the
repository root, page by page); a ```text block holds synopses with placeholders
(``[--json]``, ``DIR``), which are not commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").rglob("*.md") if "figures" not in p.relative_to(ROOT / "docs").parts
)
#: commands not run here, and why
NOT_RUN = {
    "make test": "it is this test suite",
}
#: commands that take more than a few seconds (simulate many candidates or variants)
SLOW = re.compile(r"^comem (plan|explain|paper|sweep)\b|^make why\b")


def commands(page: Path) -> list[str]:
    """The commands of a page's ```sh blocks (continuation lines joined, comments cut)."""
    out: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", page.read_text(), flags=re.S | re.M):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def _cases() -> list[object]:
    cases = []
    for page in PAGES:
        cmds = commands(page)
        if not cmds or page == ROOT / "docs" / "index.md":  # the README's copy: run once
            continue
        slow = any(SLOW.search(c) for c in cmds)
        cases.append(
            pytest.param(
                page, cmds, id=str(page.relative_to(ROOT)), marks=[pytest.mark.slow] if slow else []
            )  # fmt: skip
        )
    return cases


@pytest.mark.parametrize("page,cmds", _cases())
def test_every_command_in_the_docs_runs(page: Path, cmds: list[str]) -> None:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("COMEM_SHARED", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for cmd in cmds:
        if cmd in NOT_RUN:
            continue
        proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{page.name}: `{cmd}` failed:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        if cmd.startswith("comem run") and "--json" not in cmd:
            assert "verdict:" in proc.stdout and "workload:" in proc.stdout, cmd


def test_the_docs_have_commands_and_the_readme_is_a_door() -> None:
    readme = (ROOT / "README.md").read_text()
    # a door (one or two screens) with the calibration's held-out error tables on it
    assert len(readme.splitlines()) <= 110, "the README is a door: one or two screens"
    cmds = commands(ROOT / "README.md")
    assert "make run" in cmds and any(c.startswith("comem explain") for c in cmds)
    assert any(c.startswith("comem plan") for c in cmds)
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
    assert len(commands(ROOT / "docs" / "tutorial.md")) >= 4
    # no changelog voice in the docs
    for page in PAGES:
        text = page.read_text()
        assert not re.search(r"\bBefore, |Until issue \d+|\(issue \d+\)", text), page


def test_generated_pages_are_current() -> None:
    from comem.docs_gen import DOCS, ROOT, readme_text
    from comem.docs_gen import PAGES as GENERATED

    assert (ROOT / "README.md").read_text() == readme_text(), (
        "README.md's calibration tables are stale: run `make docs`"
    )
    for name, page in GENERATED.items():
        assert (DOCS / name).read_text() == page(), f"docs/{name} is stale: run `make docs`"


def test_the_site_builds(tmp_path: Path) -> None:
    pytest.importorskip(
        "mkdocs", reason="mkdocs is not installed: install the dev extra (pip install -e '.[dev]')"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "tutorial" / "index.html").is_file()
    assert (tmp_path / "site" / "explanation" / "why-answers-differ" / "index.html").is_file()


@pytest.mark.slow
def test_the_why_page_is_what_explain_gives(tmp_path: Path) -> None:
    from comem.why import PAGE, generate

    assert PAGE.read_text() == generate(workers=2), "stale: run `make why`"

"""`comem paper`: the authors' experiments as scenario files, the table, the sensitivity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.paper import PAPER_DIR, PAPER_METRICS, SENSITIVITY_AXES, SENSITIVITY_BASE, paper_files
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
TINY = ["workload.agents=2", "workload.steps=6"]


@pytest.mark.parametrize("path", paper_files(), ids=lambda p: p.name)
def test_every_paper_scenario_validates_and_says_what_it_reproduces(path):
    scenario = load_scenario(path)
    assert scenario.paper is not None and scenario.paper.experiment
    assert "AUTHORS_SETUP.md" in path.read_text()  # its header cites the source
    kinds = [a.kind for a in scenario.architectures]
    assert kinds[0] == "fc" and len(kinds) >= 2


@pytest.mark.slow
def test_sensitivity_variations_are_valid_overrides():
    for options in SENSITIVITY_AXES.values():
        for _, sets in options:
            load_scenario(SENSITIVITY_BASE, sets)  # raises on a bad field


@pytest.mark.slow
def test_comem_paper_prints_and_writes_the_table(tmp_path):
    files = [str(PAPER_DIR / "deepswe_synthetic_benchmark__h100.toml")]
    args = ["paper", "--only", *files, "--out", str(tmp_path), "--json", "--workers", "1"]
    for s in TINY:
        args += ["--set", s]
    proc = subprocess.run(
        [sys.executable, "-m", "comem", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (row,) = out["rows"]
    assert row["architecture"] == "CoMem" and row["reference"] == "FC"
    assert set(row["speedup"]) == set(PAPER_METRICS)
    assert row["speedup"]["llm"] > 0
    for name in ("paper_table.csv", "paper_table.md", "paper_speedups.png"):
        assert (tmp_path / name).is_file()
    assert "speedup (llm)" in (tmp_path / "paper_table.md").read_text()


@pytest.mark.slow
def test_paper_jobs_share_equal_architectures_and_do_not_depend_on_workers(monkeypatch):
    """The two GLM-4.7 synthetic variants have the same full-context run: simulated once,
    and the rows are those of each scenario run on its own, with 1 or 2 workers."""
    import sim.paper as paper
    from sim.scenario import run_scenario

    files = [
        str(PAPER_DIR / "glm47_synthetic_benchmark__agent_dedicated_tp4.toml"),
        str(PAPER_DIR / "glm47_synthetic_benchmark__agent_colocated_with_memory.toml"),
    ]
    jobs = [(f, tuple(TINY)) for f in files]
    calls = []
    run = paper._run_architecture

    def counted(path, sets, index):
        calls.append((Path(path).name, index))
        return run(path, sets, index)

    monkeypatch.setattr(paper, "_run_architecture", counted)
    one = paper.run_jobs(jobs, workers=1)
    assert len(calls) == 3  # FC once, each CoMem once
    alone = [
        paper._rows(f, sc, run_scenario(sc).results)
        for f, sc in ((f, load_scenario(f, TINY)) for f in files)
    ]
    assert one == alone
    monkeypatch.undo()  # worker processes pickle the module's own function
    assert paper.run_jobs(jobs, workers=2) == one


def test_paper_only_names_what_is_wrong_with_a_path(tmp_path):
    """``--only`` a device or a directory: it exists, so 'does not exist' would mislead."""
    from cli_helpers import assert_user_error, run_comem

    for path, says in (
        ("/dev/null", "is not a regular file"),
        (str(tmp_path), "is not a regular file"),
        (str(tmp_path / "none.toml"), "does not exist"),
    ):
        assert_user_error(run_comem("paper", "--only", path, "--out", str(tmp_path)), says)


def test_paper_never_replaces_a_users_file_nor_another_commands_result(tmp_path):
    """A user's paper_table.md, or a plan's result, in --out: refused before any run, in
    one line, the files left as they were."""
    from cli_helpers import assert_user_error, run_comem

    from calibration.outputs import RESULT_MARKER

    scenario = str(PAPER_DIR / "deepswe_synthetic_benchmark__h100.toml")
    (tmp_path / "paper_table.md").write_text("my notes")
    proc = run_comem("paper", "--only", scenario, "--out", str(tmp_path), "--workers", "1")
    assert_user_error(proc, "paper_table.md exists and is not part of a comem paper result")
    assert (tmp_path / "paper_table.md").read_text() == "my notes"
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "plan.json").write_text("{}")
    (plan / RESULT_MARKER).write_text('{"kind": "plan", "files": ["plan.json"]}')
    proc = run_comem("paper", "--only", scenario, "--out", str(plan), "--workers", "1")
    assert_user_error(proc, "holds a comem plan result, not a paper result")


@pytest.mark.slow
def test_paper_rewrites_its_result_whole(tmp_path):
    """A re-run replaces the earlier result, the files it no longer writes (an earlier
    --sensitivity's) included: never one run's table beside another's figures."""
    from cli_helpers import run_comem

    from calibration.outputs import RESULT_MARKER

    scenario = str(PAPER_DIR / "deepswe_synthetic_benchmark__h100.toml")
    args = ["paper", "--only", scenario, "--out", str(tmp_path), "--workers", "1", "--json"]
    for s in TINY:
        args += ["--set", s]
    assert run_comem(*args).returncode == 0
    marker = json.loads((tmp_path / RESULT_MARKER).read_text())
    marker["files"].append("sensitivity.json")  # as a --sensitivity run leaves it
    (tmp_path / RESULT_MARKER).write_text(json.dumps(marker))
    (tmp_path / "sensitivity.json").write_text("{}")
    proc = run_comem(*args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == [
        str(tmp_path / n) for n in ("paper_table.csv", "paper_table.md", "paper_speedups.png")
    ]
    assert not (tmp_path / "sensitivity.json").exists()

"""Trace and fitted workloads: what they replay/sample, and their failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import ComemInputError
from sim.scenario import load_scenario, run_scenario
from sim.workloads import (
    FITTED_FILE,
    FittedWorkload,
    TraceWorkload,
    fit_workload,
    load_fitted,
)


def test_committed_fit_has_provenance_and_sane_parameters():
    data = load_fitted()
    assert "swebench_agent_steps" in data["provenance"]
    v = data["variables"]
    # medians from the trace README: ~36 steps (Gemini, Verified), completion 80-230
    assert 25 < np.exp(v["steps"]["mu"]) < 50
    assert 60 < np.exp(v["completion"]["mu"]) < 250
    assert 0.9 < v["kept_fraction"]["one_fraction"] <= 1.0
    for spec in v.values():
        assert spec["sigma"] > 0 and 0 <= spec["ks"] < 0.6


def test_fitted_workload_is_seeded_and_respects_limits():
    w = FittedWorkload(agents=6, tasks_per_agent=2, max_steps=30)
    a = w.tasks(np.random.default_rng(5))
    b = w.tasks(np.random.default_rng(5))
    c = w.tasks(np.random.default_rng(6))
    assert a == b and a != c
    assert len(a) == 6 and all(len(own) == 2 for own in a)
    for own in a:
        for task in own:
            assert 1 <= len(task.steps) <= 30
            assert task.steps[0].observation == 0  # the first step reads the task prompt
            for s in task.steps:
                assert s.action >= 1 and 0 <= (s.kept or 0) <= s.action and s.tool_s >= 0


def test_fitted_file_errors_are_clear(tmp_path: Path):
    bad = tmp_path / "fit.json"
    bad.write_text(json.dumps({"variables": {"steps": {}}}))
    with pytest.raises(ComemInputError, match="lacks fitted variable"):
        FittedWorkload(path=str(bad)).tasks(np.random.default_rng(0))
    with pytest.raises(ComemInputError, match="does not exist"):
        FittedWorkload(path=str(tmp_path / "none.json")).tasks(np.random.default_rng(0))


def test_trace_workload_without_data_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("COMEM_SHARED", str(tmp_path))
    with pytest.raises(ComemInputError, match="fitted"):
        TraceWorkload().tasks(np.random.default_rng(0))


@pytest.mark.shared
def test_trace_workload_replays_real_steps(shared_dir):
    path = shared_dir / "data" / "workloads" / "swebench_agent_steps.csv.gz"
    w = TraceWorkload(path=str(path), agents=4, max_steps=40)
    tasks = w.tasks(np.random.default_rng(1))
    assert len(tasks) == 4
    for (task,) in tasks:
        assert 1 <= len(task.steps) <= 40
        assert task.system_tokens > 1000  # system + SWE-bench issue text
        assert all(s.tool_s >= 0 for s in task.steps)
    with pytest.raises(ComemInputError, match="unknown source"):
        TraceWorkload(path=str(path), sources=["nope"]).tasks(np.random.default_rng(1))
    with pytest.raises(ComemInputError, match="no prompt token counts"):
        TraceWorkload(path=str(path), sources=["openhands_glm46_sessions"]).tasks(
            np.random.default_rng(1)
        )


@pytest.mark.shared
def test_refit_reproduces_the_committed_fit(shared_dir):
    path = shared_dir / "data" / "workloads" / "swebench_agent_steps.csv.gz"
    fresh = fit_workload(path)["variables"]
    committed = json.loads(FITTED_FILE.read_text())["variables"]
    for name, spec in committed.items():
        assert fresh[name]["mu"] == pytest.approx(spec["mu"], abs=1e-4), name
        assert fresh[name]["sigma"] == pytest.approx(spec["sigma"], abs=1e-4), name


def test_swebench_scenario_runs_on_the_fitted_workload():
    scenario = load_scenario(
        "scenarios/swebench_verified.toml", ["workload.kind=fitted", "workload.agents=8"]
    )
    result = run_scenario(scenario)
    for res in result.results:
        assert (res.tasks["status"] == "finished").all()
        assert len(res.tasks) == 8

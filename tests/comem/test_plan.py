"""`comem plan`: the planner's choice equals the best of an exhaustive sweep on small
cases, its candidates fit, and its chosen scenario runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from comem.plan.confirm import confirm
from comem.plan.estimate import estimate
from comem.plan.rank import objective_value, rank
from comem.plan.run import run_plan
from comem.plan.space import PlanSpec, enumerate_candidates
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def small(objective: str = "mean-step", **kw) -> PlanSpec:
    base = dict(
        agent_model="llama-3-8b", gpu="h100_sxm", gpus=2, agents=6, steps=6,
        kinds=["fc", "sm", "kso"], dtypes=["bf16"], k_values=[2, 4], offload=[False],
        objective=objective, top=2,
    )  # fmt: skip
    return PlanSpec(**{**base, **kw})


@pytest.mark.parametrize("objective", ["mean-step", "steps-per-gpu"])
@pytest.mark.slow
def test_the_planner_picks_what_an_exhaustive_sweep_picks(objective, tmp_path):
    spec = small(objective)
    rows, n = run_plan(spec, workers=1)
    candidates = enumerate_candidates(spec)
    assert n == len(candidates) and sum(r.simulated for r in rows) < n  # it did prune
    everything = confirm(spec, candidates)  # the exhaustive sweep
    exhaustive = rank(spec, estimate(spec, candidates), everything)
    assert rows[0].label == exhaustive[0].label
    assert objective_value(spec, rows[0]) == pytest.approx(objective_value(spec, exhaustive[0]))


def test_candidates_fit_the_gpus_and_memory():
    spec = small(gpus=4, kinds=["fc", "kso"], dtypes=["bf16", "fp8"])
    for c in enumerate_candidates(spec):
        assert c.gpus_used <= 4
        assert c.memory_placement in ("none", "dedicated", "co-located")
        assert (c.memory_placement == "none") == (c.kind == "fc")


@pytest.mark.slow
def test_comem_plan_writes_a_scenario_that_runs(tmp_path):
    args = ["plan", "--agent-model", "llama-3-8b", "--gpu", "h100_sxm", "--gpus", "2",
            "--agents", "4", "--steps", "4", "--kinds", "fc", "kso", "--dtypes", "bf16",
            "--k", "2", "--offload", "off", "--top", "2", "--workers", "1",
            "--out", str(tmp_path), "--json"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "comem", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["chosen"] == out["rows"][0]["label"]
    scenario = load_scenario(tmp_path / "chosen_scenario.toml")
    chosen = out["rows"][0]["candidate"]["kind"]
    assert scenario.architectures[-1].kind == chosen
    if chosen != "fc":  # the full-context baseline comes with it
        assert [a.kind for a in scenario.architectures] == ["fc", chosen]
    assert out["assumptions"] and "workload" in out["assumptions"][0]
    assert (tmp_path / "pareto.png").is_file()
    # resumable: a second run reuses the simulated points
    points = sorted(p.name for p in (tmp_path / "points").glob("*.json"))
    assert points


def test_a_resolve_loss_limit_changes_the_choice_and_both_columns_show():
    """KSO simulated faster than FC wins on latency; under a limit of 0.5 points of
    resolve rate (pessimistic end) only FC, which loses none, may rank first."""
    from comem.plan.report import table_markdown

    spec = small(kinds=["fc", "kso"], k_values=[2], baseline_resolve_rate=0.6)
    candidates = enumerate_candidates(spec)
    estimates = estimate(spec, candidates)
    simulated = {
        c.key(): {"mean_step_s": 1.0 if c.kind == "kso" else 2.0, "p99_step_s": 3.0,
                  "steps_per_s": 1.0, "tasks_ended_early": 0, "tasks": 6, "preemptions": 0,
                  "kv_peak": 0.5}
        for c in candidates
    }  # fmt: skip
    free = rank(spec, estimates, simulated)
    limited = rank(spec.model_copy(update={"max_resolve_loss_pp": 0.5}), estimates, simulated)
    for rows in (free, limited):
        for r in rows:
            if r.candidate["kind"] == "fc":
                assert r.resolve_rate == pytest.approx(0.6) and r.resolve_rate_delta_pp == 0.0
            else:
                assert r.resolve_rate_low <= r.resolve_rate < 0.6
                assert r.resolve_rate_delta_pp_low < r.resolve_rate_delta_pp < 0
    assert free[0].candidate["kind"] == "kso"
    best = limited[0]
    assert best.candidate["kind"] == "fc" and best.meets_resolve
    assert all(not r.meets_resolve for r in limited if r.candidate["kind"] == "kso")
    table = table_markdown(limited, limit=len(limited))
    assert "resolve % [95%]" in table and "loses too many resolved tasks" in table


def test_points_are_reused_only_for_the_same_simulation(tmp_path):
    """A point is named by the scenario it ran: another plan in the same folder reuses
    it when it asks for the same simulation, and simulates anew when the workload differs."""
    candidates = [c for c in enumerate_candidates(small()) if c.kind == "fc"][:1]
    first = confirm(small(), candidates, points=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1
    again = confirm(small(top=5), candidates, points=tmp_path)  # the same scenario
    strip = lambda d: {k: {f: v for f, v in r.items() if f != "point"} for k, r in d.items()}  # noqa: E731
    assert strip(again) == strip(first)
    other = confirm(small(agents=3), candidates, points=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert other != first

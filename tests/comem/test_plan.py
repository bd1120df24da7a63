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
    rows, n, _ = run_plan(spec, workers=1)
    candidates = enumerate_candidates(spec)
    assert n == len(candidates) and sum(r.simulated for r in rows) < n  # it did prune
    everything = confirm(spec, candidates)  # the exhaustive sweep
    exhaustive = rank(spec, estimate(spec, candidates), everything)
    assert rows[0].label == exhaustive[0].label
    assert objective_value(spec, rows[0]) == pytest.approx(objective_value(spec, exhaustive[0]))


def test_every_candidate_fits_as_its_engine_checks_it():
    """The planner's memory check counts vLLM's profiling run as the engine does: Llama
    3.1 70B in fp8 (73 GB) fits no single H100 there, and the plan used to enumerate it
    and then stop on the engine's refusal."""
    spec = small(agent_model="llama-3.1-70b", gpus=8, kinds=["fc"], dtypes=["fp8"])
    candidates = enumerate_candidates(spec)
    assert candidates and min(c.agent_tp for c in candidates) == 2
    assert len(estimate(spec, candidates)) == len(candidates)


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
    kinds = [a.kind for a in scenario.architectures]
    if chosen != "fc":  # the full-context baseline comes with it
        assert kinds == ["fc", chosen]
    else:  # and full context comes with the best summarizing deployment beside it
        assert kinds[0] == "fc" and len(kinds) <= 2
    assert out["assumptions"] and "workload" in out["assumptions"][0]
    assert (tmp_path / "pareto.png").is_file()
    # plan.md answers on its own: the table, the choice and the verdict, not the table alone
    md = (tmp_path / "plan.md").read_text()
    assert "assumptions:" in md and f"chosen: {out['chosen']}" in md and out["verdict"] in md
    from markdown_it import MarkdownIt  # rich's dependency: the table must render as one

    assert "<table>" in MarkdownIt("commonmark").enable("table").render(md)
    assert out["caveats"] == []  # H100, a full-attention model: inside the bands' rows
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
    # the reference is the uncapped full-context agent (comem run's is the simulated FC,
    # 0% where a cap ends its tasks): the header says which
    assert "resolve pp vs uncapped FC [95%]" in table
    from comem.plan.report import _fails

    kso = next(r for r in limited if r.candidate["kind"] == "kso" and r.simulated)
    low = f"{kso.resolve_rate_delta_pp_low:+.1f} pp at the pessimistic 95% end"
    assert _fails(kso).startswith(f" (loses too many resolved tasks: {low}")


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


def test_a_summarizer_that_made_no_summary_is_noted_and_not_chosen():
    """A KSO point whose memory engine refused every summary ran as full context: it is
    not chosen even when it is the fastest, its row says why, and the verdict names full
    context as the winner against the best summarizing deployment."""
    from comem.plan.report import table_markdown, verdict

    spec = small(kinds=["fc", "kso"], k_values=[2, 4])
    candidates = enumerate_candidates(spec)
    estimates = estimate(spec, candidates)

    def point(c) -> dict:
        made = 0.0 if c.k == 2 else 1.0  # k=2 fastest, but it made no summary
        step = {"fc": 2.0}.get(c.kind, 1.0 if c.k == 2 else 3.0)
        return {"mean_step_s": step, "p99_step_s": 3.0, "steps_per_s": 1.0,
                "tasks_ended_early": 0, "tasks": 6, "preemptions": 0, "kv_peak": 0.5,
                "summaries_made": made}  # fmt: skip

    rows = rank(spec, estimates, {c.key(): point(c) for c in candidates})
    assert rows[0].candidate["kind"] == "fc"
    empty = [
        r for r in rows if r.simulated and r.candidate["kind"] == "kso" and r.candidate["k"] == 2
    ]
    assert empty and all(not r.summarizes for r in empty)
    assert "made no summary" in table_markdown(rows, limit=len(rows))
    line = verdict(rows, spec)
    assert (
        line.startswith("verdict: full context wins") and "k=4" in line and "1.50x slower" in line
    )


def test_the_closed_form_prices_a_fitted_workload_by_its_own_means(tmp_path):
    """The theory column of a fitted workload is its tasks' means, not the default
    experiment's synthetic shape (1024-token actions, 64 steps): full context's estimate
    lies within 2x of its simulation."""
    from comem.plan.estimate import mean_shape
    from comem.plan.scenario import _workload_model

    fitted = _workload_model({"kind": "fitted", "agents": 4, "max_steps": 12}, "test")
    shape = mean_shape(fitted, 4)
    assert 1 <= shape["steps"] <= 12 and shape["action_tokens"] < 1024
    scenario = tmp_path / "fitted.toml"
    scenario.write_text('[workload]\nkind = "fitted"\nagents = 4\nmax_steps = 12\n')
    spec = small(kinds=["fc"], steps=None, agents=4, workload_scenario=str(scenario))
    candidates = enumerate_candidates(spec)
    estimates = estimate(spec, candidates)
    sim = confirm(spec, candidates[:1])[candidates[0].key()]["mean_step_s"]
    assert 0.5 < estimates[0].mean_step_s / sim < 2.0


def test_a_hybrid_model_is_planned_without_offload_and_its_own_dtype():
    """gpt-oss-120b (sliding-window layers, MXFP4 experts): CPU offload, which vLLM runs
    without the hybrid KV manager, is left out with a reason, and its MXFP4 checkpoint is
    among the dtypes tried; asking for offload only is one line."""
    from calibration.errors import ComemInputError
    from comem.plan.report import assumptions
    from comem.plan.space import offload_choices

    spec = PlanSpec(agent_model="gpt-oss-120b", gpu="h200_sxm", gpus=1, agents=4, steps=4)
    assert "mxfp4" in spec.dtypes
    candidates = enumerate_candidates(spec)
    assert not any(c.offload for c in candidates)
    assert any(c.agent_dtype == "mxfp4" for c in candidates)
    assert any("offload off (gpt-oss-120b has sliding-window" in a for a in assumptions(spec))
    with pytest.raises(ComemInputError, match="--offload off"):
        offload_choices(spec.model_copy(update={"offload": [True]}))


def test_the_simulated_set_holds_fc_with_and_without_offload_and_several_k():
    """Past the KV bound, full context with CPU offload is a baseline of its own (the
    estimate ties it with no offload), and each summarizing kind's best layout is
    simulated at its three best k (the estimate's k ranking is its least sure)."""
    from comem.plan.estimate import K_PER_KIND, select

    spec = small(kinds=["fc", "kso"], k_values=[1, 2, 4, 8], offload=[False, True], agents=64)
    estimates = estimate(spec, enumerate_candidates(spec))
    chosen = select(spec, estimates)
    past_bound = [e for e in estimates if e.candidate.kind == "fc" and e.kv_bound_agents < 64]
    assert past_bound, "the case must reach past the KV bound"
    fc = {(c.agent_dtype, c.offload) for c in chosen if c.kind == "fc"}
    assert ("bf16", True) in fc and ("bf16", False) in fc
    assert len({c.k for c in chosen if c.kind == "kso"}) >= min(K_PER_KIND, 4)


def test_when_full_context_wins_the_scenario_holds_the_best_summarizer_too(tmp_path):
    """chosen_scenario.toml of a plan full context won holds the best summarizing
    deployment beside it, so `comem run` and `comem explain` of it compare the two."""
    from comem.plan.report import write_scenario

    spec = small(kinds=["fc", "kso"], k_values=[2, 4])
    candidates = enumerate_candidates(spec)

    def point(c) -> dict:
        step = 1.0 if c.kind == "fc" else 2.0
        return {"mean_step_s": step, "p99_step_s": 3.0, "steps_per_s": 1.0,
                "tasks_ended_early": 0, "tasks": 6, "preemptions": 0, "kv_peak": 0.5,
                "summaries_made": 1.0}  # fmt: skip

    rows = rank(spec, estimate(spec, candidates), {c.key(): point(c) for c in candidates})
    assert rows[0].candidate["kind"] == "fc"
    scenario = load_scenario(write_scenario(spec, rows, tmp_path / "chosen.toml"))
    assert [a.kind for a in scenario.architectures] == ["fc", "kso"]


@pytest.mark.slow
def test_a_summarizer_with_tasks_shorter_than_k_says_none_was_due(tmp_path):
    """Tasks of 4 steps with k = 4: KSO is launched no summary. Its row says none was due
    (not that an engine refused them), and it is not chosen."""
    from comem.plan.report import table_markdown

    spec = small(kinds=["fc", "kso"], k_values=[4], steps=4, agents=4, gpus=4)
    rows, _, _ = run_plan(spec, workers=1, out=tmp_path)
    kso = [r for r in rows if r.simulated and r.candidate["kind"] == "kso"]
    assert kso and all(not r.summarizes and r.summaries_refused == 0 for r in kso)
    text = table_markdown(rows, limit=len(rows))
    assert "none was due" in text and "refused them" not in text
    assert rows[0].candidate["kind"] == "fc"


@pytest.mark.slow
def test_an_slo_nothing_selected_meets_is_met_by_simulating_further_rounds():
    """Steps per GPU ranks 1-GPU deployments first, and the closed form prices the mean
    step, not p99: under an SLO below every p99 the first selection simulated, the plan
    simulates more (in rounds, the candidates likeliest to meet it first) until one
    meets it, and chooses it; the same with 2 workers. An SLO no candidate could come
    near simulates nothing more, and the chosen line and the verdict say it is unmet."""
    from comem.plan.report import unmet, verdict

    base = small("steps-per-gpu", gpus=8, agents=16, kinds=["fc", "kso"])
    free, _, none = run_plan(base, workers=1)
    assert none.rounds == 0 and not none.stopped
    slo = 0.9 * min(r.p99_step_s for r in free if r.simulated)
    spec = base.model_copy(update={"slo_step_s": slo})
    rows, _, rounds = run_plan(spec, workers=1)
    assert rounds.stopped == "met" and rounds.rounds >= 1
    assert 0 < rounds.extra <= rounds.rounds * spec.top
    assert sum(r.simulated for r in rows) == rounds.first + rounds.extra
    assert rows[0].eligible and rows[0].p99_step_s <= slo
    assert rows[0].gpus > min(r.gpus for r in free if r.simulated)
    assert unmet(spec, rows) == "" and "NO simulated" not in verdict(rows, spec)
    again, _, rounds2 = run_plan(spec, workers=2)
    assert rounds2 == rounds and again[0].label == rows[0].label
    assert {r.label for r in again if r.simulated} == {r.label for r in rows if r.simulated}

    never = base.model_copy(update={"slo_step_s": 1e-3})
    rows, _, rounds = run_plan(never, workers=1)
    # no candidate's estimate, at the most optimistic p99 / estimate seen, comes near it:
    # nothing more is simulated
    assert rounds.stopped == "space" and not rows[0].eligible
    assert rounds.rounds == 0 and rounds.extra == 0
    lowest = min(r.p99_step_s for r in rows if r.simulated and r.summarizes)
    line = unmet(never, rows)
    assert line.startswith("NO simulated candidate meets the SLO (p99 step <= 0.001 s)")
    assert f"{lowest:.2f} s" in line and "resolve" not in line
    assert verdict(rows, never).startswith(f"verdict: {line}")


def _row(c, step: float, made: float = 1.0, **kw):
    from dataclasses import asdict

    from comem.plan.rank import PlanRow

    return PlanRow(0, c.label, c.gpus_used, step, 9, False, True, mean_step_s=step,
                   p99_step_s=step, candidate=asdict(c), summaries_made=made, **kw)  # fmt: skip


def test_the_k_edge_warning_knows_the_tasks_length():
    """Tasks of 34 steps: a k of 48 or 64 makes no summary. The warning never suggests a
    k at or above the tasks' length, names the k tried that made none, and says when
    the best k is the largest worth trying (no circle between --k 32 48 64 and
    --k 16 24 32)."""
    from comem.plan.report import edge_warnings
    from comem.plan.space import Candidate

    def kso(k: int) -> Candidate:
        return Candidate("kso", 2, 1, "bf16", False, 2, "co-located", k, False)

    def hint(ks: list[int], best: int, dead: tuple[int, ...] = ()) -> str:
        spec = small(kinds=["fc", "kso"], k_values=ks, steps=34)
        rows = [_row(kso(best), 1.0)] + [_row(kso(k), 2.0, made=0.0) for k in dead]
        (line,) = [n for n in edge_warnings(spec, rows) if " k (" in n]
        return line

    def suggested(line: str) -> list[int]:
        return [int(x) for x in line.split("try --k ")[1].split(";")[0].split()]

    wide = hint([32, 48, 64], 32, dead=(48, 64))
    assert "smallest tried" in wide and "the larger k tried (48 64) make no summary" in wide
    assert "34 steps" in wide and max(suggested(wide)) == 32
    # the k that make no summary are not simulated here: the tasks' length rules them out
    assert "(48 64) make no summary" in hint([32, 48, 64], 32)
    narrow = hint([16, 24, 32], 32)
    assert "largest tried" in narrow and "no larger k is worth trying" in narrow
    assert "try --k" not in narrow
    short = hint([4, 8, 20], 20)  # 30 < 34 may still summarize: suggested, 40 not
    assert suggested(short) == [20, 30]
    assert all(k < 34 for k in suggested(hint([2, 4], 4)))


def test_the_unmet_line_names_what_was_asked():
    """Without an SLO or a resolve-loss limit, a plan whose candidates all end their
    tasks early says that, naming no limit the user never set."""
    from comem.plan.report import unmet, verdict
    from comem.plan.space import Candidate

    spec = small(kinds=["fc"])
    fc = [Candidate("fc", t, 1, "bf16", False, 0, "none", 1, False) for t in (1, 2)]
    rows = [_row(c, 1.0, tasks_ended_early=2, meets_slo=False) for c in fc]
    line = unmet(spec, rows)
    assert line == "NO simulated candidate finishes its tasks"
    assert "verdict: NO simulated candidate finishes its tasks" in verdict(rows, spec)
    limited = spec.model_copy(update={"max_resolve_loss_pp": 2.0, "slo_step_s": 0.5})
    lossy = [_row(c, 1.0, meets_resolve=False) for c in fc]
    line = unmet(limited, lossy)
    assert "SLO (p99 step <= 0.5 s)" in line and "2 pp of resolve rate" in line
    assert "finishes" not in line
    ok = [_row(c, 1.0) for c in fc]
    assert unmet(spec, ok) == "" and not verdict(ok, spec).startswith("verdict: NO")


def test_plan_runs_its_summarizing_candidates_at_the_lag_asked(tmp_path: Path) -> None:
    """--lag reaches every summarizing candidate's scenario (and the assumptions say it
    was not searched); full context has no lag."""
    from comem.plan.scenario import scenario_dict
    from comem.plan.space import PlanSpec, enumerate_candidates

    spec = PlanSpec(agent_model="qwen3-32b", gpu="h100_sxm", gpus=2, agents=4, lag=3)
    kinds = {}
    for c in enumerate_candidates(spec):
        kinds.setdefault(c.kind, scenario_dict(spec, c)["architectures"][0].get("lag"))
    assert kinds.pop("fc") is None and set(kinds.values()) == {3}, kinds
    from comem.plan.report import assumptions

    assert any("lag 3 (--lag; not searched)" in line for line in assumptions(spec))


def test_a_plan_on_a_gpu_outside_the_serving_rows_says_so() -> None:
    from comem.plan.report import band_caveats

    spec = PlanSpec(agent_model="qwen3-32b", gpu="b200_sxm", gpus=2, agents=4, kinds=["fc"])
    rows = rank(spec, estimate(spec, enumerate_candidates(spec)), {})
    (caveat,) = band_caveats(spec, rows)
    assert (
        caveat.startswith("caveat: b200_sxm: outside the serving rows") and "too narrow" in caveat
    )
    assert band_caveats(spec.model_copy(update={"gpu": "h200_sxm"}), rows) == []


def test_the_plan_says_how_far_its_pruning_estimate_ran_from_the_simulation() -> None:
    from comem.plan.report import estimate_spread

    spec = small(kinds=["fc", "kso"], k_values=[2])
    estimates = estimate(spec, enumerate_candidates(spec))
    steps = {e.candidate.key(): 2.0 * e.mean_step_s for e in estimates[:3]}  # all 0.5x
    steps[estimates[0].candidate.key()] = 0.5 * estimates[0].mean_step_s  # one at 2x
    simulated = {
        k: {"mean_step_s": v, "p99_step_s": v, "steps_per_s": 1.0, "tasks_ended_early": 0,
            "tasks": 6, "preemptions": 0, "kv_peak": 0.5}
        for k, v in steps.items()
    }  # fmt: skip
    text = estimate_spread(rank(spec, estimates, simulated))
    assert "ran 0.50-2.00x the simulated mean step (median 0.50x)" in text, text
    assert "over the 3 simulated" in text
    assert estimate_spread(rank(spec, estimates, {})) == ""


def test_the_verdict_says_when_its_full_context_baseline_ended_tasks_early():
    """A full-context baseline cut by max_model_len (or a KV cache smaller than one
    context) is over the steps it ran and resolves nothing: the verdict says so."""
    from comem.plan.rank import PlanRow
    from comem.plan.report import verdict
    from comem.plan.space import Candidate

    kso = Candidate("kso", 4, 1, "bf16", False, 4, "co-located", 4, False)
    fc = Candidate("fc", 2, 1, "bf16", False, 0, "none", 1, False)

    def row(c: Candidate, step: float, early: int = 0, rate: float = 0.5) -> PlanRow:
        return PlanRow(
            0, c.label, c.gpus_used, step, 9, False, True, mean_step_s=step,
            candidate=c.__dict__, tasks_ended_early=early, resolve_rate=rate,
        )  # fmt: skip

    spec = small()
    fair = verdict([row(kso, 1.0), row(fc, 3.0)], spec)
    assert "3.00x faster" in fair and "early" not in fair
    cut = verdict([row(kso, 1.0), row(fc, 3.0, early=32, rate=0.0)], spec)
    assert "which ended 32 task(s) early" in cut and "resolve rate 0.0%" in cut
    # ranked by the mean, a deployment whose tail is worse says so
    tail = [row(kso, 1.0), row(fc, 3.0)]
    tail[0].p99_step_s, tail[1].p99_step_s = 20.0, 8.0
    assert "its p99 step is 2.50x full context's (20.00 s against 8.00 s" in verdict(tail, spec)
    tail[0].p99_step_s = 7.0
    assert "p99" not in verdict(tail, spec)
    # no step finished on either side: nothing to compare, and it says so (it used to
    # say no full context was simulated)
    none = verdict([row(kso, float("nan")), row(fc, float("nan"), early=32, rate=0.0)], spec)
    assert "nothing to compare by" in none and "FC, agent TP2 bf16, which ended 32" in none


def test_a_candidate_that_cannot_run_is_left_out_and_said():
    """A deployment the engine cannot make progress on (its simulation ends in an input
    error) is one row that says why: never chosen, never simulated again in this plan;
    the plan goes on with the rest."""
    from comem.plan.report import run_errors
    from comem.plan.run import next_round

    spec = small(kinds=["fc", "kso"])
    estimates = estimate(spec, enumerate_candidates(spec))
    broken, fine = estimates[0].candidate, estimates[1].candidate
    simulated = confirm(spec, [fine])
    simulated[broken.key()] = {"key": broken.key(), "error": "engine 'x': no progress possible"}
    rows = rank(spec, estimates, simulated)
    (row,) = [r for r in rows if r.label == broken.label]
    assert row.error and not row.simulated and not row.eligible
    assert rows[0].label == fine.label
    assert run_errors(rows) == [f"{broken.label} could not run, left out: {row.error}"]
    more = next_round(spec.model_copy(update={"slo_step_s": 1e9}), estimates, rows)
    assert more and broken not in more  # the others are still worth a round; it is not


def test_the_baseline_is_a_full_context_deployment_that_can_hold_a_task():
    """Llama-3.1-70B on L40S with 80-step tasks: the fastest full context by estimate (TP4
    replicas) cannot hold one task's peak context, so it would end every task early; the
    verdict's baseline must be one that can (TP8), simulated whatever its estimate."""
    from comem.plan.estimate import select

    spec = PlanSpec.model_validate({
        "agent_model": "llama-3.1-70b", "gpu": "l40s", "gpus": 8, "agents": 32,
        "steps": 80, "kinds": ["fc", "cp"], "max_model_len": 131072, "offload": [False],
        "workload_set": {"action_tokens": 250, "observation_tokens": 600, "tool_s": 3.0},
    })  # fmt: skip
    estimates = estimate(spec, enumerate_candidates(spec))
    fc = sorted((e for e in estimates if e.candidate.kind == "fc"),
                key=lambda e: e.prune_step_s)  # fmt: skip
    assert fc[0].kv_bound_agents == 0  # the regime: the estimate's favourite holds none
    holding = [e.candidate for e in fc if e.kv_bound_agents >= 1]
    assert holding and holding[0] in select(spec, estimates)


def test_a_workload_scenario_brings_its_agents_context_limit():
    """Tasks sized for a scenario's 131072-token agent are planned with it: at 65536 every
    full-context baseline ended its tasks early (a new user's DeepSWE plan read 1.09x
    against a baseline that solved nothing). A limit given explicitly wins."""
    from comem.plan.space import scenario_max_model_len

    path = str(Path(__file__).resolve().parents[2] / "scenarios" / "paper_latency_deepswe.toml")
    assert scenario_max_model_len(path) == 131072  # its FC agent's, not its KSO agent's 65536
    assert PlanSpec.model_validate({"workload_scenario": path}).max_model_len == 131072
    given = {"workload_scenario": path, "max_model_len": 32768}
    assert PlanSpec.model_validate(given).max_model_len == 32768
    assert PlanSpec.model_validate({}).max_model_len == 65536


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"4096"', "without quotes"), ("true", "must be a number"), ("0", "greater than"),
     ("4096.0", None)],
)  # fmt: skip
def test_a_workload_scenario_s_odd_max_model_len_is_read_as_the_scenario_reads_it(
    tmp_path: Path, value: str, expected: str | None
) -> None:
    """A value the scenario refuses is refused naming the file and field (not replaced by
    the engine default without a word); one it accepts (4096.0) is the same number."""
    from calibration.errors import ComemInputError
    from comem.plan.space import scenario_max_model_len

    path = tmp_path / "w.toml"
    path.write_text(
        '[workload]\nagents = 4\n[[architectures]]\nname = "FC"\nkind = "fc"\n'
        f'agent = {{ model = "qwen3-4b", max_model_len = {value} }}\n'
    )
    if expected is None:
        assert scenario_max_model_len(path) == 4096
        return
    with pytest.raises(ComemInputError, match=f"w.toml: architectures.0.agent.*{expected}"):
        scenario_max_model_len(path)


def test_plan_json_holds_no_nan_where_no_candidate_finished(tmp_path: Path) -> None:
    """max_model_len 1: every simulated candidate ends its tasks at once (NaN latencies);
    plan.json is still JSON (null), which has no NaN."""
    out = tmp_path / "plan"
    proc = subprocess.run(
        [sys.executable, "-m", "comem", "plan", "--agent-model", "qwen3-4b", "--gpu",
         "h100_sxm", "--gpus", "1", "--agents", "2", "--steps", "4", "--top", "1",
         "--workers", "1", "--k", "2", "--offload", "off", "--dtypes", "bf16", "--kinds",
         "fc", "cp", "--max-model-len", "1", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    def refuse(name: str) -> None:
        raise AssertionError(f"plan.json holds {name}")

    json.loads((out / "plan.json").read_text(), parse_constant=refuse)

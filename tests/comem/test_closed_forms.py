"""``comem theory SCENARIO``: the closed forms on a user's scenario agree with its simulation
where their assumptions hold, and the crossover they give is where the speedup crosses 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import REPO_ROOT, assert_user_error, run_comem

from calibration.errors import ComemInputError
from comem.closed_forms import MAX_AGENTS_SCAN, evaluate, text_report
from sim.scenario import run_scenario, scenario_from

VARIANTS = str(REPO_ROOT / "scenarios" / "paper_latency_glm47_kso_variants.toml")


def _scenario(agents: int, **workload: Any) -> Any:
    data = {
        "workload": {"agents": agents, "steps": 12, "system_tokens": 500,
                     "observation_tokens": 300, "action_tokens": 200, "summary_tokens": 400,
                     "tool_s": 0.5, **workload},
        "architectures": [
            {"name": "FC", "kind": "fc", "agent": {"model": "llama-3-8b"}},
            {"name": "KSO", "kind": "kso", "k": 4, "lag": 1, "retain": 1,
             "agent": {"model": "llama-3-8b"}, "memory": {"model": "qwen3-4b"}},
            {"name": "CP", "kind": "cp", "k": 4, "retain": 1, "agent": {"model": "llama-3-8b"}},
        ],
    }  # fmt: skip
    return scenario_from(data, [], "test")


@pytest.mark.parametrize("agents", [1, 8])
def test_the_forms_agree_with_the_simulation_where_their_assumptions_hold(agents: int) -> None:
    """Identical agents, fixed tool time, every context in the KV cache: the simulation's
    speedups are the forms' to the surrogate's error (the same on both sides, so the ratio
    is closer than either latency)."""
    scenario = _scenario(agents)
    summary = run_scenario(scenario).summary()
    forms = evaluate(scenario)
    simulated = summary["comparison"]["metrics"]["step"]["speedup"]
    assert forms["fc"]["kv_bound_agents"] >= agents  # the regime the forms price
    for row in forms["rows"]:
        name = row["architecture"]
        assert row["speedup"] == pytest.approx(simulated[name], rel=0.03), name
        sim_step = summary["architectures"][name]["mean_step_latency_s"]
        assert row["step_s"] == pytest.approx(sim_step, rel=0.12), name


@pytest.mark.parametrize(("agent_dp", "memory_dp"), [(4, 1), (1, 4)])
def test_a_memory_engine_serves_the_summaries_of_every_agent_replica(
    agent_dp: int, memory_dp: int
) -> None:
    """Data parallelism: each agent replica batches its share of the agents, and the
    memory engine's replicas share the summaries of all of them (not one agent replica's
    share): SM's blocking summaries are priced as the simulation runs them."""
    data = _scenario(16).model_dump()
    agent = {"model": "llama-3-8b", "data_parallel_size": agent_dp}
    data["architectures"] = [
        {"name": "FC", "kind": "fc", "agent": agent},
        {"name": "SM", "kind": "sm", "k": 4, "retain": 1, "agent": agent,
         "memory": {"model": "qwen3-4b", "data_parallel_size": memory_dp}},
    ]  # fmt: skip
    scenario = scenario_from(data, [], "test")
    simulated = run_scenario(scenario).summary()["comparison"]["metrics"]["step"]["speedup"]
    (row,) = evaluate(scenario)["rows"]
    assert evaluate(scenario)["fc"]["kv_bound_agents"] >= 16  # the regime the forms price
    assert row["speedup"] == pytest.approx(simulated["SM"], rel=0.03)


def test_the_crossover_is_where_the_speedup_crosses_one() -> None:
    """More agents share FC's long prefills, so a summarizing architecture that loses
    alone wins from some load on: below the crossover it is slower, from it faster."""
    from sim.scenario import load_scenario

    def kso(agents: int) -> dict[str, Any]:
        s = load_scenario(VARIANTS, [f"workload.agents={agents}"])
        return next(r for r in evaluate(s)["rows"] if r["architecture"] == "KSO")

    n = kso(1)["crossover_agents"]
    assert kso(1)["crossover_why"] == "lockstep" and n is not None and 1 < n <= MAX_AGENTS_SCAN
    assert kso(n - 1)["speedup"] <= 1.0 < kso(n)["speedup"]


def test_no_crossover_is_claimed_past_the_architectures_own_kv_limit() -> None:
    """Past FC's KV limit FC preempts, which the forms do not price; an architecture whose
    own contexts no longer fit there preempts too: no crossover is claimed for it."""
    from sim.scenario import load_scenario

    result = evaluate(load_scenario(VARIANTS), ks=[4, 32])
    rows = [r for scan in result["k_scan"].values() for r in scan]
    assert any(r["crossover_why"] == "own-kv" for r in rows)  # k = 32 holds 7 agents
    for r in rows:
        assert r["crossover_agents"] is None or r["crossover_agents"] <= r["kv_bound_agents"]
        assert (r["crossover_agents"] is None) == (r["crossover_why"] in ("own-kv", ""))


def test_the_k_scan_keeps_the_scenarios_k_and_only_ks_that_summarize() -> None:
    result = evaluate(_scenario(2), ks=[2, 8, 12, 40])
    scanned = [r["k"] for r in result["k_scan"]["KSO"]]
    assert scanned == [2, 4, 8]  # 4 is the scenario's; 12 and 40 make no summary in 12 steps
    assert any("k 12, 40: no summary in a 12-step task" in n for n in result["notes"])
    # a larger k loses less in solved tasks (the fitted model: each summary costs)
    pp = [r["resolve_pp"] for r in result["k_scan"]["KSO"]]
    assert pp == sorted(pp)


def test_the_resolve_pp_carries_the_runs_interval_and_says_when_it_extrapolates() -> None:
    """The same number, interval and extrapolation flag as `comem run`'s resolve pp: k = 2
    is below the effectiveness fit's k range (3-34), k = 4 inside it."""
    from sim.effectiveness import policy_features, resolve_delta, resolve_rate

    scenario = _scenario(2)
    result = evaluate(scenario, ks=[2, 4])
    fc = resolve_rate(policy_features(scenario.architectures[0]), scenario.effectiveness)
    for r in result["k_scan"]["KSO"]:
        kso = scenario.architectures[1].model_copy(update={"k": r["k"]})
        rate = resolve_rate(policy_features(kso), scenario.effectiveness)
        delta = resolve_delta(rate, fc)
        assert (r["resolve_pp"], r["resolve_pp_low"], r["resolve_pp_high"]) == pytest.approx(
            (delta.pp, delta.low, delta.high)
        )
        assert r["resolve_extrapolated"] is (r["k"] == 2)
    text = "\n".join(text_report(result))
    assert "^" in next(line for line in text.splitlines() if line.lstrip().startswith("2 "))
    assert "against FC's 50.0%" in text


def test_without_full_context_there_is_nothing_to_compare() -> None:
    data = _scenario(1).model_dump()
    data["architectures"] = data["architectures"][1:]
    with pytest.raises(ComemInputError, match="no fc architecture"):
        evaluate(scenario_from(data, [], "test"))


def test_the_command_answers_and_refuses_in_one_line(tmp_path: Path) -> None:
    proc = run_comem("theory", VARIANTS, "--k", "4", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {r["architecture"] for r in result["rows"]} == {"KSO", "KSO-authors"}
    assert all(r["speedup"] > 0 for scan in result["k_scan"].values() for r in scan)
    assert all(not r["speedup_by_agents"] for scan in result["k_scan"].values() for r in scan)
    curves = json.loads(run_comem("theory", VARIANTS, "--k", "4", "--json", "--curves").stdout)
    (curve,) = [r["speedup_by_agents"] for r in curves["k_scan"]["KSO"] if r["k"] == 4]
    at = curves["shape"]["agents"]  # the curve at the scenario's load is its row's speedup
    assert curve[at - 1] == pytest.approx(
        next(r["speedup"] for r in curves["k_scan"]["KSO"] if r["k"] == 4)
    )
    text = run_comem("theory", VARIANTS)
    assert text.returncode == 0 and "fastest k is" in text.stdout, text.stderr
    assert_user_error(run_comem("theory", "--k", "4"), "need a scenario")
    assert_user_error(run_comem("theory", str(tmp_path / "missing.toml")), "missing.toml")


def test_a_memory_model_on_the_agents_gpus_is_priced_as_blocking() -> None:
    """Co-located engines take turns on the GPUs: CoMem's summaries cannot overlap the
    agent's work, so the forms price it as the blocking SM, and say so."""
    from sim.scenario import load_scenario

    path = REPO_ROOT / "scenarios/paper/glm47_synthetic_benchmark__agent_colocated_with_memory.toml"
    (row,) = evaluate(load_scenario(path))["rows"]
    assert row["priced_as"] == "sm" and any("shares the agent's GPUs" in n for n in row["notes"])


def test_the_figure_is_written_and_replaces_only_a_figure(tmp_path: Path) -> None:
    png = tmp_path / "speedup.png"
    proc = run_comem("theory", VARIANTS, "--k", "4", "8", "--figure", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in proc.stdout
    mine = tmp_path / "notes.png"
    mine.write_text("my notes")
    assert_user_error(run_comem("theory", VARIANTS, "--figure", str(mine)), "is not a figure")
    assert mine.read_text() == "my notes"
    photo = tmp_path / "photo.png"  # an image of the user's, not one this tool drew
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert_user_error(run_comem("theory", VARIANTS, "--figure", str(photo)), "this tool drew")
    assert photo.read_bytes()[8:] == bytes(64)
    again = run_comem("theory", VARIANTS, "--k", "4", "--figure", str(png))  # its own: replaced
    assert again.returncode == 0, again.stderr
    assert_user_error(run_comem("theory", VARIANTS, "--figure", VARIANTS), "scenario file")


def test_a_k_whose_own_kv_cache_fills_first_claims_no_crossover() -> None:
    """DeepSWE's benchmark: FC's KV cache holds 19 agents' peak contexts. KSO at k = 4 holds
    more and so wins past that limit (FC preempts); at k = 32 it holds 14, preempts first,
    and the simulation has it slower than FC up to 128 agents: the forms must not claim
    it wins from FC's limit."""
    from comem.closed_forms import _crossover, text_report
    from sim.scenario import load_scenario

    result = evaluate(load_scenario(REPO_ROOT / "scenarios/paper_latency_deepswe.toml"), [4, 32])
    fc_kv = result["fc"]["kv_bound_agents"]
    rows = {r["k"]: r for r in result["k_scan"]["KSO"]}
    assert rows[4]["kv_bound_agents"] > fc_kv and rows[32]["kv_bound_agents"] < fc_kv
    assert (rows[4]["crossover_agents"], rows[4]["crossover_why"]) == (fc_kv + 1, "fc-kv")
    assert (rows[32]["crossover_agents"], rows[32]["crossover_why"]) == (None, "own-kv")
    assert "? (own KV 14)" in "\n".join(text_report(result))
    assert _crossover(5, 19, 8) == (5, "lockstep")  # its contexts fit where it wins
    assert _crossover(5, 19, 3) == (None, "own-kv")  # past its own KV limit: unpriced
    assert _crossover(None, 600, 3) == (None, "")


def test_the_surrogates_error_is_reported_and_warned_of_where_large() -> None:
    """The forms price each engine by a linear surrogate: a dense model's fits to a few
    percent, a MoE's misses by more, and the output says so (not only that it is a
    surrogate)."""
    from comem.closed_forms import SURROGATE_WARN_MAPE, text_report

    dense = evaluate(_scenario(4))
    assert set(dense["surrogate_error"]) == {"FC agent", "KSO agent", "KSO memory",
                                             "CP agent"}  # fmt: skip
    assert all(v["mape"] < SURROGATE_WARN_MAPE for v in dense["surrogate_error"].values())
    assert not any("surrogate misses" in n for n in dense["notes"])
    data = _scenario(4).model_dump()
    for arch in data["architectures"]:
        arch["agent"]["model"] = "qwen3-30b-a3b"
    moe = evaluate(scenario_from(data, [], "test"))
    assert moe["surrogate_error"]["FC agent"]["mape"] > SURROGATE_WARN_MAPE
    text = "\n".join(text_report(moe))
    assert "surrogate error (mean" in text and "the linear surrogate misses" in text


def test_past_the_scan_the_scenario_s_own_agents_are_priced() -> None:
    """At 1000 agents (past the 512 the scan covers) FC's step latency and each speedup
    are at 1000 agents, not at the scan's last point."""
    scan_end, past = evaluate(_scenario(MAX_AGENTS_SCAN)), evaluate(_scenario(1000))
    assert past["fc"]["step_s"] > 1.5 * scan_end["fc"]["step_s"]
    assert past["rows"][0]["step_s"] > 1.5 * scan_end["rows"][0]["step_s"]


def test_a_window_longer_than_the_task_holds_no_more_than_the_task() -> None:
    """retain + lag + k past the task's steps: the context is at most the whole task (and
    a summary), so the summarizer's KV cache holds at least FC's agents, not fewer; a k
    the task never reaches makes no summary and loses nothing."""
    data = _scenario(8).model_dump()
    data["architectures"][1].update(retain=1000, lag=100)
    data["architectures"][2]["k"] = 100
    result = evaluate(scenario_from(data, [], "test"))
    kso, cp = result["rows"]
    fc_kv = result["fc"]["kv_bound_agents"]
    assert kso["kv_bound_agents"] >= fc_kv * 0.9 and cp["kv_bound_agents"] == fc_kv
    assert cp["resolve_pp"] == pytest.approx(0.0)


def test_a_max_model_len_below_the_first_prompt_says_so() -> None:
    """FC's first prompt passes max_model_len: 'at its first step', not 'near step -1'; a
    summarizer whose own contexts pass its limit is noted and resolves at the capped rate."""
    data = _scenario(8).model_dump()
    data["architectures"][0]["agent"]["max_model_len"] = 1
    data["architectures"][1]["agent"]["max_model_len"] = 100
    result = evaluate(scenario_from(data, [], "test"))
    text = " ".join(result["notes"])
    assert "at its first step" in text and "step -" not in text
    kso = result["rows"][0]
    assert any("passes its agent's max_model_len" in n for n in kso["notes"])


def test_theory_prices_a_million_agents_without_the_simulation_budget(tmp_path: Path) -> None:
    """The forms simulate nothing: 10**6 agents is one number, not a budget refusal that
    names a flag theory lacks; their own budget counts steps, and --allow-large lifts it."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(_TOML)
    out = run_comem("theory", str(scenario), "--set", "workload.agents=1000000", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["shape"]["agents"] == 1000000
    assert_user_error(
        run_comem("theory", str(scenario), "--set", "workload.steps=100000"),
        "task steps priced by the closed forms",
    )
    assert "--allow-large" in run_comem("theory", "--help").stdout


def test_a_figure_whose_architecture_scans_no_k_is_drawn(tmp_path: Path) -> None:
    """A 2-step task: no k below its steps; the figure says so instead of a traceback."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(_TOML)
    fig = tmp_path / "f.png"
    out = run_comem("theory", str(scenario), "--set", "workload.steps=2", "--figure", str(fig))
    assert out.returncode == 0, out.stderr
    assert fig.read_bytes().startswith(b"\x89PNG")


def test_a_measured_profile_is_refused_naming_its_architecture(tmp_path: Path) -> None:
    from calibration.measured import MeasuredProfile
    from calibration.surrogate import LinearSurrogate

    sur = LinearSurrogate(c0=4e-3, c1=2e-5, c2=4e-4, c3=3e-8, c4=1e-8, mape=0.0,
                          max_rel_error=0.0, p90_rel_error=0.0)  # fmt: skip
    path = MeasuredProfile(sur, 2e-3, 8192, 2e-8, 2e-3, kv_capacity_tokens=1 << 20,
                           block_size=16).save(tmp_path / "p.json")  # fmt: skip
    data = _scenario(8).model_dump()
    data["architectures"][1]["memory"]["profile"] = str(path)
    with pytest.raises(ComemInputError, match="architecture 'KSO' memory"):
        evaluate(scenario_from(data, [], "test"))


_TOML = """
[workload]
agents = 4
steps = 8
system_tokens = 500
observation_tokens = 300
action_tokens = 200
summary_tokens = 400
[[architectures]]
name = "FC"
kind = "fc"
agent = { model = "qwen3-4b" }
[[architectures]]
name = "KSO"
kind = "kso-authors"
retain = 3
agent = { model = "qwen3-4b" }
memory = { model = "qwen3-4b" }
"""


def test_a_second_full_context_architecture_is_named_as_not_priced() -> None:
    data = _scenario(2).model_dump()
    data["architectures"].append({**data["architectures"][0], "name": "FC-TP2"})
    result = evaluate(scenario_from(data, [], "test"))
    assert result["fc"]["architecture"] == "FC"
    assert any("first full-context architecture, FC; FC-TP2 not priced" in n
               for n in result["notes"])  # fmt: skip

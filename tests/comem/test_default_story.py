"""Issue 24: one default story (make run, comem run, plan and paper agree on the default
experiment and name what they ran), the workload flags, explain, plain progress lines."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import assert_user_error, run_comem

from calibration.errors import ComemInputError
from sim.paper import DEFAULT_SCENARIO, paper_files
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
OLD = "scenarios/paper_latency_glm47.toml"
TINY = ["--set", "workload.agents=2", "--set", "workload.steps=4"]


def test_make_run_comem_run_plan_and_paper_name_one_default_experiment() -> None:
    from comem.plan.scenario import _workload
    from comem.plan.space import PlanSpec

    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "comem run" in recipe and ".toml" not in recipe.split("#")[0]  # no other file
    assert paper_files()[0].resolve() == DEFAULT_SCENARIO.resolve()  # paper's first row
    default = load_scenario(DEFAULT_SCENARIO)
    spec = PlanSpec.model_validate({})  # a bare `comem plan`
    comem = next(a for a in default.architectures if a.kind != "fc")
    assert spec.agent_model == comem.agent.model and spec.gpu == comem.agent.gpu
    assert spec.agents == default.workload.agents
    assert spec.memory_model == comem.memory.model and spec.retain == comem.retain
    workload = load_scenario(DEFAULT_SCENARIO, []).workload.model_dump()
    planned = _workload(spec)
    for key, value in planned.items():
        assert workload[key] == value, key


@pytest.mark.slow
def test_comem_run_without_a_file_runs_the_default_and_names_its_deployments() -> None:
    proc = run_comem("run", *TINY, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "the default experiment" in proc.stderr
    out = proc.stdout
    assert "workload: 2 agents x 1 task(s), closed-batch; 4 steps" in out
    assert re.search(r"FC: fc: .*8 x h200_sxm: agent glm-4.7 bf16 TP8\+EP", out)
    assert re.search(r"CoMem: kso-authors: retain 3.*agent glm-4.7 fp8 TP4\+EP.*memory"
                     r" qwen3-4b bf16 TP4 on 4 own GPUs", out)  # fmt: skip
    verdict = re.search(r"verdict: CoMem is ([\d.]+)x (faster|slower) than FC", out)
    assert verdict, out
    data = json.loads(run_comem("run", *TINY, "--json").stdout)
    speedup = data["comparison"]["metrics"]["step"]["speedup"]["CoMem"]
    shown = float(verdict.group(1))
    assert shown == pytest.approx(speedup if speedup >= 1 else 1 / speedup, abs=0.006)
    assert data["described"]["architectures"]["CoMem"]["gpus"] == 8


def test_mean_context_is_what_a_full_context_agent_reads(tmp_path: Path) -> None:
    from sim.describe import mean_context_tokens

    proc = run_comem("run", OLD, *TINY, "--set", "workload.input_target_tokens=0",
                     "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    fc = requests[requests["engine"] == "FC/agent"]
    scenario = load_scenario(OLD, TINY[1::2])
    assert fc["prompt_tokens"].mean() == pytest.approx(mean_context_tokens(scenario.workload))


@pytest.mark.parametrize(
    "flags,expect",
    [
        ({"context_tokens": 20000, "decode_tokens": 300}, {"action_tokens": 300, "steps": 79}),
        ({"context_tokens": 20000, "steps": 20}, {"steps": 20, "system_tokens": 8372}),
        ({"tool_s": 5.0, "observation_tokens": 100}, {"tool_s": 5.0, "observation_tokens": 100}),
    ],
)
def test_workload_flags_map_onto_fields_and_give_the_asked_mean_context(flags, expect) -> None:
    from sim.describe import mean_context_tokens
    from sim.workload_flags import WorkloadFlags, as_sets, workload_fields

    base = load_scenario(DEFAULT_SCENARIO).workload.model_dump(mode="json", exclude_none=True)
    fields, note = workload_fields(base, WorkloadFlags(**flags))
    assert fields == expect and note.startswith("workload flags:")
    scenario = load_scenario(DEFAULT_SCENARIO, as_sets(fields))
    if "context_tokens" in flags:  # within half a step's tokens of the asked mean
        w = scenario.workload
        per_step = w.observation_tokens + w.action_tokens
        assert abs(mean_context_tokens(w) - flags["context_tokens"]) <= per_step / 2


def test_workload_flags_refuse_what_cannot_be() -> None:
    from sim.workload_flags import WorkloadFlags, workload_fields

    base = {"kind": "synthetic", "system_tokens": 500, "observation_tokens": 200}
    with pytest.raises(ComemInputError, match="fewer --steps"):
        workload_fields(base, WorkloadFlags(context_tokens=2000, steps=100))
    with pytest.raises(ComemInputError, match="below the first prompt"):
        workload_fields(base, WorkloadFlags(context_tokens=100))
    with pytest.raises(ComemInputError, match="synthetic workload"):
        workload_fields({"kind": "fitted"}, WorkloadFlags(decode_tokens=300))
    # a trace or fitted workload's steps are its max_steps
    assert workload_fields({"kind": "fitted"}, WorkloadFlags(steps=7))[0] == {"max_steps": 7}
    proc = run_comem("run", "--context-tokens", "2000", "--steps", "500")
    assert_user_error(proc, "--context-tokens 2000", "fewer --steps")
    assert_user_error(run_comem("run", "--tool-s", "-1"), "--tool-s")


def test_run_flags_print_the_mapping_and_change_the_workload() -> None:
    proc = run_comem("run", *TINY[:2], "--decode-tokens", "300", "--tool-s", "2", "--steps", "3",
                     env={"COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "workload.action_tokens = 300" in proc.stderr
    assert "3 steps" in proc.stdout and "decoded 300 tokens, tool 2 s" in proc.stdout


@pytest.mark.slow
def test_progress_is_plain_lines_off_a_terminal() -> None:
    proc = run_comem("run", *TINY)  # stderr is a pipe here
    lines = [ln for ln in proc.stderr.splitlines() if " tasks of the 2 architectures, " in ln]
    assert lines and lines[-1].startswith(
        "glm47_synthetic_benchmark__agent_dedicated_tp4: CoMem (2 of 2): 4/4 tasks of the 2"
    )
    assert lines[-1].split()[5] == "4/4"  # 2 agents x 2 architectures, the last line: all
    quiet = run_comem("run", *TINY, "--json")
    assert " tasks, " not in quiet.stderr


def test_plan_warns_on_the_edge_and_writes_the_baseline(tmp_path: Path) -> None:
    from comem.plan.rank import PlanRow
    from comem.plan.report import edge_warnings, verdict
    from comem.plan.space import Candidate, PlanSpec

    spec = PlanSpec.model_validate({"agent_model": "llama-3-8b", "gpu": "h100_sxm", "gpus": 4,
                                    "agents": 4, "k_values": [2, 4]})  # fmt: skip

    def row(c: Candidate, step: float) -> PlanRow:
        return PlanRow(0, c.label, c.gpus_used, step, 9, False, True, mean_step_s=step,
                       candidate=c.__dict__)  # fmt: skip

    kso = Candidate("kso", 4, 1, "bf16", False, 4, "co-located", 4, False)
    fc = Candidate("fc", 2, 1, "bf16", False, 0, "none", 1, False)
    notes = edge_warnings(spec, [row(kso, 1.0), row(fc, 3.0)])
    assert any("best k (4) is the largest tried" in n and "try --k 4 6 8" in n for n in notes)
    # TP 4 on the 4 GPUs allowed is the user's budget, not an edge of the search
    assert not any("agent TP" in n for n in notes)
    wide = spec.model_copy(update={"gpus": 16})
    tp8 = Candidate("kso", 8, 1, "bf16", False, 8, "co-located", 4, False)
    assert any("best agent TP (8) is the largest" in n for n in edge_warnings(wide, [row(tp8, 1)]))
    # past the task's length a k never summarizes: no k to suggest, and it says so
    short = spec.model_copy(update={"steps": 6})
    (edge,) = [n for n in edge_warnings(short, [row(kso, 1.0)]) if "best k" in n]
    assert "no larger k is worth trying" in edge and "try --k" not in edge
    smallest = spec.model_copy(update={"k_values": [4, 8]})
    (hint,) = [n for n in edge_warnings(smallest, [row(kso, 1.0)]) if "best k" in n]
    assert "smallest tried" in hint and "try --k 2 3 4" in hint
    middle = Candidate("kso", 2, 1, "bf16", False, 2, "co-located", 2, False)
    assert not any("best k" in n for n in edge_warnings(spec.model_copy(
        update={"k_values": [1, 2, 4]}), [row(middle, 1.0)]))  # fmt: skip
    assert "3.00x faster than the best full context" in verdict([row(kso, 1.0), row(fc, 3.0)], spec)


def test_explain_lists_the_inputs_that_differ_and_moves_each() -> None:
    from sim.explain import differing_inputs, explain, load_side

    sets = ["workload.agents=2", "workload.steps=6"]
    a = load_side(OLD, sets)
    b = load_side(OLD, [*sets, "workload.action_tokens=256", "architectures.1.k=2"])
    names = [i.name for i in differing_inputs(a, b)]
    assert names == ["workload.action_tokens", "CoMem: k"]
    result = explain(a, b, "step")
    rows = {r["input"]: r for r in result["inputs"]}
    # each swap is a real run: the input alone gives what B gives with only that input
    alone = load_side(OLD, [*sets, "architectures.1.k=2"])
    assert rows["CoMem: k"]["speedup"] == pytest.approx(explain(a, alone, "step")["b"]["speedup"])
    for r in rows.values():
        assert r["moves"] == pytest.approx(r["speedup"] / result["a"]["speedup"])
    # the cumulative path ends at B and its steps multiply to the whole gap exactly
    path = result["path"]
    assert [p["input"] for p in path] == names
    assert path[-1]["speedup"] == pytest.approx(result["b"]["speedup"])
    assert result["path_residual"] == pytest.approx(1.0)
    steps = math.prod(p["step"] for p in path)
    assert steps == pytest.approx(result["b"]["speedup"] / result["a"]["speedup"])
    assert explain(a, a, "step")["inputs"] == []
    # verdicts shared between explanations: a scenario already run is not run again, and
    # gives the same answer
    known: dict = {}
    ran: list[int] = []

    def done() -> None:
        ran.append(1)

    first = explain(a, b, "step", known=known, on_done=done)
    runs = len(ran)
    assert runs == len(known) > 0 and first == result
    assert explain(a, alone, "step", known=known, on_done=done) == explain(a, alone, "step")
    assert len(ran) == runs  # A, B alone and its one-input variant were all known


@pytest.mark.slow
def test_explain_on_the_paper_rows_finds_the_placement_and_reads_run_dirs(tmp_path) -> None:
    from sim.explain import differing_inputs, load_side

    colocated = "scenarios/paper/glm47_synthetic_benchmark__agent_colocated_with_memory.toml"
    inputs = differing_inputs(load_side(str(DEFAULT_SCENARIO)), load_side(colocated))
    assert [i.name for i in inputs] == ["CoMem: placement"]
    assert "sharing GPUs" in inputs[0].b and "own GPUs" in inputs[0].a
    assert run_comem("run", OLD, *TINY, "--out", str(tmp_path / "r")).returncode == 0
    side = load_side(str(tmp_path / "r"))  # a run's --out: its config.json
    assert side.data["workload"]["agents"] == 2 and side.candidate == "KSO"
    proc = run_comem("explain", str(tmp_path / "r"), OLD, "--set-b", "workload.agents=2",
                     "--set-b", "workload.steps=4")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "(none: the two answers ran the same inputs)" in proc.stdout
    assert_user_error(run_comem("explain", str(tmp_path), OLD), "neither a plan's --out")


def test_sweep_summary_marks_a_best_k_on_the_grid_edge() -> None:
    from sim.sweep import summary
    from sim.sweep_table import summary_markdown

    speed = {(2, 1): 1.0, (2, 2): 1.5, (2, 4): 1.2, (4, 1): 0.9, (4, 2): 1.1, (4, 4): 1.3}
    rows = []
    for point, ((agents, k), x) in enumerate(speed.items()):
        for arch, kind, value in (("FC", "fc", 1.0), ("KSO", "kso", x)):
            rows.append({"point": point, "architecture": arch, "kind": kind, "error": "",
                         "grid.workload.agents": agents, "grid.architectures.1.k": k,
                         "speedup_step": value, "resolve_rate_delta_pp": -k / 2})  # fmt: skip
    result = summary(pd.DataFrame(rows))
    best = {r["grid.workload.agents"]: r for r in result["best_k"]}
    assert best[2]["grid.architectures.1.k"] == 2 and not best[2]["edge"]
    assert best[4]["grid.architectures.1.k"] == 4 and best[4]["edge"]
    assert result["winner"]["speedup"] == 1.5 and result["winner"]["edge"] == ["workload.agents"]
    text = summary_markdown(result)
    assert "| 4 | KSO | 4* | 1.30x | -2.0 |" in text and "| 2 | KSO | 2 | 1.50x |" in text


def _rows_for_figures(gpus: list[int]):
    from comem.plan.rank import PlanRow
    from comem.plan.space import Candidate

    out = []
    for i, g in enumerate(gpus):
        c = Candidate("kso" if i else "fc", g, 1, "bf16", False, 1 if i else 0,
                      "dedicated" if i else "none", 2, False)  # fmt: skip
        out.append(PlanRow(i, f"{c.label} #{i}", c.gpus_used, 1.0 + i, 9, False, True,
                           mean_step_s=1.0 + i, candidate=c.__dict__))  # fmt: skip
    return out


def test_plan_figure_reads_when_every_candidate_uses_the_same_gpus() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comem.plan.figure import _gpu_panel

    same = _rows_for_figures([4, 4, 4])
    for r in same:
        r.gpus = 4
    fig, ax = plt.subplots()
    _gpu_panel(ax, same)
    assert len(ax.patches) == 3  # one bar per candidate, not three dots on one x
    assert [t.get_text() for t in ax.get_yticklabels()] == [r.label for r in same]
    assert "every candidate uses 4 GPUs" in ax.get_title()
    plt.close(fig)
    fig, ax = plt.subplots()
    _gpu_panel(ax, _rows_for_figures([1, 2, 4]))
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no half GPUs
    plt.close(fig)


def test_paper_figure_marks_missing_bars_on_a_log_axis(tmp_path: Path, monkeypatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.paper import PAPER_METRICS, PaperRow, figure

    speed = {m: 1.2 for m in PAPER_METRICS} | {"task": None, "llm-index-peak": 9.0}
    rows = [PaperRow("exp", f"v{i}", "", "f.toml", "CoMem", "FC", dict(speed), 0.5, 0.4, 0, 0,
                     16) for i in range(2)]  # fmt: skip
    saved = {}
    monkeypatch.setattr(plt, "close", lambda fig: saved.setdefault("fig", fig))
    figure(rows, tmp_path / "p.png")
    ax = saved["fig"].axes[0]
    assert ax.get_yscale() == "log"
    assert sum(t.get_text() == "n/a" for t in ax.texts) == 2  # one missing bar per row
    assert any("n/a: nothing to compare" in t.get_text() for t in saved["fig"].texts)


@pytest.mark.slow
def test_plan_takes_the_workload_flags_and_prints_its_assumptions(tmp_path: Path) -> None:
    args = ["plan", "--agent-model", "llama-3-8b", "--gpu", "h100_sxm", "--gpus", "2",
            "--agents", "4", "--context-tokens", "3000", "--decode-tokens", "100",
            "--tool-s", "1", "--kinds", "fc", "kso", "--dtypes", "bf16", "--k", "2",
            "--offload", "off", "--top", "2", "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    proc = run_comem(*args)
    assert proc.returncode == 0, proc.stderr
    assert "workload.action_tokens = 100, workload.tool_s = 1.0" in proc.stderr
    assumptions = proc.stdout.split("assumptions:")[1].split("| rank")[0]
    assert "agents" in assumptions and "decoded 100 tokens, tool 1 s" in assumptions
    mean = re.search(r"mean full-context prompt ([\d,]+) tokens", assumptions)
    assert mean and abs(int(mean.group(1).replace(",", "")) - 3000) <= 150
    assert "verdict:" in proc.stdout and "chosen:" in proc.stdout
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["spec"]["workload_set"]["action_tokens"] == 100


def test_the_why_page_maps_the_question_as_the_workload_flags_do() -> None:
    from comem.why import DEFAULT, DEFAULT_SETS, OLD, USER_SETS
    from sim.config import read_toml
    from sim.workload_flags import WorkloadFlags, as_sets, workload_fields

    flags = WorkloadFlags(agents=64, context_tokens=20000, decode_tokens=300, tool_s=5.0)
    for path, sets in ((DEFAULT, DEFAULT_SETS), (OLD, USER_SETS)):
        fields, _ = workload_fields(read_toml(ROOT / path, "scenario")["workload"], flags)
        assert as_sets(fields) == sets, path


def test_verdict_says_when_a_side_finished_only_part_of_its_tasks() -> None:
    """A side whose tasks ended early (prompt past max_model_len) was timed over part of
    the work: the verdict line says so, beside the number."""
    from sim.describe import verdict_lines

    summary = {
        "comparison": {
            "reference": "FC",
            "metrics": {"step": {"label": "mean step latency", "speedup": {"CoMem": 1.29}}},
        },
        "architectures": {
            "FC": {"tasks": 16, "tasks_finished": 0, "ended_early": {"context_exceeded": 16}},
            "CoMem": {"tasks": 16, "tasks_finished": 16, "resolve_rate_delta_pp": 42.1},
        },
    }
    (line,) = verdict_lines(summary, "step")
    assert "1.29x faster than FC" in line
    assert line.endswith("over partial work: FC finished 0 of 16 tasks (context_exceeded 16)")
    summary["architectures"]["FC"].update(tasks_finished=16, ended_early={})
    (line,) = verdict_lines(summary, "step")
    assert "partial" not in line


def test_explain_shows_a_policy_by_the_fields_its_kind_has() -> None:
    """kso-authors has no k: its side of a policy row never shows one."""
    from sim.explain import _policy_text

    assert _policy_text({"kind": "kso-authors", "retain": 3}, ["k", "retain"]) == (
        "kind kso-authors, retain 3"
    )
    assert _policy_text({"kind": "kso", "k": 8}, ["k", "retain"]).startswith("kind kso, k 8")


def test_a_budget_refusal_says_which_fields_the_workload_flags_set() -> None:
    """--context-tokens derives the steps: a budget naming workload.steps says so."""
    proc = run_comem("run", "--context-tokens", "5000000")
    assert_user_error(proc, "workload.steps", "workload flags: workload.steps = ")


@pytest.mark.slow
def test_a_runs_config_json_runs_again_as_it_ran(tmp_path: Path) -> None:
    """``comem run out/config.json`` reruns a run (the default experiment's kso-authors
    included, whose config lists a k it refuses): the same tables, byte for byte."""
    first, again = tmp_path / "first", tmp_path / "again"
    assert run_comem("run", *TINY, "--out", str(first), "--json").returncode == 0
    proc = run_comem("run", str(first / "config.json"), "--out", str(again), "--json")
    assert proc.returncode == 0, proc.stderr
    for table in ("steps", "tasks", "requests"):
        a = (first / f"{table}.parquet").read_bytes()
        assert a == (again / f"{table}.parquet").read_bytes(), table


def test_explain_out_never_replaces_an_input_or_a_users_file(tmp_path) -> None:
    """``--out`` is refused over a compared answer, over a file of a compared run's
    directory and over an existing file that is not an earlier explanation; an earlier
    explanation is rewritten."""
    scenario = tmp_path / "a.toml"
    scenario.write_text(Path(OLD).read_text())
    assert_user_error(
        run_comem("explain", str(scenario), OLD, "--out", str(scenario)), "is the A file"
    )
    assert run_comem("run", OLD, *TINY, "--out", str(tmp_path / "r")).returncode == 0
    config = tmp_path / "r" / "config.json"
    before = config.read_bytes()
    assert_user_error(
        run_comem("explain", str(tmp_path / "r"), OLD, "--out", str(config)), "this command reads"
    )
    assert config.read_bytes() == before
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    assert_user_error(
        run_comem("explain", OLD, OLD, "--out", str(mine)), "not an earlier explanation"
    )
    assert mine.read_text() == "my notes\n"
    out = tmp_path / "why.md"
    for _ in range(2):  # the second run rewrites the first one's explanation
        proc = run_comem("explain", OLD, OLD, "--set-a", "workload.agents=2",
                         "--set-a", "workload.steps=4", "--set-b", "workload.agents=2",
                         "--set-b", "workload.steps=4", "--out", str(out))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("Verdict: speedup of CoMem")


def test_run_seeds_give_the_speedups_range() -> None:
    """--seeds 3: the verdict gives the range of the speedup over the three seeds, which
    holds the first seed's own speedup; too many seeds is one line before any run."""
    random_tools = ["--tool-s", "2", "--set", "workload.tool_s_dist=exponential"]
    proc = run_comem("run", *TINY, *random_tools, "--seeds", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    step = json.loads(proc.stdout)["comparison"]["metrics"]["step"]
    (name,) = [n for n in step["speedup"] if n != "FC"]
    seen = step["speedup_over_seeds"][name]
    assert len(seen) == 3 and seen[0] == step["speedup"][name]
    assert len(set(seen)) == 3  # each seed drew other tool times: three other runs
    text = run_comem("run", *TINY, "--seeds", "2", env={"COLUMNS": "200"})
    assert text.returncode == 0 and "over 2 seeds" in text.stdout
    assert_user_error(run_comem("run", *TINY, "--seeds", "21"), "--seeds 21")


def test_explain_names_a_shared_agent_as_shared_when_the_other_side_has_no_memory() -> None:
    """KSO co-located against CP (no memory engine): only the agent's placement compares,
    and it shares its GPUs; it used to read "own GPUs each"."""
    from sim.explain import _placement_inputs

    shared = {"gpu_group": "g", "gpu_memory_utilization": 0.75}
    kso = {"agent": dict(shared), "memory": dict(shared)}
    cp = {"agent": {"gpu_group": None, "gpu_memory_utilization": 0.9}, "memory": None}
    (placement,) = _placement_inputs(kso, cp)
    assert placement.a == "agent on GPUs it shares with the memory model (GPU memory 0.75)"
    assert placement.b == "agent on its own GPUs (GPU memory 0.9)"

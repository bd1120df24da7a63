"""Step 3 of ``comem plan``: confirm with the simulator. The chosen candidates run as
scenarios in parallel processes, each result kept as a point file named by everything it
depends on, so an interrupted plan resumes and another question never reads it."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from calibration.outputs import write_text
from comem.plan.scenario import scenario_dict
from comem.plan.space import Candidate, PlanSpec
from sim.workers import process_pool


def _simulate(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """Run one candidate's scenario (in a worker process)."""
    from sim.compare import architecture_summary, summaries_made
    from sim.config import validate
    from sim.scenario import Scenario, run_scenario

    data, key = job
    scenario = validate(Scenario, data, "plan", frozenset({"synthetic", "trace", "fitted"}))
    try:
        res = run_scenario(scenario).results[0]
    except ComemInputError as exc:  # a deployment that cannot run: one row says why
        return {"key": key, "error": str(exc)}
    s = architecture_summary(res)
    return {
        "key": key,
        "mean_step_s": s["mean_step_latency_s"],
        "p99_step_s": s["p99_step_latency_s"],
        "steps_per_s": s["throughput_steps_per_s"],
        "tasks_ended_early": s["tasks_ended_early"],
        "tasks": s["tasks"],
        "preemptions": s["preemptions"],
        "kv_peak": s["kv_peak_fraction"],
        # the share of its summaries that happened (refused ones lose nothing)
        "summaries_made": summaries_made(s) if s["kind"] != "fc" else 1.0,
        # why none was made, where none was: refused by an engine, or none due in time
        "summary_requests_refused": s.get("summary_requests_refused", 0),
    }


#: what a point file holds, checked when a plan resumes from it
POINT_FIELDS = (
    "mean_step_s", "p99_step_s", "steps_per_s", "tasks_ended_early", "preemptions",
    "summaries_made", "summary_requests_refused",
)  # fmt: skip


def point_key(spec: PlanSpec, c: Candidate) -> str:
    """The name of candidate ``c``'s point file: a hash of everything its simulation
    depends on, the whole scenario it runs (agents, models, GPU, workload, limits) and
    the bytes of the files that scenario reads (a trace, a model's config.json), so a plan
    re-run with other ``--agents`` (or model, or workload) in the same ``--out`` never
    reads another question's results: both sets of points coexist."""
    from calibration.input_files import files_digest

    scenario = scenario_dict(spec, c)
    digest = hashlib.sha256(json.dumps(scenario, sort_keys=True, default=str).encode())
    digest.update(files_digest(scenario).encode())
    return digest.hexdigest()[:24]


def _read_point(f: Path, key: str) -> dict[str, Any] | None:
    """A point file's result, or None when it is damaged (truncated, empty, another
    shape): the candidate is then simulated again, the file replaced."""
    from calibration.inputs import read_json

    if not f.exists():
        return None
    try:
        value = read_json(f, "plan point")  # its size limit; any defect: simulate again
    except ComemInputError:
        return None
    if not isinstance(value, dict) or value.get("point") != key:
        return None
    for name in POINT_FIELDS:
        v = value.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float):  # NaN: no step finished
            return None
        if v < 0 or v == math.inf:  # no simulation writes a negative or infinite figure
            return None
    tasks = value.get("tasks")
    if isinstance(tasks, int) and not 0 <= value["tasks_ended_early"] <= tasks:
        return None
    if value["summaries_made"] > 1:  # a share
        return None
    return value


def _cost(spec: PlanSpec, c: Candidate) -> tuple[int, int]:
    """Rough relative cost of simulating ``c``, for starting the longest first: a memory
    engine on the agent's GPUs, then one of its own, then none; more agents per replica."""
    placement = {"co-located": 2, "dedicated": 1}.get(c.memory_placement, 0)
    return placement, math.ceil(spec.agents / c.agent_dp)


def confirm(
    spec: PlanSpec,
    candidates: list[Candidate],
    workers: int = 1,
    points: Path | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Step 3: simulate candidates, the costliest first (resuming from ``points``: one JSON
    file per candidate, named by :func:`point_key`). Returns results by
    ``Candidate.key()``; the result does not depend on the number of workers."""
    done: dict[str, dict[str, Any]] = {}
    todo = []
    files: dict[str, str] = {}  # candidate key -> point key
    for c in sorted(candidates, key=lambda c: _cost(spec, c), reverse=True):
        pk = files[c.key()] = point_key(spec, c)
        kept = _read_point(points / f"{pk}.json", pk) if points is not None else None
        if kept is not None:
            done[c.key()] = {**kept, "key": c.key()}
            if on_done is not None:
                on_done()
        else:
            todo.append((scenario_dict(spec, c), c.key()))

    def keep(result: dict[str, Any]) -> None:
        done[result["key"]] = result
        # a candidate that could not run is tried again on resume (the code may have
        # changed since), not read back
        if points is not None and not result.get("error"):
            pk = files[result["key"]]
            text = json.dumps({**result, "point": pk}, sort_keys=True)
            write_text(points / f"{pk}.json", text, "plan point")
        if on_done is not None:
            on_done()

    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            keep(_simulate(job))
    else:
        with process_pool(min(workers, len(todo))) as pool:
            for fut in as_completed([pool.submit(_simulate, job) for job in todo]):
                keep(fut.result())
    return done


def check_cost(spec: PlanSpec, candidates: list[Candidate]) -> None:
    """Refuse a plan whose candidates would cost more than the budgets
    (:mod:`calibration.limits`): each one as a run, all of them as a sweep."""
    from calibration import limits
    from sim.config import validate
    from sim.scenario import UNION_TAGS, Scenario, agent_steps
    from sim.scenario import check_cost as check_scenario

    total = 0
    for c in candidates:
        scenario = validate(Scenario, scenario_dict(spec, c), "plan", UNION_TAGS)
        check_scenario(scenario, f"plan: {c.label}")
        total += agent_steps(scenario)[0]
    limits.check(
        limits.SWEEP_AGENT_STEPS, total, f"plan: {len(candidates)} candidates to simulate (--top)"
    )

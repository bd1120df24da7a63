"""A plan candidate as the scenario that runs it: the workload the user asked for,
checked by the scenario's own model, and the engines of the candidate's layout."""

from __future__ import annotations

from typing import Any

from comem.plan.space import (
    AGENT_UTIL_COLOCATED,
    MEMORY_UTIL_COLOCATED,
    Candidate,
    PlanSpec,
    scenario_workload,
)


def _workload(spec: PlanSpec) -> dict[str, Any]:
    """The workload table the candidates run, checked by the scenario's own model (a
    field left at its default, a misspelt one or a ``workload`` that is no table is one
    line naming the file, not a KeyError later)."""
    from sim.paper import DEFAULT_SCENARIO

    where = str(spec.workload_scenario or DEFAULT_SCENARIO)
    workload = scenario_workload(spec.workload_scenario)
    workload.update(spec.workload_set)
    workload["agents"] = spec.agents
    if spec.steps is not None:
        # a trace or fitted workload cuts its tasks at max_steps
        kind = workload.get("kind", "synthetic")
        workload["steps" if kind == "synthetic" else "max_steps"] = spec.steps
    _workload_model(workload, where)
    return workload


def _workload_model(workload: dict[str, Any], where: str) -> Any:
    from sim.config import validate
    from sim.scenario import UNION_TAGS, Scenario

    return validate(Scenario, {"workload": workload}, where, UNION_TAGS).workload


def scenario_dict(spec: PlanSpec, c: Candidate) -> dict[str, Any]:
    """The scenario that runs candidate ``c`` (also the file written for the chosen one)."""
    agent: dict[str, Any] = {
        "name": "agent",
        "model": spec.agent_model,
        "gpu": spec.gpu,
        "tp": c.agent_tp,
        "dtype": c.agent_dtype,
        "max_model_len": spec.max_model_len,
    }
    if c.agent_dp > 1:
        agent["data_parallel_size"] = c.agent_dp
    if c.agent_ep:
        agent["enable_expert_parallel"] = True
    arch: dict[str, Any] = {"name": c.kind.upper(), "kind": c.kind}
    if c.kind != "fc":
        arch.update({"k": c.k, "lag": spec.lag, "retain": spec.retain})
    if c.offload:
        agent["kv_offloading_size"] = spec.offload_gib
    if c.memory_placement != "none":
        memory: dict[str, Any] = {
            "name": "memory",
            "model": spec.memory_model,
            "gpu": spec.gpu,
            "tp": c.memory_tp,
            "dtype": "bf16",
            "max_model_len": spec.memory_max_model_len,
        }
        if c.memory_placement == "co-located":
            agent["gpu_group"] = memory["gpu_group"] = "agent-gpus"
            agent["gpu_memory_utilization"] = AGENT_UTIL_COLOCATED
            memory["gpu_memory_utilization"] = MEMORY_UTIL_COLOCATED
        arch["memory"] = memory
    arch["agent"] = agent
    return {
        "name": f"plan: {c.label}",
        "description": f"comem plan candidate for {spec.agents} agents on {spec.gpus} x {spec.gpu}",
        "seed": 0,
        "engine": {"stepping": "event"},
        "workload": _workload(spec),
        "effectiveness": {
            "baseline_resolve_rate": spec.baseline_resolve_rate,
            "memory_loss_scale": spec.memory_loss_scale,
        },
        "architectures": [arch],
    }

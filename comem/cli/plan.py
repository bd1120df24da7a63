"""``comem plan``: which deployment to run."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import (
    _add_allow_large,
    _positive_int,
    _seconds,
    _token_count,
)
from comem.cli.common import (
    _json_safe,
    _outputs_not_inputs,
    _print_json,
    _with_progress,
    _workers,
    _writable_dir,
)
from comem.cli.fields import add_model_flags, fields_of

#: the flags that are ``PlanSpec`` fields, in ``--help``'s order: the machines and the
#: workload (the workload flags follow), the search (then ``--offload``), its limits
PLAN_FIELDS = (
    (
        "agent_model",
        "memory_model",
        "gpu",
        "gpus",
        "workload_scenario",
        "max_model_len",
        "memory_max_model_len",
    ),
    ("objective", "slo_step_s", "max_gpus", "kinds", "dtypes", "k_values", "lag"),
    ("top", "max_resolve_loss_pp", "baseline_resolve_rate", "memory_loss_scale"),
)


def _plan_spec(args: argparse.Namespace) -> tuple[Any, str]:
    """``plan``'s settings: a ``--spec`` file's [plan] table, the flags over it, the rest
    from the default experiment; and the line saying how the workload flags mapped."""
    from comem.plan.space import PlanSpec
    from sim.config import read_toml, validate

    data: dict[str, Any] = {}
    if args.spec:
        table = read_toml(args.spec, "plan")
        other = sorted(set(table) - {"plan"})
        if other or not isinstance(table.get("plan"), dict):
            found = f" (found {', '.join(other)})" if other else ""
            raise ComemInputError(f"{args.spec}: expected one [plan] table of settings{found}")
        data = dict(table["plan"])
    workload_set, note = _plan_workload_set(args, data)
    flags = {
        **fields_of(args, [f for group in PLAN_FIELDS for f in group]),
        "agents": args.agents,
        "steps": args.steps,
        "workload_set": workload_set,
    }
    if args.offload is not None:
        flags["offload"] = {"on": [True], "off": [False], "both": [False, True]}[args.offload]
    data.update({k: v for k, v in flags.items() if v is not None})
    return validate(PlanSpec, data, "plan"), note


def cmd_plan(args: argparse.Namespace) -> int:
    from calibration.outputs import write_result
    from comem.plan.figure import pareto_figure
    from comem.plan.rank import pareto
    from comem.plan.report import (
        assumptions,
        band_caveats,
        edge_warnings,
        plan_markdown,
        run_errors,
        verdict,
        write_scenario,
    )
    from comem.plan.run import run_plan
    from comem.plan.space import Candidate, left_out_kinds

    spec, note = _plan_spec(args)
    out = Path(args.out)
    _outputs_not_inputs(
        out,
        ("plan.md", "plan.json", "pareto.png", "chosen_scenario.toml"),
        {"--spec": args.spec, "settings": spec.model_dump()},
    )
    _writable_dir(str(out), "--out", kind="plan")
    from comem.plan.space import enumerate_candidates

    enumerate_candidates(spec)  # an unknown GPU or model, nothing that fits: before any note
    if note and not args.json:
        print(f"comem plan: {note}", file=sys.stderr)
    workers = _workers(args.workers, 10**6)  # the candidates are counted later
    rows, n, rounds = _with_progress(
        not args.json, "comem plan: simulating", "candidates", None,
        lambda advance: run_plan(spec, workers, out, advance),
    )  # fmt: skip
    warnings = left_out_kinds(spec, [Candidate(**r.candidate) for r in rows])
    warnings += edge_warnings(spec, rows) + run_errors(rows)
    for line in warnings:
        print(f"comem plan: warning: {line}", file=sys.stderr)
    payload = {
        "spec": spec.model_dump(),
        "candidates": n,
        "simulated": sum(r.simulated for r in rows),
        # simulated past the first selection because none met the SLO (run_plan)
        "slo_rounds": asdict(rounds),
        "chosen": rows[0].label,
        "rows": [r.__dict__ for r in rows],
        "pareto": [r.label for r in pareto(rows)],
        "warnings": warnings,
        "assumptions": assumptions(spec),
        "verdict": verdict(rows, spec),
        "caveats": band_caveats(spec, rows),
    }
    title = f"{spec.agent_model}, {spec.agents} agents, {spec.gpus} x {spec.gpu}"
    # a candidate that could not run has NaN latencies: null in JSON, which has no NaN
    safe = _json_safe(payload)
    text = json.dumps(safe, indent=1, sort_keys=True, default=str, allow_nan=False) + "\n"
    # plan.json last; every old file goes first: a killed write never leaves one run's
    # chosen scenario beside another's table (explain reads chosen_scenario.toml)
    written = write_result(
        out,
        {
            "plan.md": lambda p: p.write_text(plan_markdown(spec, rows, payload)),
            "pareto.png": lambda p: pareto_figure(rows, p, title),
            "chosen_scenario.toml": lambda p: write_scenario(spec, rows, p),
            "plan.json": lambda p: p.write_text(text),
        },
        "plan.json",
        "plan",
    )
    payload["files"] = [str(p) for p in written]
    if args.json:
        _print_json(payload)
    else:
        _print_plan(spec, rows, payload, args.show)
    return 0


def _print_plan(spec: Any, rows: list[Any], payload: dict[str, Any], show: int) -> None:
    from comem.plan.report import text_report

    print(text_report(spec, rows, payload, show), end="")
    for caveat in payload["caveats"]:
        print(caveat)
    for p in payload["files"]:
        print(f"wrote {p}")


def _plan_workload_set(
    args: argparse.Namespace, spec: dict[str, Any]
) -> tuple[dict[str, Any] | None, str]:
    """``plan``'s workload flags as workload fields (agents and steps are the spec's)."""
    from comem.plan.space import scenario_workload
    from sim.workload_flags import from_args, workload_fields

    flags = from_args(args)
    if flags.context_tokens is None and all(
        getattr(flags, k) is None for k in ("decode_tokens", "observation_tokens", "tool_s")
    ):
        return None, ""
    base = scenario_workload(args.workload_scenario or spec.get("workload_scenario"))
    fields, note = workload_fields(base, flags)
    kept = {k: v for k, v in fields.items() if k not in ("agents", "steps", "max_steps")}
    if "steps" in fields and args.steps is None:  # derived from --context-tokens
        kept["steps"] = fields["steps"]
    return kept, note


def register(sub: Any) -> None:
    pl = sub.add_parser(
        "plan",
        help="which deployment to run: architecture, GPU split, TP/EP/DP, k, offload",
        description="Enumerates the deployments of --agent-model and --memory-model on"
        " --gpus x --gpu for --agents agents, prunes them with the closed forms (lockstep"
        " step latency, KV-capacity bound), simulates the best in parallel (resumable in"
        " --out/points), ranks by --objective under --slo, and writes the table, the Pareto"
        " front and the chosen deployment as a scenario file.",
    )
    from comem.plan.space import PlanSpec

    pl.add_argument("--spec", help="TOML file with a [plan] table (flags override it)")
    machines, search, limits = PLAN_FIELDS
    add_model_flags(pl, PlanSpec, machines, defaults=False)
    from sim.workload_flags import add_flags

    add_flags(pl, _token_count, _positive_int, _seconds)
    add_model_flags(pl, PlanSpec, search, defaults=False)
    pl.add_argument("--offload", choices=("on", "off", "both"), help="CPU KV offload [both]")
    add_model_flags(pl, PlanSpec, limits, defaults=False)
    pl.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    pl.add_argument("--show", type=_positive_int, default=12, help="rows printed [12]")
    pl.add_argument("--out", default="out/plan", help="output directory [out/plan]")
    pl.add_argument("--json", action="store_true")
    _add_allow_large(pl)
    pl.set_defaults(func=cmd_plan)

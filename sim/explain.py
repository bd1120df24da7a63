"""``comem explain A B``: why two answers differ.

Two answers (scenario files, ``comem run --out`` directories, ``comem plan --out``
directories) each compare a CoMem-style architecture with full context. This module
lines up what each one ran (the workload's fields, full context's engine, CoMem's
policy, its agent engine, its memory engine, the effectiveness assumptions), lists the
inputs that differ, and re-runs A with each one taken from B alone (one at a time), so
the table says how far each input moves A's verdict towards B's. Inputs move the
verdict together, not only one by one: the last row compares the product of the
one-at-a-time moves with B's verdict (the rest is their interaction).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from sim.workers import process_pool

#: engine fields shown first when an engine differs (the deployment)
_ENGINE_KEYS = ("gpu", "model", "tp", "data_parallel_size", "enable_expert_parallel", "dtype")


@dataclass
class Side:
    """One answer: where it came from and the scenario it ran (as a dict)."""

    source: str
    data: dict[str, Any]
    reference: str = ""
    candidate: str = ""


@dataclass
class Input:
    """One input that differs: its name, its value on each side, and how to take it
    from B into A."""

    name: str
    a: str
    b: str
    apply: Callable[[dict[str, Any]], None] = field(repr=False)


def load_side(text: str, sets: list[str] | None = None) -> Side:
    """A scenario file (TOML), a ``comem run --out`` directory (its ``config.json``) or a
    ``comem plan --out`` directory (its ``chosen_scenario.toml``)."""
    from sim.scenario import lean_architecture, read_scenario_data, scenario_from

    path = Path(text)
    if path.is_dir():
        if (path / "chosen_scenario.toml").is_file():
            if not (path / "plan.json").is_file():  # the mark a plan writes last
                raise ComemInputError(
                    f"{text}: a plan directory without plan.json: that plan did not finish"
                    " (run it again)"
                )
            path = path / "chosen_scenario.toml"
        elif (path / "config.json").is_file():
            path = path / "config.json"
        else:
            raise ComemInputError(
                f"{text}: neither a plan's --out (chosen_scenario.toml) nor a run's --out"
                " (config.json)"
            )
    raw = read_scenario_data(path)
    scenario = scenario_from(raw, sets or [], path.name)
    data = scenario.model_dump(mode="json", exclude_none=True)
    ref = next((a for a in data["architectures"] if a["kind"] == "fc"), None)
    other = next((a for a in data["architectures"] if a["kind"] != "fc"), None)
    if ref is None or other is None:
        raise ComemInputError(
            f"{path}: explain needs a full-context (fc) architecture and another to compare"
        )
    data["architectures"] = [lean_architecture(ref), lean_architecture(other)]
    return Side(str(path), data, ref["name"], other["name"])


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _engine_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> tuple[str, str] | None:
    """The fields two engines differ in, each side's values (None: equal)."""
    if a is None or b is None:
        return None if a == b else (_show(a is not None), _show(b is not None))
    keys = [k for k in sorted(set(a) | set(b), key=_engine_order) if k != "name"]
    diff = [k for k in keys if a.get(k) != b.get(k)]
    if not diff:
        return None
    return (
        ", ".join(f"{k} {_show(a.get(k))}" for k in diff),
        ", ".join(f"{k} {_show(b.get(k))}" for k in diff),
    )


def _engine_order(key: str) -> tuple[int, str]:
    return (_ENGINE_KEYS.index(key) if key in _ENGINE_KEYS else len(_ENGINE_KEYS), key)


def _setter(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value)

    return apply


def differing_inputs(a: Side, b: Side) -> list[Input]:
    """Every input that differs between the two answers, each with how to take it from
    B into A (workload and policy fields one by one; each engine as a whole)."""
    out: list[Input] = []
    wa, wb = a.data["workload"], b.data["workload"]
    if wa.get("kind") != wb.get("kind"):
        out.append(Input("workload", _show(wa.get("kind")), _show(wb.get("kind")),
                         _setter("workload", value=wb)))  # fmt: skip
    else:
        for key in sorted(set(wa) | set(wb)):
            if wa.get(key) != wb.get(key):
                out.append(Input(f"workload.{key}", _show(wa.get(key)), _show(wb.get(key)),
                                 _setter("workload", key, value=wb.get(key))))  # fmt: skip
    for top in ("seed", "engine", "effectiveness"):
        va, vb = a.data.get(top), b.data.get(top)
        if va != vb:
            out.append(Input(top, _show(va), _show(vb), _setter(top, value=vb)))
    (fa, ca), (fb, cb) = a.data["architectures"], b.data["architectures"]
    diff = _engine_diff(fa["agent"], fb["agent"])
    if diff:
        out.append(Input("full context: engine", *diff,
                         _setter("architectures", 0, "agent", value=fb["agent"])))  # fmt: skip
    out.extend(_policy_inputs(ca, cb))
    out.extend(_placement_inputs(ca, cb))
    for role in ("agent", "memory"):
        diff = _engine_diff(_unplaced(ca.get(role)), _unplaced(cb.get(role)))
        if diff:
            out.append(Input(f"CoMem: {role} engine", *diff,
                             _setter("architectures", 1, role, value=cb.get(role))))  # fmt: skip
    return out


#: where an engine runs: one input for both of CoMem's engines (co-location is the two
#: sharing a gpu_group; one engine's group alone changes nothing)
_PLACEMENT = ("gpu_group", "gpu_memory_utilization")


def _unplaced(engine: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if engine is None else {k: v for k, v in engine.items() if k not in _PLACEMENT}


def _placement_inputs(ca: dict[str, Any], cb: dict[str, Any]) -> list[Input]:
    """CoMem's placement (its engines' GPU groups and memory shares) as one input."""
    roles = [r for r in ("agent", "memory") if ca.get(r) is not None and cb.get(r) is not None]

    def placed(arch: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {r: {k: arch[r].get(k) for k in _PLACEMENT} for r in roles}

    pa, pb = placed(ca), placed(cb)
    if pa == pb:
        return []

    def shown(p: dict[str, dict[str, Any]]) -> str:
        groups = {p[r]["gpu_group"] for r in roles}
        share = " / ".join(f"{_show(p[r]['gpu_memory_utilization'])}" for r in roles)
        if len(roles) == 2 and len(groups) == 1 and None not in groups:
            return f"sharing GPUs ({' and '.join(roles)} GPU memory {share})"
        if len(roles) == 1:  # one side has no memory engine: where its agent runs
            shared = None not in groups
            where = "on GPUs it shares with the memory model" if shared else "on its own GPUs"
            return f"{roles[0]} {where} (GPU memory {share})"
        return f"own GPUs each (GPU memory {share})"

    def apply(data: dict[str, Any]) -> None:
        arch = data["architectures"][1]
        for r in roles:
            for k, v in pb[r].items():
                _setter(r, k, value=v)(arch)

    return [Input("CoMem: placement", shown(pa), shown(pb), apply)]


def _policy_text(arch: dict[str, Any], keys: list[str]) -> str:
    """'kind kso-authors, retain 3': the kind and those of ``keys`` its kind has (a
    field another kind refuses, such as k for kso-authors, is not shown at its default)."""
    from sim.policy import POLICIES
    from sim.scenario import policy_default

    refused = set(getattr(POLICIES.get(arch["kind"]), "_NOT_THEIRS", ()))
    own = [k for k in keys if k not in refused]
    return ", ".join(
        [f"kind {arch['kind']}", *(f"{k} {_show(arch.get(k, policy_default(k)))}" for k in own)]
    )


def _policy_inputs(ca: dict[str, Any], cb: dict[str, Any]) -> list[Input]:
    """CoMem's policy fields one by one; the whole policy at once where the kinds
    differ (a kind's fields do not carry over to another kind)."""
    from sim.scenario import policy_default

    keys = sorted((set(ca) | set(cb)) - {"agent", "memory", "name", "kind"})
    diff = [k for k in keys if ca.get(k, policy_default(k)) != cb.get(k, policy_default(k))]
    if ca["kind"] != cb["kind"]:
        policy = {k: v for k, v in cb.items() if k not in ("agent", "memory", "name")}

        def apply(data: dict[str, Any]) -> None:
            arch = data["architectures"][1]
            keep = {k: arch[k] for k in ("name", "agent", "memory") if k in arch}
            arch.clear()
            arch.update({**keep, **copy.deepcopy(policy)})

        return [Input("CoMem: policy", _policy_text(ca, diff), _policy_text(cb, diff), apply)]
    return [
        Input(
            f"CoMem: {k}",
            _show(ca.get(k, policy_default(k))),
            _show(cb.get(k, policy_default(k))),
            _setter("architectures", 1, k, value=cb.get(k)),
        )
        for k in diff
    ]


def _key(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def verdict(data: dict[str, Any], metric: str) -> dict[str, Any]:
    """Run one scenario dict; the speedup of its second architecture over its first by
    ``metric``, and its resolve-rate change (or the one-line reason it cannot run)."""
    from sim.scenario import run_scenario, scenario_from

    try:
        scenario = scenario_from(copy.deepcopy(data), [], "explain")
    except ComemInputError as exc:
        return {"speedup": None, "resolve_pp": None, "error": str(exc), "partial": []}
    from sim.describe import unfinished

    try:  # a combination of inputs can be a deployment that cannot exist
        summary = run_scenario(scenario).summary()
    except ComemInputError as exc:
        return {"speedup": None, "resolve_pp": None, "error": str(exc), "partial": []}
    name = scenario.architectures[1].name
    speedup = summary["comparison"]["metrics"][metric]["speedup"].get(name)
    pp = summary["architectures"][name].get("resolve_rate_delta_pp")
    # a side whose tasks ended early was timed over part of the work: said beside the number
    partial = [u for u in (unfinished(summary, a.name) for a in scenario.architectures) if u]
    return {"speedup": speedup, "resolve_pp": pp, "error": None, "partial": partial}


def _run_one(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return verdict(*job)


def explain(
    a: Side,
    b: Side,
    metric: str,
    workers: int = 1,
    on_done: Callable[[], None] | None = None,
    known: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A's and B's verdicts; per differing input, A's verdict with that input from B; and
    the path from A to B taking B's inputs one after another (in the listed order), whose
    steps multiply exactly to the whole gap, interactions included. ``known``: verdicts of
    earlier explanations by (metric, scenario key) (read, and added to): a scenario two
    explanations share runs once."""
    inputs = differing_inputs(a, b)
    variants, path_data = [], []
    walked = copy.deepcopy(a.data)
    for one in inputs:
        data = copy.deepcopy(a.data)
        one.apply(data)
        variants.append(data)
        one.apply(walked)
        path_data.append(copy.deepcopy(walked))
    jobs = {_key(d): d for d in [a.data, b.data, *variants, *path_data]}
    known = {} if known is None else known
    todo = {k: d for k, d in jobs.items() if (metric, k) not in known}
    set_total = getattr(on_done, "set_total", None)
    if set_total is not None:
        set_total(len(todo))
    known.update({(metric, k): v for k, v in _run_all(todo, metric, workers, on_done).items()})
    results = {k: known[(metric, k)] for k in jobs}
    base = results[_key(a.data)]
    rows = []
    for one, data in zip(inputs, variants, strict=True):
        got = results[_key(data)]
        rows.append({"input": one.name, "a": one.a, "b": one.b, **got,
                     "moves": _ratio(got["speedup"], base["speedup"])})  # fmt: skip
    # by how far each input moves the verdict; within rounding, in the inputs' order (the
    # last bits of a ratio of ~1 must not reorder the table between machines)
    rows.sort(key=lambda r: -round(abs(math.log(r["moves"])), 6) if r["moves"] else 0.0)
    target = results[_key(b.data)]
    product = math.prod(r["moves"] for r in rows if r["moves"])
    path, before, skipped = [], base["speedup"], []
    for one, data in zip(inputs, path_data, strict=True):
        got = results[_key(data)]
        if got["speedup"] is None:  # cannot run (or compare) here: its step joins the next
            path.append({"input": one.name, **got, "step": None})
            skipped.append(one.name)
            continue
        name = " + ".join([*skipped, one.name])
        path.append({"input": name, **got, "step": _ratio(got["speedup"], before)})
        before, skipped = got["speedup"], []
    return {
        "metric": metric,
        "a": {"source": a.source, "architectures": [a.reference, a.candidate], **base},
        "b": {"source": b.source, "architectures": [b.reference, b.candidate], **target},
        "inputs": rows,
        "one_at_a_time_product": product,
        "interaction": _ratio(target["speedup"], _times(base["speedup"], product)),
        "path": path,
        # B's verdict over the path's end: 1 when the listed inputs are every difference
        "path_residual": _ratio(target["speedup"], before) if path and not skipped else None,
    }


def _ratio(x: float | None, y: float | None) -> float | None:
    if x is None or y is None or not y:
        return None
    return x / y


def _times(x: float | None, y: float) -> float | None:
    return None if x is None else x * y


def _run_all(
    jobs: dict[str, dict[str, Any]],
    metric: str,
    workers: int,
    on_done: Callable[[], None] | None,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    keys = list(jobs)
    if workers <= 1 or len(keys) <= 1:
        for k in keys:
            out[k] = verdict(jobs[k], metric)
            if on_done is not None:
                on_done()
        return out
    with process_pool(min(workers, len(keys))) as pool:
        for k, res in zip(keys, pool.map(_run_one, [(jobs[k], metric) for k in keys]), strict=True):
            out[k] = res
            if on_done is not None:
                on_done()
    return out


def _x(v: float | None, partial: list[str] | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}x" + (f" (partial: {'; '.join(partial)})" if partial else "")


def _pp(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:+.1f}"


#: how an explanation begins (``comem explain --out`` rewrites only a file that does)
EXPLANATION_HEAD = "Verdict: speedup of CoMem over full context"


def table_markdown(result: dict[str, Any], a_name: str = "A", b_name: str = "B") -> str:
    """The explanation as a short Markdown table (largest move first)."""
    from sim.compare import METRICS

    a, b = result["a"], result["b"]
    label = METRICS[result["metric"]].label
    lines = [
        f"{EXPLANATION_HEAD} by {label} (> 1: CoMem faster).",
        f"- {a_name} = {a['source']} ({a['architectures'][1]} vs {a['architectures'][0]}):"
        f" {_x(a['speedup'], a.get('partial'))}, resolve {_pp(a['resolve_pp'])} pp",
        f"- {b_name} = {b['source']} ({b['architectures'][1]} vs {b['architectures'][0]}):"
        f" {_x(b['speedup'], b.get('partial'))}, resolve {_pp(b['resolve_pp'])} pp",
        "",
        f"| input | {a_name} | {b_name} | {a_name} with this from {b_name} | moves the"
        f" verdict | resolve pp |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["inputs"]:
        moved = "-" if r["moves"] is None else f"x{r['moves']:.2f}"
        cell = (
            _x(r["speedup"], r.get("partial"))
            if r["error"] is None
            else f"- (cannot run alone: {_reason(r['error'])})"
        )
        lines.append(
            f"| {r['input']} | {r['a']} | {r['b']} | {cell} | {moved} | {_pp(r['resolve_pp'])} |"
        )
    if not result["inputs"]:
        lines.append("| (none: the two answers ran the same inputs) | | | | | |")
    lines.append("")
    inter = result["interaction"]
    if inter is None:
        rest = ""
    elif abs(inter - 1.0) < 0.005:
        rest = " (the product: the inputs do not interact)"
    else:
        rest = f" (x{inter:.2f} beyond the product: the inputs interact)"
    lines.append(
        f"One input at a time multiplies {a_name}'s verdict by"
        f" x{result['one_at_a_time_product']:.2f}; all together they give {b_name}'s{rest}."
    )
    if len(result.get("path", [])) > 1:
        lines += _path_lines(result, a_name, b_name)
    return "\n".join(lines) + "\n"


def _reason(error: str) -> str:
    """An engine or scenario error as a table cell: no file name in front, no line break,
    no pipe (it would split the Markdown cell)."""
    head, sep, tail = error.partition(": ")
    text = tail if sep and " " not in head else error  # drop a leading scenario name
    return " ".join(text.split()).replace("|", "/")


def _path_lines(result: dict[str, Any], a_name: str, b_name: str) -> list[str]:
    """The cumulative path: each of B's inputs added to the ones before it, so the steps
    multiply to the whole gap (the order is the table's listing, not a ranking)."""
    lines = [
        "",
        f"From {a_name} to {b_name}, adding {b_name}'s inputs one after another (each step"
        " includes the ones above it; the steps multiply to the whole gap):",
        "",
        "| adding | verdict | step |",
        "|---|---|---|",
    ]
    for r in result["path"]:
        cell = (
            _x(r["speedup"], r.get("partial"))
            if r["error"] is None
            else f"- (not deployable at this step: {_reason(r['error'])}; its factor joins the"
            " next step's)"
        )
        step = "-" if r["step"] is None else f"x{r['step']:.2f}"
        lines.append(f"| {r['input']} | {cell} | {step} |")
    residual = result.get("path_residual")
    if residual is not None and abs(residual - 1.0) >= 0.005:
        lines.append(
            f"| (what the listed inputs do not cover) | {_x(result['b']['speedup'])}"
            f" | x{residual:.2f} |"
        )
    return lines

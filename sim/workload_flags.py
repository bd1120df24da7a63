"""A workload described the way a user thinks of it, mapped onto scenario fields.

``--agents``, ``--context-tokens`` (the mean prompt a full-context agent reads over a
task), ``--decode-tokens`` (tokens each step decodes), ``--observation-tokens`` (tokens
each tool result adds), ``--tool-s`` (seconds a tool call takes) and ``--steps``
(steps per task) on ``comem run``, ``plan`` and ``sweep``. Every field a flag leaves out
keeps the scenario's value (or its documented default).

The mean context of a synthetic task of S steps is ``system + first observation +
(S - 1) / 2 * (observation + decoded)`` (each step adds its action and the next
observation). ``--context-tokens`` solves that for the steps when ``--steps`` is not
given, and for the system prompt when it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calibration.errors import ComemInputError

#: flag -> the synthetic workload field it sets (context_tokens: derived)
FIELDS = {
    "agents": "agents",
    "decode_tokens": "action_tokens",
    "observation_tokens": "observation_tokens",
    "tool_s": "tool_s",
    "steps": "steps",
}
#: the synthetic workload's defaults (sim.scenario.SyntheticWorkload), for a table that
#: leaves a field out
_DEFAULTS = {"system_tokens": 512, "observation_tokens": 512, "action_tokens": 1024, "steps": 64}


@dataclass(frozen=True)
class WorkloadFlags:
    agents: int | None = None
    context_tokens: int | None = None
    decode_tokens: int | None = None
    observation_tokens: int | None = None
    tool_s: float | None = None
    steps: int | None = None

    def given(self) -> bool:
        return any(v is not None for v in self.__dict__.values())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def workload_fields(base: dict[str, Any], flags: WorkloadFlags) -> tuple[dict[str, Any], str]:
    """The workload fields the flags set on top of ``base`` (a scenario's ``[workload]``
    table), and one line saying how they were mapped."""
    kind = base.get("kind", "synthetic")
    out: dict[str, Any] = {}
    for name, target in FIELDS.items():
        value = getattr(flags, name)
        if value is None:
            continue
        if kind != "synthetic" and name not in ("agents", "steps"):
            raise ComemInputError(
                f"{_flag(name)} describes a synthetic workload; this scenario's workload is"
                f" kind '{kind}' (its tokens come from its trace or fit)"
            )
        out["max_steps" if (name == "steps" and kind != "synthetic") else target] = value
    if flags.context_tokens is not None:
        if kind != "synthetic":
            raise ComemInputError(
                f"--context-tokens describes a synthetic workload; this scenario's workload is"
                f" kind '{kind}'"
            )
        out.update(_context(base, out, flags))
    shown = ", ".join(f"workload.{k} = {v}" for k, v in out.items())
    return out, f"workload flags: {shown}" if out else ""


def _context(base: dict[str, Any], out: dict[str, Any], flags: WorkloadFlags) -> dict[str, Any]:
    """The steps (or, with ``--steps``, the system prompt) that give the mean context."""
    merged = {**_DEFAULTS, **base, **out}
    obs, action = int(merged["observation_tokens"]), int(merged["action_tokens"])
    first = merged.get("first_observation_tokens")
    first = obs if first is None else int(first)
    per_step = obs + action
    context = int(flags.context_tokens or 0)
    if flags.steps is None:
        system = int(merged["system_tokens"])
        room = context - system - first
        if room < 0:
            raise ComemInputError(
                f"--context-tokens {context} is below the first prompt (system {system} +"
                f" first observation {first} tokens): give a larger one"
            )
        return {"steps": max(1, round(1 + 2 * room / per_step))}
    system = round(context - first - (flags.steps - 1) / 2 * per_step)
    if system < 1:
        need = 1 + first + (flags.steps - 1) / 2 * per_step
        raise ComemInputError(
            f"--context-tokens {context} with --steps {flags.steps} of {obs} observation +"
            f" {action} decoded tokens needs a negative system prompt (the mean context of"
            f" {flags.steps} steps is at least {need:,.0f}): give fewer --steps, or leave"
            " --steps out to derive it"
        )
    return {"system_tokens": system}


def as_sets(fields: dict[str, Any]) -> list[str]:
    """The fields as ``--set workload.KEY=VALUE`` overrides."""
    return [f"workload.{k}={v!r}" for k, v in fields.items()]


def add_flags(parser: Any, token_count: Any, positive_int: Any, seconds: Any) -> None:
    """The workload flags on a command's parser (``token_count`` and the others: the
    command line's own checked types)."""
    group = parser.add_argument_group(
        "workload, as you think of it (mapped onto the scenario's workload fields; each"
        " one left out keeps the scenario's value)"
    )
    group.add_argument("--agents", type=positive_int, help="concurrent agents")
    group.add_argument(
        "--context-tokens", type=token_count,
        help="mean prompt tokens of a full-context agent over a task (sets the steps, or"
        " with --steps the system prompt)",
    )  # fmt: skip
    group.add_argument("--decode-tokens", type=token_count, help="tokens each step decodes")
    group.add_argument(
        "--observation-tokens", type=token_count, help="tokens each tool result adds"
    )
    group.add_argument("--tool-s", type=seconds, help="seconds each tool call takes")
    group.add_argument("--steps", type=positive_int, help="steps per task")


def from_args(args: Any) -> WorkloadFlags:
    return WorkloadFlags(**{k: getattr(args, k, None) for k in WorkloadFlags.__dataclass_fields__})

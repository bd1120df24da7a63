"""What one run may cost, estimated and checked before it starts.

A typo (``workload.steps=1000000000``, a sweep range to ``inf``, a static batch of a
billion) should cost one line, not an hour or the machine's memory. So every command
estimates its work from its inputs before it does any (simulated agent steps,
simulated requests, engine iterations stepped one by one, sweep points, live
requests) and refuses a run above a budget with one line naming the fields, the
estimate and the budget. The budgets are about 10x the largest run the project ships
(the paper's scenarios at 256 agents: 33 thousand agent steps); on a laptop core a run
at a budget takes minutes.

Going past a budget is explicit: ``--allow-large`` on the command line, or the
environment variable ``COMEM_ALLOW_LARGE=1`` (for scripts and library use).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from calibration.errors import ComemInputError

ALLOW_LARGE_ENV = "COMEM_ALLOW_LARGE"


@dataclass(frozen=True)
class Budget:
    """An upper bound on one kind of work, and what it counts (for the message)."""

    limit: int
    counts: str


#: simulated agent steps of one scenario run, over all its architectures
AGENT_STEPS = Budget(200_000, "simulated agent steps")
#: agent steps times the requests running beside each (up to ``max_num_seqs``): what
#: the scheduler's work grows with (4096 agents x 12 steps, or the paper's benchmark
#: at 512 agents, take about 20 s)
SCHEDULED = Budget(50_000_000, "request-schedulings (agent steps x requests running at once)")
#: task steps the closed forms price (``comem theory``): steps x rows (an architecture at
#: a k), each at every agent count of the scan (300,000 take about 15 s)
FORM_STEPS = Budget(300_000, "task steps priced by the closed forms")
#: simulated requests of one engine-sim or bench-serve run
REQUESTS = Budget(500_000, "simulated requests")
#: scheduler iterations the measured-profile fit replays one by one
ITERATIONS = Budget(2_000_000, "engine iterations stepped one by one")
#: tokens decoded with ``stepping = "iteration"``: each is part of a SimPy step that
#: walks the running batch (the paper's benchmark at 64 agents, 8.4 million, takes
#: about 15 s)
ITERATION_TOKENS = Budget(20_000_000, "tokens decoded one iteration at a time")
#: scheduler iterations of a static batch (decode runs are priced in bulk)
STATIC_ITERATIONS = Budget(20_000_000, "scheduler iterations")
#: sequences a scheduler replay holds at once (static batch, a fit's waves)
SEQUENCES = Budget(250_000, "sequences in one replay")
#: points of one sweep (seeds included)
SWEEP_POINTS = Budget(10_000, "sweep points")
#: simulated agent steps of a whole sweep
SWEEP_AGENT_STEPS = Budget(20_000_000, "simulated agent steps over the sweep")
#: one serving fit: every row's closed-loop run (clients x requests per client), once per
#: fixed-point pass and per cross-validation fold (``comem calibrate fit-serving``)
SERVING_FIT_REQUESTS = Budget(
    20_000_000, "simulated serving requests (rows' clients x requests per client x fit passes)"
)
#: requests sent to a live server by one command
LIVE_REQUESTS = Budget(100_000, "live requests")
#: requests (one thread each) in flight at once against a live server
LIVE_CONCURRENCY = Budget(4096, "concurrent live requests (one thread each)")
#: prompt tokens a profile wave builds in memory (random words, about 7 bytes each)
LIVE_WAVE_TOKENS = Budget(20_000_000, "prompt tokens built for one wave")

_override: bool | None = None


def allow_large() -> bool:
    """Whether budgets are lifted (``--allow-large`` or ``COMEM_ALLOW_LARGE``)."""
    if _override is not None:
        return _override
    return os.environ.get(ALLOW_LARGE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def allowing_large(allow: bool) -> Iterator[None]:
    """Lift the budgets inside the block (the CLI's ``--allow-large``)."""
    global _override
    before = _override
    _override = True if allow else before
    try:
        yield
    finally:
        _override = before


def check(budget: Budget, estimate: float, what: str) -> None:
    """Refuse ``estimate`` (of ``budget.counts``) above the budget, unless lifted.

    ``what`` names the fields the estimate comes from, e.g. ``"workload.agents x
    workload.steps"``.
    """
    if estimate <= budget.limit or allow_large():
        return
    shown = f"{estimate:,.0f}" if estimate < 1e12 else f"{estimate:.2g}"
    raise ComemInputError(
        f"{what}: about {shown} {budget.counts}, above the budget of"
        f" {budget.limit:,}; check the numbers, or pass --allow-large (or set"
        f" {ALLOW_LARGE_ENV}=1) to run it anyway"
    )


__all__ = [
    "AGENT_STEPS",
    "ALLOW_LARGE_ENV",
    "FORM_STEPS",
    "ITERATIONS",
    "ITERATION_TOKENS",
    "LIVE_CONCURRENCY",
    "LIVE_REQUESTS",
    "LIVE_WAVE_TOKENS",
    "REQUESTS",
    "SCHEDULED",
    "SEQUENCES",
    "STATIC_ITERATIONS",
    "SWEEP_AGENT_STEPS",
    "SWEEP_POINTS",
    "Budget",
    "allow_large",
    "allowing_large",
    "check",
]

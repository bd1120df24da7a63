"""The scheduler's records: a request's scheduling state (:class:`Sequence`), one
scheduled iteration (:class:`Step`) and a run of identical iterations (:class:`Run`).

No time and no SimPy: the simulated engine's :class:`sim.request.Request` extends
:class:`Sequence` with times and events; the static predictor and the measured fit use
it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.kv_cache import Stream

SequenceStatus = Literal["waiting", "loading", "running", "preempted", "finished", "rejected"]


class Sequence:
    """One request's scheduling state: tokens, KV blocks, status.

    ``length`` is prompt + tokens sampled so far; ``computed`` the tokens whose KV is
    computed. The request references blocks ``[0, held_end)`` of its stream (cached,
    possibly shared) plus ``own_blocks`` of its own. While it is a member of the decode
    group these fields are stale (see :mod:`engine.stepping`). The simulated engine's
    :class:`sim.request.Request` extends this with times and SimPy events.
    """

    __slots__ = (
        "cached_tokens",
        "computed",
        "has_first_token",
        "held_end",
        "id",
        "lazy",
        "lazy_c0",
        "lazy_t0",
        "length",
        "output_tokens",
        "own_blocks",
        "preemptions",
        "prompt_tokens",
        "resumed",
        "run_seq",
        "spec_carry",
        "state_blocks",
        "status",
        "stored_upto",
        "stream",
    )

    def __init__(
        self, sid: int, prompt_tokens: int, output_tokens: int, stream: Stream | None = None
    ) -> None:
        self.id = sid
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.stream = stream
        self.computed = 0
        self.length = prompt_tokens
        self.held_end = 0
        self.own_blocks = 0
        #: blocks held whatever the length (hybrid models' linear states and sliding
        #: windows, :attr:`engine.scheduler.SchedulerConfig.request_blocks`), while admitted
        self.state_blocks = 0
        #: speculative decoding: the fraction of a token its verify steps owe it
        #: (:func:`calibration.spec_decode.emitted_tokens`)
        self.spec_carry = 0.0
        self.status: SequenceStatus = "waiting"
        self.preemptions = 0
        self.cached_tokens = 0
        self.has_first_token = False
        self.run_seq = -1  # position in admission order while running
        self.lazy = False
        self.lazy_c0 = 0
        self.lazy_t0 = 0
        self.resumed = False  # readmitted after a preemption, no token sampled since
        self.stored_upto = 0  # blocks handed to the CPU offload tier (members' stores)

    @property
    def generated(self) -> int:
        return self.length - self.prompt_tokens

    @property
    def blocks(self) -> int:
        return self.held_end + self.own_blocks


@dataclass
class Step:
    """One scheduled iteration: who gets how many tokens, and its pricing aggregates.

    A *decode* is one new token over a computed prefix whose length is then complete
    (the last single token of a chunked prompt has the same shape and is priced so);
    everything else is a prefill chunk of ``prefill_new`` tokens over
    ``prefill_cached`` computed ones. ``entries`` lists the requests scheduled
    explicitly; the decode group's members (event stepping) are in the aggregates only.
    """

    entries: list[tuple[Sequence, int]] = field(default_factory=list)
    num_decode: int = 0
    decode_kv_total: int = 0
    prefill_new: list[int] = field(default_factory=list)
    prefill_cached: list[int] = field(default_factory=list)
    #: requests admitted for the first time in this iteration
    admitted: list[Sequence] = field(default_factory=list)
    #: requests admitted again after a preemption
    readmitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    #: decode-group members in this iteration
    group_decodes: int = 0
    #: set by :meth:`engine.scheduler.Scheduler.apply`: tokens sampled, and of those a
    #: request's first or its first after being preempted (a gap that spans the preemption)
    sampled: int = 0
    first_samples: int = 0
    resumed_samples: int = 0
    #: the requests of ``resumed_samples``
    resumed: list[Sequence] = field(default_factory=list)
    #: speculative decoding: decodes that verify drafts, the drafts in all, and the tokens
    #: sampled beyond one per request (``sampled`` counts requests that sampled)
    spec_seqs: int = 0
    spec_tokens: int = 0
    extra_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_decode + sum(self.prefill_new)

    @property
    def num_seqs(self) -> int:
        return self.num_decode + len(self.prefill_new)

    @property
    def schedules_nothing(self) -> bool:
        """No request gets a token: every waiting one waits for KV blocks or a CPU load."""
        return not self.entries and not self.group_decodes


@dataclass
class Run:
    """``iterations`` identical-shape iterations (see :meth:`engine.stepping.EventStepper.next`).

    Iteration j (0-based) decodes ``num_decode`` sequences over a KV total of
    ``decode_kv_total0 + num_decode * j`` and, if ``chunk``, computes a prefill chunk of
    ``chunk`` tokens over ``prefill_cached0 + chunk * j`` computed ones.
    """

    iterations: int
    num_decode: int
    decode_kv_total0: int
    prefiller: Sequence | None
    chunk: int
    prefill_cached0: int
    #: blocks the run allocates in its first j + 1 iterations, j = 0.. (see :mod:`engine.runs`)
    allocations: list[int] | None = None
    #: what bounded the run: finish, prompt, kv, admission or limit
    bound: str = "limit"


#: (sequence, "first_token" | "finished"), in the order the events happen
Event = tuple[Sequence, str]

"""A request to the simulated engine: the scheduler's record of it
(:class:`engine.request.Sequence`) with its times and SimPy events."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import simpy

from engine.kv_cache import Stream
from engine.request import Sequence

if TYPE_CHECKING:
    from sim.engine import Engine


class Request(Sequence):
    """One generation request and what happened to it (times in simulated seconds).

    ``admitted``, ``first_token`` and ``done`` are SimPy events, made when first asked
    for (most requests are never waited on for the first two; an event that nobody
    holds costs a SimPy step all the same). Asked for after the fact, they come back
    already triggered.
    """

    __slots__ = (
        "_admitted",
        "_done",
        "_first_token",
        "admitted_s",
        "arrival_s",
        "engine",
        "finished_s",
        "first_token_s",
        "reason",
        "tag",
    )

    def __init__(
        self,
        engine: Engine,
        rid: int,
        prompt_tokens: int,
        output_tokens: int,
        stream: Stream | None,
        tag: Any,
    ) -> None:
        super().__init__(rid, prompt_tokens, output_tokens, stream)
        env = engine.env
        self.engine = engine
        self.tag = tag
        self.arrival_s = env.now
        self.admitted_s = math.nan
        self.first_token_s = math.nan
        self.finished_s = math.nan
        self.reason = ""
        self._admitted: simpy.Event | None = None
        self._first_token: simpy.Event | None = None
        self._done: simpy.Event | None = None

    def _event(self, happened: bool) -> simpy.Event:
        ev = self.engine.env.event()
        if happened:
            ev.succeed(self)
        return ev

    @property
    def admitted(self) -> simpy.Event:
        if self._admitted is None:
            self._admitted = self._event(self.admitted_s == self.admitted_s)
        return self._admitted

    @property
    def first_token(self) -> simpy.Event:
        if self._first_token is None:
            self._first_token = self._event(self.first_token_s == self.first_token_s)
        return self._first_token

    @property
    def done(self) -> simpy.Event:
        if self._done is None:
            self._done = self._event(self.finished_s == self.finished_s)
        return self._done

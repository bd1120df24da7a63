"""GPUs shared by co-located engines (``gpu_group``): their iterations take turns."""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import simpy

if TYPE_CHECKING:
    from sim.engine import Engine


def delay_to(now: float, t: float) -> float:
    """The delay that takes SimPy's clock from ``now`` to exactly ``t`` (``now + (t - now)``
    can miss ``t`` by a rounding step)."""
    d = max(0.0, t - now)
    for _ in range(4):
        got = now + d
        if got == t:
            break
        d = max(0.0, math.nextafter(d, math.inf if got < t else -math.inf))
    return d


#: what a queued engine's ``acquire`` event gives when the holder ran its iterations
#: in a joint run and fired their events: it goes on as if it had released the GPUs
SERVED = object()


class SharedGpus:
    """GPUs shared by several engines (``gpu_group``: a memory model co-located with the
    agent). Two vLLM processes on one GPU without MPS time-slice it; this model lets
    their iterations take turns, first come first served: an engine holds the GPUs for
    one step, and a run of iterations is cut at the iteration in flight when another
    engine of the group asks for them. With two engines in event stepping, the holder
    runs its run and the rest of the queued engine's (:meth:`sim.engine.Engine._joint_run`) as one
    step. Memory is split by each engine's own ``gpu_memory_utilization``."""

    def __init__(self, env: simpy.Environment, name: str) -> None:
        self.env = env
        self.name = name
        self.holder: Engine | None = None
        self.queue: deque[tuple[Engine, simpy.Event]] = deque()
        #: engines in the group (each counts itself in)
        self.members = 0
        #: the holder while it runs a joint run (its iterations and the queued engine's)
        self.joint: Engine | None = None

    def acquire(self, engine: Engine) -> simpy.Event:
        ev = self.env.event()
        if self.holder is None:
            self.holder = engine
            ev.succeed()
            return ev
        self.queue.append((engine, ev))
        holder = self.holder
        if holder._in_run and holder.process is not None:  # stop its run in flight
            holder._in_run = False
            holder.process.interrupt()
        return ev

    def partner(self, engine: Engine) -> Engine | None:
        """The engine ``engine`` (the holder) can run a joint run with: the other of a
        two-engine group, queued, with the rest of a run parked (event stepping, no CPU
        KV tier, no per-token ITL samples)."""
        if self.members != 2 or len(self.queue) != 1:
            return None
        other = self.queue[0][0]
        if other._parked is None or engine.offload is not None:
            return None
        if engine.recorder.itl_samples or other.recorder.itl_samples:
            return None
        return other

    def serve(self, engine: Engine) -> None:
        """Take the queued ``engine`` out of the queue: the holder ran its iterations."""
        other, ev = self.queue.popleft()
        assert other is engine
        ev.succeed(SERVED)

    def stop_joint(self) -> None:
        """A queued engine got a submission: stop a joint run at the iteration in flight."""
        eng = self.joint
        if eng is not None and eng._in_run and eng.process is not None:
            eng._in_run = False
            eng.process.interrupt()

    def release(self, engine: Engine) -> None:
        if self.holder is not engine:
            raise RuntimeError(f"GPU group {self.name}: released by an engine not holding it")
        if self.queue:
            nxt, ev = self.queue.popleft()
            self.holder = nxt
            ev.succeed()
        else:
            self.holder = None

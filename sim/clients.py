"""Request generators that drive an engine: closed-loop clients and Poisson arrivals.

These are plain serving loads (no agent logic): the engine benchmark, the queueing
checks and quick what-ifs use them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from engine.kv_cache import StreamSpace
from sim.deployment import AnyEngine


def closed_loop_client(
    env: simpy.Environment,
    engine: AnyEngine,
    streams: StreamSpace,
    requests: int,
    first_prompt: int,
    extend: int,
    output: int,
    think_s: float = 0.0,
    carry_output: bool = False,
    tag: Any = None,
) -> Generator[simpy.Event, Any, None]:
    """One client issuing ``requests`` requests back to back (after ``think_s``).

    Each prompt is the previous prompt plus ``extend`` new tokens; with
    ``carry_output`` the previous output is part of it too (an agent's growing
    context). Prompts share their prefix through the prefix cache: with
    ``carry_output`` every request continues one stream; without, prompts are
    prefixes of one prompt stream and each request's output lives on a child stream.
    """
    prompt = first_prompt
    root = streams.new()
    for _ in range(requests):
        stream = root if carry_output else streams.new(root, prompt)
        req = engine.submit(prompt, output, stream, tag)
        yield req.done
        if req.status != "finished":
            return
        prompt += extend + (req.generated if carry_output else 0)
        if think_s > 0:
            yield env.timeout(think_s)


def start_closed_loop(
    env: simpy.Environment,
    engine: AnyEngine,
    clients: int,
    requests: int,
    first_prompt: int,
    extend: int,
    output: int,
    think_s: float = 0.0,
    carry_output: bool = False,
) -> list[simpy.Process]:
    """Start ``clients`` closed-loop clients (see :func:`closed_loop_client`)."""
    streams = StreamSpace()
    return [
        env.process(
            closed_loop_client(
                env,
                engine,
                streams,
                requests,
                first_prompt,
                extend,
                output,
                think_s,
                carry_output,
                tag=c,
            )
        )
        for c in range(clients)
    ]


def poisson_arrivals(
    env: simpy.Environment,
    engine: AnyEngine,
    rate_per_s: float,
    count: int,
    prompt: Callable[[np.random.Generator], int],
    output: Callable[[np.random.Generator], int],
    rng: np.random.Generator,
) -> Generator[simpy.Event, Any, None]:
    """``count`` independent requests with exponential inter-arrival times."""
    for i in range(count):
        yield env.timeout(float(rng.exponential(1.0 / rate_per_s)))
        engine.submit(prompt(rng), output(rng), tag=i)

"""The rows of a run's tables: one typed record per table, its field names the columns.

Engines record a :class:`RequestRow` per request and an :class:`IterationRow` per
engine step (``requests.parquet``, ``engine_steps.parquet``); agents a :class:`StepRow`
per step and a :class:`TaskRow` per task (``steps.parquet``, ``tasks.parquet``; the
live replay writes the same task rows and a client's view of the step rows). Rows are
built by keyword, and a frame takes its columns from the record's fields
(:func:`frame`), so a column cannot be swapped with another: a misspelt or missing
field is a type error, and the order is the record's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd


class RequestRow(NamedTuple):
    """One request of an engine, when it ended (finished or rejected)."""

    engine: str
    request_id: int
    tag: Any
    status: str
    reason: str
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    admitted_s: float
    first_token_s: float
    finished_s: float
    queue_s: float
    ttft_s: float
    tpot_s: float
    e2e_s: float
    preemptions: int
    cached_tokens: int


class IterationRow(NamedTuple):
    """One engine step: an iteration in ``iteration`` stepping, a run of ``iterations``
    identical-shape iterations in ``event`` stepping."""

    engine: str
    start_s: float
    duration_s: float
    iterations: int
    decode_seqs: int
    prefill_chunks: int
    prefill_tokens: int
    running: int
    waiting: int
    kv_used_blocks: int
    kv_cached_blocks: int
    kv_total_blocks: int


class StepRow(NamedTuple):
    """One agent step (the agent request of the step, its tool and its waits).

    Next to the project's own breakdown (queue, prefill, decode, tool, stall), the row has
    what the CoMem authors record (AUTHORS_SETUP.md, "What they measure"):
    ``llm_exec_time_s`` (the agent request at the client, queueing included),
    ``summary_exec_time_s`` (the summary request whose result the context took up at this
    step), ``prefill_exec_time_s`` (its pre-warm request, when there is one),
    ``env_exec_time_s`` (tool), and ``total_step_time_s`` by their formula for the policy
    (:func:`sim.context_policy.total_step_time`).
    """

    architecture: str
    agent: int
    task: int
    step: int
    #: the agent request's engine status: ``finished``, or ``rejected`` (the step that
    #: ended its task early)
    status: str
    submit_s: float
    admitted_s: float
    first_token_s: float
    finished_s: float
    queue_s: float
    prefill_s: float
    decode_s: float
    tool_s: float
    stall_s: float
    step_latency_s: float
    prompt_tokens: int
    cached_tokens: int
    uncached_prefill_tokens: int
    action_tokens: int
    summary_launched: bool
    summary_swapped: bool
    llm_exec_time_s: float
    summary_exec_time_s: float
    prefill_exec_time_s: float
    env_exec_time_s: float
    total_step_time_s: float


class TaskRow(NamedTuple):
    """One task of an agent."""

    architecture: str
    agent: int
    task: int
    start_s: float
    end_s: float
    latency_s: float
    steps: int
    #: ``finished``, or why the task ended early (``context_exceeded``: an agent prompt
    #: past max_model_len; ``kv_cache_too_small``: one the engine's whole KV cache cannot
    #: hold; ``memory_``: the same of a memory prompt; ``crashed: ...``: a live agent's
    #: thread died)
    status: str
    summaries: int
    stall_s: float


def frame(rows: Sequence[Sequence[Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    """The table of ``rows`` under ``columns``, a record's fields (``StepRow._fields``)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))


#: what an agent's request was for (``requests.parquet``'s ``purpose`` column)
REQUEST_PURPOSES = ("step", "summary", "pre-warm")


def agent_request_columns(requests: pd.DataFrame) -> pd.DataFrame:
    """An agent run's request table with its ``tag`` (``(agent, task, step)``, or with a
    fourth member ``"summary"`` / ``"pre-warm"``; in memory, a tuple) as four typed
    columns, ``agent``, ``task``, ``step`` (empty for a pre-warm) and ``purpose``, as
    Parquet stores them (a column of tuples of mixed types cannot be written)."""
    import pandas as pd

    tags = list(requests["tag"])
    named = pd.DataFrame(
        {
            "agent": pd.Series([tg[0] for tg in tags], dtype="Int64"),
            "task": pd.Series([tg[1] for tg in tags], dtype="Int64"),
            "step": pd.Series([tg[2] for tg in tags], dtype="Int64"),
            "purpose": pd.Series([tg[3] if len(tg) > 3 else "step" for tg in tags], dtype=object),
        },
        index=requests.index,
    )
    cols = list(requests.columns)
    at = cols.index("tag")
    return pd.concat([requests[cols[:at]], named, requests[cols[at + 1 :]]], axis=1)

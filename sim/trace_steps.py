"""Reading a steps CSV (one row per LLM call of an agent), checked row by row.

The ``trace`` workload replays these rows and ``workload fit`` fits distributions to
them, so both read through :func:`load_steps`: a cell that is wrong is refused with one
line naming the file, the row and the column, never clipped into a plausible number
(a negative completion read as 1 token would change every result silently).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from calibration.errors import ComemInputError
from calibration.inputs import MAX_SECONDS, MAX_TOKENS

#: the columns read; the file may hold others (the shared data has 22)
STEP_COLUMNS = (
    "source",
    "trajectory_id",
    "step",
    "prompt_tokens",
    "completion_tokens",
    "visible_output_tokens",
    "observation_tokens_derived",
    "observation_tokens_est_chars4",
    "tool_time_s",
)
#: the cells that say which trajectory a row belongs to: never empty
NAME_COLUMNS = ("source", "trajectory_id")


@lru_cache(maxsize=4)
def load_steps(path: str) -> pd.DataFrame:
    """Read and check a steps CSV; the cleaned columns the workloads use are added.

    Refused, with the file, row and column: an empty ``source`` or ``trajectory_id``
    (it would be dropped, or crash the sort of source names); a negative or fractional
    count in the measured token columns (``step``, ``prompt_tokens``,
    ``completion_tokens``, ``observation_tokens_est_chars4``); ``visible_output_tokens``
    above ``completion_tokens`` (the visible output is part of what was decoded); a
    (source, trajectory, step) given twice (naming both rows).

    Deliberately kept, because the shared SWE-bench data has such rows (its README):
    a negative ``observation_tokens_derived`` (a difference of provider counts; ~3.7%
    of the Gemini rows) reads as 0, a negative ``visible_output_tokens`` (completion
    minus reasoning, where a provider reported more reasoning than completion) as 0,
    and a negative ``tool_time_s`` (11 rows down to -2.4 s, timestamp noise) as 0 s.
    A completion of 0 tokens reads as 1: an engine request decodes at least one token.
    Empty cells: ``prompt_tokens``, ``observation_tokens_derived`` (the chars/4
    estimate is used) and ``tool_time_s`` (drawn from the measured ones) may be empty,
    where the source did not measure them (see :mod:`sim.workloads`).
    """
    from calibration.inputs import read_csv

    p = Path(path)
    frame = read_csv(
        p, "agent-steps", usecols=list(STEP_COLUMNS), dtype=dict.fromkeys(NAME_COLUMNS, str)
    )
    where = str(p)
    _check_names(frame, where)
    _read_numbers(frame, where)
    _check_visible_within_completion(frame, where)
    _check_unique_steps(frame, where)
    obs = frame["observation_tokens_derived"].fillna(frame["observation_tokens_est_chars4"])
    return frame.assign(
        observation=obs.clip(lower=0).round().astype(int),
        completion=frame["completion_tokens"].clip(lower=1).astype(int),
        kept=frame["visible_output_tokens"].clip(lower=0).astype(int),
        tool_s=frame["tool_time_s"].clip(lower=0),
    ).sort_values(["trajectory_id", "step"])


def _row(frame: pd.DataFrame, i: int) -> int:
    """The file row of the frame's ``i``-th row (1 is the header)."""
    return int(frame.index[i]) + 2


def _check_names(frame: pd.DataFrame, where: str) -> None:
    """Every row names its source and trajectory: an empty cell (or a missing-value
    marker such as NA, which pandas reads as empty) would drop the row or crash."""
    for column in NAME_COLUMNS:
        cells = frame[column]
        empty = cells.isna() | (cells.fillna("x").str.strip() == "")
        if empty.any():
            i = int(empty.to_numpy().nonzero()[0][0])
            raise ComemInputError(
                f"{where}:{_row(frame, i)}: column '{column}' is empty; every step names"
                f" its {column.replace('_', ' ')}"
            )


def _read_numbers(frame: pd.DataFrame, where: str) -> None:
    """The numeric columns as numbers, in place, each checked by ``numeric_column``
    (whole token counts; the three columns the shared data has negative values in
    accept them, see :func:`load_steps`)."""
    from calibration.inputs import numeric_column

    def read(column: str, low: float, **how: bool) -> None:
        frame[column] = numeric_column(frame, column, where, low=low, high=MAX_TOKENS, **how)

    for column in ("step", "completion_tokens", "observation_tokens_est_chars4"):
        read(column, 0, whole=True)
    read("prompt_tokens", 0, whole=True, nullable=True)
    read("visible_output_tokens", -MAX_TOKENS, whole=True)
    read("observation_tokens_derived", -MAX_TOKENS, whole=True, nullable=True)
    frame["tool_time_s"] = numeric_column(
        frame, "tool_time_s", where, low=-MAX_SECONDS, high=MAX_SECONDS, nullable=True
    )


def _check_visible_within_completion(frame: pd.DataFrame, where: str) -> None:
    """The visible output is the part of the decoded tokens that is not reasoning: it
    cannot exceed them."""
    over = frame["visible_output_tokens"] > frame["completion_tokens"]
    if over.any():
        i = int(over.to_numpy().nonzero()[0][0])
        visible = int(frame["visible_output_tokens"].iloc[i])
        completion = int(frame["completion_tokens"].iloc[i])
        raise ComemInputError(
            f"{where}:{_row(frame, i)}: column 'visible_output_tokens' ({visible}) exceeds"
            f" completion_tokens ({completion}); the visible output is part of what was"
            " decoded"
        )


def _check_unique_steps(frame: pd.DataFrame, where: str) -> None:
    """A step given twice would be replayed twice (and weigh twice in a fit)."""
    key = list(NAME_COLUMNS) + ["step"]
    again = frame.duplicated(key, keep="first")
    if again.any():
        i = int(again.to_numpy().nonzero()[0][0])
        source, trajectory, step = frame[key].iloc[i]
        same = (frame[key] == frame[key].iloc[i]).all(axis=1)
        first = int(same.to_numpy().nonzero()[0][0])
        raise ComemInputError(
            f"{where}:{_row(frame, i)}: step {int(step)} of trajectory {trajectory!r}"
            f" (source {source!r}) repeats row {_row(frame, first)}; each step appears once"
        )

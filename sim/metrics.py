"""Explicit metric recorders (no globals): per-request rows and per-step engine series."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REQUEST_COLUMNS = (
    "engine",
    "request_id",
    "tag",
    "status",
    "reason",
    "prompt_tokens",
    "output_tokens",
    "arrival_s",
    "admitted_s",
    "first_token_s",
    "finished_s",
    "queue_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "preemptions",
    "cached_tokens",
)

ITERATION_COLUMNS = (
    "engine",
    "start_s",
    "duration_s",
    "iterations",
    "decode_seqs",
    "prefill_chunks",
    "prefill_tokens",
    "running",
    "waiting",
    "kv_used_blocks",
    "kv_cached_blocks",
    "kv_total_blocks",
)


@dataclass
class MetricsRecorder:
    """Collects rows as plain tuples; frames are built on demand.

    Engines append one request row when a request ends (finished or rejected) and one
    series row per step: an iteration in ``iteration`` stepping, a fast step of
    ``iterations`` identical-shape iterations in ``fast`` stepping.
    """

    requests: list[tuple[Any, ...]] = field(default_factory=list)
    iterations: list[tuple[Any, ...]] = field(default_factory=list)
    #: called with each request row as it is recorded (progress bars, streaming)
    on_request: Callable[[tuple[Any, ...]], None] | None = None

    def add_request(self, row: tuple[Any, ...]) -> None:
        self.requests.append(row)
        if self.on_request is not None:
            self.on_request(row)

    def requests_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.requests, columns=list(REQUEST_COLUMNS))

    def iterations_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.iterations, columns=list(ITERATION_COLUMNS))

    def write_parquet(self, directory: str | Path) -> list[Path]:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "requests.parquet", out / "engine_steps.parquet"]
        self.requests_frame().to_parquet(paths[0], index=False)
        self.iterations_frame().to_parquet(paths[1], index=False)
        return paths

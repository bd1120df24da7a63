"""A live profile's measurements: the CSV ``comem profile`` writes, checked, and the
waves the measured fit (:mod:`calibration.measured`) is fitted on.

Every row is one request of a wave of ``concurrency`` identical requests sent together
(``point``, ``round``); a wave whose requests all succeeded becomes one row of
:func:`wave_table`. A vLLM server's metrics sidecar may also say its KV cache's size
(:func:`cache_config_from_metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calibration.errors import ComemInputError

if TYPE_CHECKING:  # pandas is for reading measurements only
    import pandas as pd

REQUIRED_COLUMNS = (
    "point",
    "round",
    "concurrency",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "ttft_s",
    "mean_itl_s",
    "e2e_s",
)


#: KV capacity or token budget above this is no single engine (10^12 tokens of KV is
#: petabytes)
MAX_TOKENS_PER_ENGINE = 10**12


#: whole-number columns and their least value (``-1``: the server reported no count)
_WHOLE_COLUMNS = {
    "point": 0,
    "round": 0,
    "concurrency": 1,
    "input_tokens": 0,
    "output_tokens": 1,
    "cached_tokens": 0,
    "prompt_tokens": -1,
    "completion_tokens": -1,
}
#: measured times outside these bounds (seconds) are no request of a profile (no HTTP
#: round trip takes under a microsecond)
MIN_MEASURED_S = 1e-6
MAX_MEASURED_S = 1e6


def read_measurements(path: str | Path) -> pd.DataFrame:
    """The profiler's CSV, checked; one clear line (file and row) for the first defect:
    a missing column, a count that is no whole number in range, an 'ok' request whose
    times are not finite and positive (a negative inter-token latency included)."""

    from calibration.inputs import MAX_TOKENS, numeric_column, read_csv, require_columns

    p = Path(path)
    frame = read_csv(p, "measurements")
    require_columns(frame, REQUIRED_COLUMNS, p, " (expected 'comem profile' output)")

    for col in [*REQUIRED_COLUMNS, "cached_tokens"]:
        if col == "status" or col not in frame.columns:
            continue
        if col in _WHOLE_COLUMNS:
            frame[col] = numeric_column(
                frame, col, str(p), low=_WHOLE_COLUMNS[col], high=MAX_TOKENS, whole=True
            )
        else:  # times: empty for a failed request
            frame[col] = numeric_column(frame, col, str(p), nullable=True)
    # an 'ok' request's times are finite and positive (its ITL may be empty: one token)
    ok = frame[frame["status"] == "ok"]
    for col in ("ttft_s", "e2e_s"):
        numeric_column(ok, col, str(p), low=MIN_MEASURED_S, high=MAX_MEASURED_S)
    numeric_column(ok, "mean_itl_s", str(p), low=0.0, high=MAX_MEASURED_S, nullable=True)
    late = ok["ttft_s"] > ok["e2e_s"]
    if late.any():  # the first token cannot come after the last
        label = ok.index[late.to_numpy().nonzero()[0][0]]
        raise ComemInputError(
            f"{p}:{int(label) + 2}: ttft_s {ok.at[label, 'ttft_s']:g} is after e2e_s"
            f" {ok.at[label, 'e2e_s']:g} (the first token cannot come after the request ends)"
        )
    return frame


def wave_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per wave in which every request succeeded: means of what was measured.

    A wave with a failed request ran a different batch than the replay assumes, so it
    is left out (and counted)."""
    import pandas as pd

    rows = []
    if "cached_tokens" not in frame.columns:
        frame = frame.assign(cached_tokens=0)
    for (point, rnd), g in frame.groupby(["point", "round"], sort=True):
        if (g["status"] != "ok").any():
            continue
        completion = g["completion_tokens"].where(g["completion_tokens"] >= 0, g["output_tokens"])
        asked = g["input_tokens"] + g["cached_tokens"]
        prompt = g["prompt_tokens"].where(g["prompt_tokens"] >= 1, asked)
        rows.append(
            {
                "point": int(point),  # type: ignore[call-overload]
                "round": int(rnd),  # type: ignore[call-overload]
                "concurrency": int(g["concurrency"].iloc[0]),
                "cached_tokens": int(g["cached_tokens"].iloc[0]),
                # an 'ok' request had a first token, whatever count the server sent
                "prompt_tokens": max(1, int(round(prompt.mean()))),
                "output_tokens": max(1, int(round(completion.mean()))),
                "requests": len(g),
                "ttft_s": float(g["ttft_s"].mean()),
                "itl_s": float(g["mean_itl_s"].mean()),
                "e2e_s": float(g["e2e_s"].mean()),
            }
        )
    return pd.DataFrame(rows)


def cache_config_from_metrics(path: str | Path) -> tuple[int, int] | None:
    """(KV capacity in tokens, block size) from vLLM's ``vllm:cache_config_info``
    sample in a ``comem profile`` metrics sidecar CSV, or None if it has none."""
    import re

    from calibration.inputs import read_csv

    p = Path(path)
    if not p.exists():
        return None
    frame = read_csv(p, "metrics sidecar")  # its size limit, one line for any defect
    if "sample" not in frame.columns:
        return None
    for sample in frame["sample"].astype(str):
        if not sample.startswith("vllm:cache_config_info{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        try:
            blocks, block = int(labels["num_gpu_blocks"]), int(labels["block_size"])
        except (KeyError, ValueError):
            continue
        if not (1 <= block <= 4096 and 1 <= blocks * block <= MAX_TOKENS_PER_ENGINE):
            raise ComemInputError(
                f"{p}: vllm:cache_config_info gives {blocks} blocks of {block} tokens, no"
                " engine's KV cache; give --kv-capacity-tokens and --block-size instead"
            )
        return blocks * block, block
    return None

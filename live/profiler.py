"""``comem profile``: measure a live OpenAI-compatible server over a grid of loads.

For every grid point (input tokens, output tokens, concurrency) the profiler sends
``rounds`` waves of ``concurrency`` simultaneous streamed requests (the online analogue
of vLLM's ``benchmark_latency`` static batch, which is what the fit in
:mod:`calibration.measured` replays) and writes one CSV row per request as soon as it
ends: the grid point, the status, TTFT, mean inter-token latency, end-to-end latency
and the token counts the server reported. Prompts are distinct random words, so the
prefix cache never helps. When the server exposes vLLM's Prometheus ``/metrics``, the
``vllm:`` samples are scraped before and after every point into a sidecar CSV.

Nothing measured is lost: rows are flushed as they come, a failed request is a row
with its status, and an interrupted run keeps every row written so far.
"""

from __future__ import annotations

import csv
import http.client
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import (
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
)

from calibration import limits
from calibration.errors import ComemInputError
from calibration.inputs import MAX_SECONDS, InputModel, Tokens, TokensOrZero
from live.openai_stream import Endpoint, StreamResult, stream_completion

PROFILE_COLUMNS = (
    "point",
    "cached_tokens",
    "input_tokens",
    "output_tokens",
    "concurrency",
    "round",
    "index",
    "status",
    "error",
    "http_status",
    "prompt_tokens",
    "completion_tokens",
    "token_counts_from",
    "streamed_chunks",
    "start_offset_s",
    "ttft_s",
    "mean_itl_s",
    "max_itl_s",
    "e2e_s",
    "finish_reason",
)


class ProfileGrid(InputModel):
    """The loads to measure. Every combination of the three lists is one grid point."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_tokens: list[Tokens] = Field(default=[16, 256, 1024], min_length=1)
    output_tokens: list[Tokens] = Field(default=[16, 64], min_length=1)
    concurrency: list[PositiveInt] = Field(default=[1, 4, 8], min_length=1)
    #: tokens of each prompt already in the server's prefix cache (an agent's context):
    #: for > 0, every request's prefix is sent first (max_tokens 1, not recorded), then
    #: the wave sends prefix + ``input_tokens`` new tokens
    cached_tokens: list[TokensOrZero] = Field(default=[0, 768], min_length=1)
    #: waves of ``concurrency`` simultaneous requests per point
    rounds: PositiveInt = 1
    #: requests sent (and not recorded) before the grid, to warm the server up
    warmup_requests: int = Field(default=2, ge=0)
    timeout_s: float = Field(default=120.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    #: prompt words are ``{prefix}{i}`` with i < vocabulary_words (the tiny model's
    #: tokenizer maps each to one token; other tokenizers may split them, and the
    #: server's reported prompt_tokens is what the fit uses)
    word_prefix: str = Field(default="w", pattern=r"^[^\s\x00-\x1f\x7f]*$", max_length=32)
    vocabulary_words: PositiveInt = Field(default=4000, le=10**9)
    seed: NonNegativeInt = 0

    def points(self) -> Iterator[tuple[int, int, int, int]]:
        """(cached, input, output, concurrency) of every grid point."""
        for cached in self.cached_tokens:
            for isl in self.input_tokens:
                for osl in self.output_tokens:
                    for c in self.concurrency:
                        yield cached, isl, osl, c

    @property
    def size(self) -> int:
        return (
            len(self.cached_tokens)
            * len(self.input_tokens)
            * len(self.output_tokens)
            * len(self.concurrency)
        )


def load_grid(path: str | Path | None) -> ProfileGrid:
    """Read a grid TOML (or the defaults); one clear line for any defect, its cost
    checked (:func:`check_grid`)."""
    from calibration.inputs import read_toml, validate  # pydantic error -> one line

    if path is None:
        return ProfileGrid()
    where = Path(path).name
    grid = validate(ProfileGrid, read_toml(path, "grid"), where)
    check_grid(grid, where)
    return grid


def check_grid(grid: ProfileGrid, where: str = "grid") -> None:
    """Refuse a grid above the live budgets (:mod:`calibration.limits`): threads in
    flight, requests sent, prompt text built in memory for one wave."""
    limits.check(limits.LIVE_CONCURRENCY, max(grid.concurrency), f"{where}: concurrency")
    requests = grid.warmup_requests + sum(
        c * grid.rounds * (2 if cached else 1) for cached, _, _, c in grid.points()
    )
    limits.check(
        limits.LIVE_REQUESTS,
        requests,
        f"{where}: warmup_requests + rounds x concurrency over the"
        f" {grid.size} points (x 2 with cached_tokens)",
    )
    wave = max(c * (isl + cached) for cached, isl, _, c in grid.points())
    limits.check(
        limits.LIVE_WAVE_TOKENS, wave, f"{where}: concurrency x (input_tokens + cached_tokens)"
    )


def random_prompt(rng: np.random.Generator, n: int, grid: ProfileGrid) -> str:
    ids = rng.integers(0, grid.vocabulary_words, n)
    return " ".join(f"{grid.word_prefix}{i}" for i in ids)


#: the whole of one ``/metrics`` scrape (connect, headers, body), seconds
SCRAPE_TIMEOUT_S = 5.0


class _Scraper:
    """Scrapes ``/metrics`` until one scrape runs past its deadline: a server that serves
    it slowly would otherwise add two timeouts to every grid point."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.given_up = False

    def __call__(self) -> dict[str, float] | None:
        if self.given_up:
            return None
        try:
            return scrape_metrics(self.endpoint, raise_timeout=True)
        except TimeoutError:
            self.given_up = True
            return None


def scrape_metrics(endpoint: Endpoint, raise_timeout: bool = False) -> dict[str, float] | None:
    """vLLM's ``vllm:`` Prometheus samples (histogram buckets left out), or None. The
    whole scrape takes at most :data:`SCRAPE_TIMEOUT_S` (``raise_timeout``: a scrape
    past it raises TimeoutError instead of returning None)."""
    try:
        status, body = endpoint.get("/metrics", timeout_s=SCRAPE_TIMEOUT_S)
    except TimeoutError:
        if raise_timeout:
            raise
        return None
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    samples = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("vllm:") or "_bucket{" in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples or None


class _RowWriter:
    """CSV rows written and flushed one at a time (thread-safe)."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("w", newline="")
        except OSError as exc:
            raise ComemInputError(f"{path}: cannot write ({exc.strerror})") from None
        self._writer = csv.writer(self._fh)
        self._writer.writerow(columns)
        self._fh.flush()
        self._lock = threading.Lock()

    def write(self, row: list[Any]) -> None:
        with self._lock:
            self._writer.writerow(row)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _row(
    point: int,
    cached: int,
    isl: int,
    osl: int,
    c: int,
    rnd: int,
    idx: int,
    wave_start: float,
    r: StreamResult,
) -> list[Any]:
    gaps = np.diff(r.token_s) if len(r.token_s) > 1 else np.array([np.nan])
    # an 'ok' request always has counts: the server's, else the client's (and says so);
    # a failed one measured nothing (-1, 'none')
    prompt, completion = r.counts(cached + isl) if r.ok else (-1, -1)
    return [
        point,
        cached,
        isl,
        osl,
        c,
        rnd,
        idx,
        r.status,
        r.error,
        r.http_status,
        prompt,
        completion,
        r.token_counts_from if r.ok else "none",
        len(r.token_s),
        f"{r.start_s - wave_start:.6f}",
        f"{r.ttft_s:.6f}",
        f"{r.mean_itl_s:.6f}",
        f"{float(np.max(gaps)):.6f}",
        f"{r.e2e_s:.6f}",
        r.finish_reason,
    ]


def run_profile(
    endpoint: Endpoint,
    model: str,
    grid: ProfileGrid,
    out_csv: str | Path,
    extra_body: dict[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Measure every grid point; rows go to ``out_csv`` as they come. Returns a summary
    (status counts, per-point medians, whether /metrics was scraped). ``progress``
    shows a bar of requests done on stderr. An existing ``out_csv`` (or its metrics
    sidecar) is measurements: it is replaced only if ``overwrite``."""
    from calibration.outputs import refuse_overwrite, writable_file

    out = Path(out_csv)
    metrics_path = out.with_suffix(".metrics.csv")
    check_grid(grid)
    refuse_overwrite([out, metrics_path], overwrite)
    writable_file(out)
    writer = _RowWriter(out, PROFILE_COLUMNS)
    metrics_path.unlink(missing_ok=True)  # an old server's metrics must not be read as ours
    run = _ProfileRun(endpoint, model, grid, extra_body, writer, metrics_path)
    bar = _progress_bar(endpoint, grid) if progress else None
    try:
        for _ in range(grid.warmup_requests):
            run.request(random_prompt(run.rng, 16, grid), 4)
        with ThreadPoolExecutor(max_workers=max(grid.concurrency)) as pool:
            for point, shape in enumerate(grid.points()):
                run.measure_point(pool, point, shape, bar)
    finally:
        if bar is not None:
            bar.stop()
        writer.close()
        if run.metrics_writer is not None:
            run.metrics_writer.close()
    return {
        "endpoint": str(endpoint),
        "model": model,
        "csv": str(out),
        "metrics_csv": str(metrics_path) if run.metrics_writer is not None else None,
        "requests": sum(run.statuses.values()),
        "statuses": dict(run.statuses),
        "points": run.per_point,
    }


def _progress_bar(endpoint: Endpoint, grid: ProfileGrid) -> Any:
    """A started rich bar of the requests of every wave (its one task: ``tasks[0]``)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"profiling {endpoint} ({grid.size * grid.rounds} waves)"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} requests"),
        TimeElapsedColumn(),
        transient=True,
    )
    bar.add_task("profile", total=sum(p[-1] for p in grid.points()) * grid.rounds)
    bar.start()
    return bar


class _ProfileRun:
    """One profile under way: what it sends with, where its rows go, what it counted."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        grid: ProfileGrid,
        extra_body: dict[str, Any] | None,
        writer: _RowWriter,
        metrics_path: Path,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.grid = grid
        self.extra_body = extra_body
        self.writer = writer
        self.metrics_path = metrics_path
        #: the /metrics sidecar, opened at the first point the server answers it
        self.metrics_writer: _RowWriter | None = None
        self.statuses: Counter[str] = Counter()
        self.per_point: list[dict[str, Any]] = []
        self.rng = np.random.default_rng(grid.seed)
        self.scrape = _Scraper(endpoint)

    def request(self, prompt: str, max_tokens: int) -> StreamResult:
        return stream_completion(
            self.endpoint, self.model, prompt, max_tokens, self.grid.timeout_s, self.extra_body
        )

    def measure_point(
        self, pool: ThreadPoolExecutor, point: int, shape: tuple[int, int, int, int], bar: Any
    ) -> None:
        """Every round of one grid point, its /metrics samples and its summary."""
        cached, isl, osl, c = shape
        before = self.scrape()
        rows: list[StreamResult] = []
        for rnd in range(self.grid.rounds):
            wave_start, futures = self._wave(pool, shape)
            for idx, fut in enumerate(futures):
                r = fut.result()
                self.writer.write(_row(point, cached, isl, osl, c, rnd, idx, wave_start, r))
                self.statuses[r.status] += 1
                rows.append(r)
                if bar is not None:
                    bar.advance(bar.task_ids[0])
        after = self.scrape() if before is not None else None
        if before is not None and after is not None:
            self._write_metrics(point, before, after)
        ok = [r for r in rows if r.ok]
        self.per_point.append(
            {
                "point": point,
                "cached_tokens": cached,
                "input_tokens": isl,
                "output_tokens": osl,
                "concurrency": c,
                "ok": len(ok),
                "failed": len(rows) - len(ok),
                "ttft_ms": _median_ms([r.ttft_s for r in ok]),
                "itl_ms": _median_ms([r.mean_itl_s for r in ok]),
                "e2e_ms": _median_ms([r.e2e_s for r in ok]),
            }
        )

    def _wave(
        self, pool: ThreadPoolExecutor, shape: tuple[int, int, int, int]
    ) -> tuple[float, list[Future[StreamResult]]]:
        """One wave: ``c`` requests released together (after their cached prefixes, if
        any, are warmed); its start and the requests' futures."""
        cached, isl, osl, c = shape
        grid, rng = self.grid, self.rng
        prompts = [random_prompt(rng, isl, grid) for _ in range(c)]
        if cached:
            # 2 output tokens, not 1: transformers serve indexes a request's full blocks
            # for reuse only after a forward pass that follows them, so a 1-token
            # request leaves nothing cached (measured: 48 ms TTFT after a 1-token
            # warm-up, 8 ms after a 2-token one)
            prefixes = [random_prompt(rng, cached, grid) for _ in range(c)]
            for fut in [pool.submit(self.request, pre, 2) for pre in prefixes]:
                fut.result()
            prompts = [f"{pre} {new}" for pre, new in zip(prefixes, prompts, strict=True)]
        barrier = threading.Barrier(c)

        def one(prompt: str) -> StreamResult:
            barrier.wait()
            return self.request(prompt, osl)

        wave_start = time.perf_counter()
        return wave_start, [pool.submit(one, p) for p in prompts]

    def _write_metrics(self, point: int, before: dict[str, float], after: dict[str, float]) -> None:
        if self.metrics_writer is None:
            columns = ("point", "phase", "sample", "value")
            self.metrics_writer = _RowWriter(self.metrics_path, columns)
        for phase, samples in (("before", before), ("after", after)):
            for name, value in samples.items():
                self.metrics_writer.write([point, phase, name, value])


def _median_ms(values: list[float]) -> float:
    vals = [v for v in values if np.isfinite(v)]
    return float(np.median(vals) * 1e3) if vals else float("nan")


def speed_probe(
    endpoint: Endpoint,
    model: str,
    seed: int,
    rounds: int = 3,
    concurrency: int = 4,
    input_tokens: int = 256,
    output_tokens: int = 32,
    timeout_s: float = 60.0,
    extra_body: dict[str, Any] | None = None,
) -> float:
    """Mean end-to-end latency (s) of a fixed small load on fresh prompts.

    Run it before a calibration and again after the measurement that calibration is
    meant to predict: the ratio says how much the machine's speed drifted in between
    (shared CPUs do drift), which bounds how well any model calibrated before can
    predict what was measured after. Use a different ``seed`` each time, or the second
    probe hits the prefix cache the first one filled."""
    grid = ProfileGrid()
    rng = np.random.default_rng([seed, 7])
    for _ in range(2):  # a fresh server's first requests pay one-off costs (~2 s)
        stream_completion(endpoint, model, random_prompt(rng, 16, grid), 2, timeout_s, extra_body)
    times: list[float] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in range(rounds):
            prompts = [random_prompt(rng, input_tokens, grid) for _ in range(concurrency)]
            futures = [
                pool.submit(
                    stream_completion, endpoint, model, p, output_tokens, timeout_s, extra_body
                )
                for p in prompts
            ]
            for fut in futures:
                r = fut.result()
                if r.ok:
                    times.append(r.e2e_s)
    return float(np.mean(times)) if times else float("nan")

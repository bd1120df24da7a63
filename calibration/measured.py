"""Profiles fitted from a live server's request timings (``comem profile`` output).

A user with a GPU and vLLM (or any OpenAI-compatible server) measures their own setup
with ``comem profile`` and fits this profile with ``comem calibrate fit
--measurements``. The model is the linear surrogate of :mod:`calibration.surrogate`,

    t_iteration = c0 + c1*N_tokens + c2*prefill_pairs + c3*B_decode + c4*KV_decoded
                  + c5*N_tokens*KV_read + a*admitted

(c0 and c3 are the framework's per-iteration and per-sequence overhead). ``c5`` is
for servers whose attention is one dense, masked product over the packed batch
(``transformers serve`` on a CPU: sdpa over all the batch's tokens against all the
keys it reads, ``KV_read`` = cached + new tokens of every scheduled sequence); it is
zero for paged kernels (vLLM), whose cost the other terms carry. ``a``
(``admission_s``) is server work per newly admitted request that shares the engine's
core (HTTP parsing, tokenization under one Python process): it serializes, so a wave
of c requests pays it c times before its first token. Plus ``request_overhead_s``, a
delay per request outside the server's work (network, the wait for the next
iteration boundary, streaming the first token), charged once, before the first token.

Why this is a linear least-squares problem: every profile row comes from a wave of
``c`` identical requests sent together, and the scheduler's decisions for such a wave
do not depend on time (vLLM V1 / transformers FIFO: running requests first, then
waiting ones, chunked under a token budget). So we replay the schedule once per wave,
sum each feature over the iterations before every request's first token and between
its first and last token, and the wave's mean TTFT and mean inter-token latency are
linear in the coefficients. Non-negative least squares on relative errors gives them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas and scipy are for reading and fitting measurements only
    import pandas as pd

from calibration import limits, measurements
from calibration.errors import ComemInputError
from calibration.profile import Profile, code_commit, read_profile_json, write_profile_json
from calibration.surrogate import LinearSurrogate, SurrogateLatency
from engine.kv_cache import KVCache, StreamSpace
from engine.request import Sequence as ScheduledRequest
from engine.scheduler import Scheduler, SchedulerConfig

MEASURED_SCHEMA = "comem-measured-profile/1"


@dataclass(frozen=True)
class WaveFeatures:
    """Feature sums (``c0..c5``, admissions) a wave's mean TTFT and mean ITL are linear in."""

    ttft: np.ndarray
    itl: np.ndarray
    e2e: np.ndarray
    iterations: int


def closed_batch_features(
    concurrency: int,
    prompt_tokens: int,
    output_tokens: int,
    max_num_batched_tokens: int,
    max_num_seqs: int = 1024,
    cached_tokens: int = 0,
) -> WaveFeatures:
    """Replay the schedule of ``concurrency`` identical requests arriving together (the
    project's one scheduler, :mod:`engine.scheduler`, iteration by iteration) and
    sum the surrogate's features per request. The KV cache is taken as large enough
    (the profiler's loads must fit it, which is checked when fitting). ``cached_tokens``
    of each prompt are prefix-cache hits (block-aligned already), left by a warm-up."""
    n = concurrency
    block = 16
    kv = KVCache(1 << 40, block)
    sched = Scheduler(
        kv,
        SchedulerConfig(
            max_num_batched_tokens=int(max_num_batched_tokens), max_num_seqs=int(max_num_seqs)
        ),
    )
    streams = StreamSpace()
    seqs = []
    for i in range(n):
        stream = streams.new()
        if cached_tokens:
            kv.prime(stream, int(cached_tokens))
        seq = ScheduledRequest(i, int(prompt_tokens), int(output_tokens), stream)
        sched.add(seq)
        seqs.append(seq)
    acc = np.zeros(7)
    first = np.full((n, 7), np.nan)
    last = np.full((n, 7), np.nan)
    finished = 0
    while finished < n:
        step = sched.schedule()
        kv_read = sum(seq.computed + q for seq, q in step.entries)
        pairs = sum(
            q * (c + (q + 1) / 2.0)
            for q, c in zip(step.prefill_new, step.prefill_cached, strict=True)
        )
        n_tokens = step.num_tokens
        acc = acc + np.array(
            [
                1.0,
                n_tokens,
                pairs,
                step.num_decode,
                step.decode_kv_total,
                n_tokens * kv_read,
                len(step.admitted),
            ]
        )
        for seq, what in sched.apply(step):
            if what == "first_token":
                first[seq.id] = acc
            else:
                last[seq.id] = acc
                finished += 1
    ttft = first.mean(axis=0)
    e2e = last.mean(axis=0)
    itl = (last - first).mean(axis=0) / max(1, output_tokens - 1)
    return WaveFeatures(ttft, itl, e2e, sched.iterations)


def wave_iterations(
    concurrency: int, prompt_tokens: int, output_tokens: int, cached_tokens: int, budget: int
) -> int:
    """About how many iterations :func:`closed_batch_features` replays for one wave:
    the prefill chunks of every new prompt token, then one per output token for each
    group of ``max_num_seqs`` (1024) requests."""
    prefill = -(-concurrency * max(1, prompt_tokens - cached_tokens) // max(1, budget))
    return prefill + output_tokens * -(-concurrency // 1024)


@dataclass
class MeasuredProfile:
    """A linear-surrogate profile fitted on a live server, with its provenance."""

    surrogate: LinearSurrogate
    request_overhead_s: float
    max_num_batched_tokens: int
    packed_attention_s: float = 0.0
    admission_s: float = 0.0
    kv_capacity_tokens: int | None = None
    block_size: int | None = None
    server: dict[str, Any] = field(default_factory=dict)
    fit_error: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        s = self.surrogate
        return {
            "schema": MEASURED_SCHEMA,
            "kind": "measured",
            "surrogate": {k: getattr(s, k) for k in ("c0", "c1", "c2", "c3", "c4")},
            "packed_attention_s": self.packed_attention_s,
            "admission_s": self.admission_s,
            "request_overhead_s": self.request_overhead_s,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "block_size": self.block_size,
            "server": self.server,
            "fit_error": self.fit_error,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> Path:
        data = self.to_dict()
        # what comem writes, comem must read: checked by the reader before it is written
        MeasuredProfile.from_dict(json.loads(json.dumps(data)), f"{path} (not written)")
        return write_profile_json(path, data)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> MeasuredProfile:
        """Validate and build: every coefficient a finite number of seconds in [0,
        :data:`MAX_COEFFICIENT_S`] (a NaN or negative one would run SimPy's clock
        backwards), some iteration cost > 0, whole token counts."""
        if not isinstance(data, dict) or data.get("schema") != MEASURED_SCHEMA:
            raise ComemInputError(f"{source}: not a measured profile ({MEASURED_SCHEMA})")
        _check_measured(data, source)
        try:
            coef = {k: float(data["surrogate"][k]) for k in ("c0", "c1", "c2", "c3", "c4")}
            err = data.get("fit_error") or {}
            sur = LinearSurrogate(
                **coef,
                mape=float(err.get("itl_mape", float("nan"))),
                max_rel_error=float(err.get("itl_max_rel_error", float("nan"))),
                p90_rel_error=float("nan"),
            )
            kv = data.get("kv_capacity_tokens")
            block = data.get("block_size")
            return cls(
                surrogate=sur,
                request_overhead_s=float(data.get("request_overhead_s", 0.0)),
                packed_attention_s=float(data.get("packed_attention_s", 0.0)),
                admission_s=float(data.get("admission_s", 0.0)),
                max_num_batched_tokens=int(data["max_num_batched_tokens"]),
                kv_capacity_tokens=int(kv) if kv is not None else None,
                block_size=int(block) if block is not None else None,
                server=dict(data.get("server") or {}),
                fit_error=dict(err),
                provenance=dict(data.get("provenance") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ComemInputError(f"{source}: measured profile is malformed ({exc!r})") from None

    @classmethod
    def load(cls, path: str | Path) -> MeasuredProfile:
        return cls.from_dict(read_profile_json(path), str(path))


#: A measured coefficient above this many seconds (per iteration, token, sequence or
#: request) describes no server
MAX_COEFFICIENT_S = 60.0


#: the fields of a measured profile (:meth:`MeasuredProfile.to_dict`)
MEASURED_FIELDS = (
    "schema", "kind", "surrogate", "packed_attention_s", "admission_s", "request_overhead_s",
    "max_num_batched_tokens", "kv_capacity_tokens", "block_size", "server", "fit_error",
    "provenance",
)  # fmt: skip


def _check_measured(data: dict[str, Any], source: str) -> None:
    """One line for the first defect of a measured profile's numbers."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    from calibration.inputs import refuse_unknown_keys

    refuse_unknown_keys(data, MEASURED_FIELDS, source)
    if data.get("kind", "measured") != "measured":
        raise ComemInputError(
            f"{source}: kind {data['kind']!r}: a measured profile's is 'measured'"
        )
    sur = data.get("surrogate")
    if not isinstance(sur, dict):
        raise ComemInputError(f"{source}: 'surrogate' must be an object with c0..c4")
    refuse_unknown_keys(sur, ("c0", "c1", "c2", "c3", "c4"), f"{source}: surrogate")
    coefficients: dict[str, Any] = {
        f"surrogate.{k}": sur.get(k) for k in ("c0", "c1", "c2", "c3", "c4")
    }
    for key in ("packed_attention_s", "admission_s", "request_overhead_s"):
        coefficients[key] = data.get(key, 0.0)
    for key, value in coefficients.items():
        if value is None and key.startswith("surrogate."):
            raise ComemInputError(f"{source}: {key} is missing")
        if not number(value) or not 0.0 <= value <= MAX_COEFFICIENT_S:
            raise ComemInputError(
                f"{source}: {key} must be a finite number of seconds in"
                f" [0, {MAX_COEFFICIENT_S:g}], got {value!r}"
            )
    iteration = [coefficients[f"surrogate.c{i}"] for i in range(5)]
    if not any(v > 0 for v in [*iteration, coefficients["packed_attention_s"]]):
        raise ComemInputError(
            f"{source}: every iteration coefficient is 0: iterations would take no time"
        )
    most = measurements.MAX_TOKENS_PER_ENGINE
    for key, required in (
        ("max_num_batched_tokens", True),
        ("kv_capacity_tokens", False),
        ("block_size", False),
    ):
        count: Any = data.get(key)
        if count is None and not required:
            continue
        if not number(count) or not 1 <= count <= most or count != int(count):
            raise ComemInputError(
                f"{source}: {key} must be a whole number in [1, {most:.0e}], got {count!r}"
            )
    for key in ("server", "fit_error", "provenance"):
        if not isinstance(data.get(key) or {}, dict):
            raise ComemInputError(f"{source}: '{key}' must be an object")


class MeasuredLatency(SurrogateLatency):
    """The engine latency model of a measured profile: the surrogate plus the packed
    attention term and the per-request overhead (see the module docstring)."""

    def __init__(self, profile: MeasuredProfile) -> None:
        super().__init__(profile.surrogate)
        self.profile = profile
        self.c5 = profile.packed_attention_s
        self.admission_s = profile.admission_s
        self.request_overhead_s = profile.request_overhead_s

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        if self.profile.kv_capacity_tokens is None:
            raise ComemInputError(
                "the measured profile records no KV capacity: set engine.kv_capacity_tokens"
            )
        return self.profile.kv_capacity_tokens

    def iteration_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float:
        base = super().iteration_time_of(num_decode, decode_kv_total, prefill_new, prefill_cached)
        if not self.c5:
            return base
        new = sum(prefill_new)
        kv_read = decode_kv_total + new + sum(prefill_cached)
        return base + self.c5 * (num_decode + new) * kv_read

    def steady_iteration_times(
        self, num_decode: int, kv_total0: int, chunk: int, cached0: int, steps: int
    ) -> np.ndarray:
        base = super().steady_iteration_times(num_decode, kv_total0, chunk, cached0, steps)
        if not self.c5 or num_decode + chunk == 0:
            return base
        j = np.arange(steps, dtype=float)
        kv_read = kv_total0 + num_decode * j + (cached0 + chunk * j + chunk if chunk else 0.0)
        return base + self.c5 * (num_decode + chunk) * kv_read


def load_profile(path: str | Path) -> Profile | MeasuredProfile:
    """A profile file of either kind, read once: measured (this module's schema) or
    kernel-fitted (:class:`calibration.profile.Profile`)."""
    data = read_profile_json(path)
    if isinstance(data, dict) and data.get("schema") == MEASURED_SCHEMA:
        return MeasuredProfile.from_dict(data, str(path))
    return Profile.from_dict(data, source=str(path))


#: A wave as the fit replays it: (concurrency, prompt tokens, output tokens, cached tokens
#: in whole blocks).
Wave = tuple[int, int, int, int]


def fit_measured_profile(
    frame: pd.DataFrame,
    max_num_batched_tokens: int,
    kv_capacity_tokens: int | None = None,
    block_size: int | None = None,
    server: dict[str, Any] | None = None,
    source: str = "<frame>",
) -> MeasuredProfile:
    """Fit the surrogate and the request overhead to every complete wave of ``frame``."""
    waves = measurements.wave_table(frame)
    table = _replayable_waves(waves, max_num_batched_tokens, kv_capacity_tokens, block_size, source)
    feats = [
        closed_batch_features(c, p, o, max_num_batched_tokens, cached_tokens=h)
        for c, p, o, h in table
    ]
    # TTFT rows: surrogate features + 1 for the request overhead; ITL rows: + 0
    x_ttft = np.array([[*f.ttft, 1.0] for f in feats])
    multi = (waves["output_tokens"].to_numpy() > 1) & (waves["itl_s"].to_numpy() > 0)
    if not multi.any():  # nothing would pin the decode terms down
        raise ComemInputError(
            f"{source}: no complete wave measured an inter-token latency (each generated"
            " at most one token, or its mean_itl_s is empty or 0); the fit needs waves of"
            " >= 2 output tokens"
        )
    x_itl = np.array([[*f.itl, 0.0] for f, m in zip(feats, multi, strict=True) if m])
    y_ttft = waves["ttft_s"].to_numpy(float)
    y_itl = waves.loc[multi, "itl_s"].to_numpy(float)
    coef = _relative_nnls(x_ttft, y_ttft, x_itl, y_itl)
    sur_coef, packed, admission, overhead = coef[:5], float(coef[5]), float(coef[6]), float(coef[7])

    def rel(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
        return np.abs(pred / meas - 1.0)

    e_ttft = rel(x_ttft @ coef, y_ttft)
    e_itl = rel(x_itl @ coef, y_itl)
    x_e2e = np.array([[*f.e2e, 1.0] for f in feats])
    e_e2e = rel(x_e2e @ coef, waves["e2e_s"].to_numpy(float))
    fit_error = {
        "waves": len(waves),
        "waves_left_out": int(frame.groupby(["point", "round"]).ngroups - len(waves)),
        "ttft_mape": float(e_ttft.mean()),
        "ttft_max_rel_error": float(e_ttft.max()),
        "itl_mape": float(e_itl.mean()) if e_itl.size else float("nan"),
        "itl_max_rel_error": float(e_itl.max()) if e_itl.size else float("nan"),
        "e2e_mape": float(e_e2e.mean()),
        "e2e_max_rel_error": float(e_e2e.max()),
    }
    c0, c1, c2, c3, c4 = (float(c) for c in sur_coef)
    sur = LinearSurrogate(
        c0, c1, c2, c3, c4, mape=fit_error["itl_mape"],
        max_rel_error=fit_error["itl_max_rel_error"], p90_rel_error=float("nan"),
    )  # fmt: skip
    return MeasuredProfile(
        surrogate=sur,
        request_overhead_s=overhead,
        max_num_batched_tokens=max_num_batched_tokens,
        packed_attention_s=packed,
        admission_s=admission,
        kv_capacity_tokens=kv_capacity_tokens,
        block_size=block_size,
        server=dict(server or {}),
        fit_error=fit_error,
        provenance={},
    )


def _replayable_waves(
    waves: pd.DataFrame,
    max_num_batched_tokens: int,
    kv_capacity_tokens: int | None,
    block_size: int | None,
    source: str,
) -> list[Wave]:
    """The waves to replay (cached prefixes in whole blocks, at least one token left to
    compute), refused when too few to fit, preempting, or beyond the replay's budget."""
    if len(waves) < 6:
        raise ComemInputError(
            f"{source}: {len(waves)} complete waves; the fit needs at least 6 (vary input"
            " length, output length and concurrency)"
        )
    block = block_size or 16
    cols = ["concurrency", "prompt_tokens", "output_tokens", "cached_tokens"]
    table = [(int(c), int(p), int(o), min(int(h), int(p) - 1) // block * block)
             for c, p, o, h in waves[cols].to_numpy()]  # fmt: skip
    if kv_capacity_tokens is not None:
        need = (waves["concurrency"] * (waves["prompt_tokens"] + waves["output_tokens"])).max()
        if need > kv_capacity_tokens:
            raise ComemInputError(
                f"{source}: a wave needs {need} KV tokens, more than the server's"
                f" {kv_capacity_tokens}; the fit assumes no preemption"
            )
    limits.check(
        limits.SEQUENCES,
        max(c for c, _, _, _ in table),
        f"{source}: column concurrency",
    )
    limits.check(
        limits.ITERATIONS,
        sum(wave_iterations(c, p, o, h, max_num_batched_tokens) for c, p, o, h in table),
        f"{source}: columns concurrency x prompt_tokens, completion_tokens (replayed per wave)",
    )
    return table


def _relative_nnls(
    x_ttft: np.ndarray, y_ttft: np.ndarray, x_itl: np.ndarray, y_itl: np.ndarray
) -> np.ndarray:
    """Non-negative least squares on relative errors; TTFT and ITL rows each carry equal
    total weight (there are as many of each as waves, or fewer ITL)."""
    from scipy.optimize import nnls

    x = np.vstack([x_ttft, x_itl])
    y = np.concatenate([y_ttft, y_itl])
    w = np.concatenate(
        [np.full(len(y_ttft), 1.0 / len(y_ttft)), np.full(len(y_itl), 1.0 / max(1, len(y_itl)))]
    )
    w = np.sqrt(w) / y
    return np.asarray(nnls(x * w[:, None], y * w)[0])


def fit_measurements_file(
    csv_path: str | Path,
    max_num_batched_tokens: int,
    kv_capacity_tokens: int | None = None,
    block_size: int | None = None,
    server: dict[str, Any] | None = None,
) -> MeasuredProfile:
    """:func:`fit_measured_profile` on a CSV, with provenance (file hash, code, date)."""
    p = Path(csv_path)
    frame = measurements.read_measurements(p)
    kv_from = "given" if kv_capacity_tokens is not None else "unknown"
    if kv_capacity_tokens is None:
        found = measurements.cache_config_from_metrics(p.with_suffix(".metrics.csv"))
        if found is not None:
            kv_capacity_tokens, metrics_block = found
            block_size = block_size or metrics_block
            kv_from = "vllm:cache_config_info in " + p.with_suffix(".metrics.csv").name
    prof = fit_measured_profile(
        frame, max_num_batched_tokens, kv_capacity_tokens, block_size, server, str(p)
    )
    prof.provenance = {
        "measurements": p.name,
        "measurements_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        "rows": int(len(frame)),
        "rows_ok": int((frame["status"] == "ok").sum()),
        "fit_code_commit": code_commit(),
        "fitted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "method": "NNLS on relative wave-mean TTFT and ITL; closed-batch FIFO replay",
        "kv_capacity_from": kv_from,
    }
    return prof


__all__ = [
    "MeasuredProfile",
    "WaveFeatures",
    "closed_batch_features",
    "fit_measured_profile",
    "fit_measurements_file",
    "load_profile",
]

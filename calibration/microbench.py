"""Time the ops of an LLM iteration on the local device and write kernel tables.

``comem calibrate microbench`` measures, with torch, GEMMs (bf16, and fp8 through
``torch._scaled_mm`` where the device runs it), prefill attention (with and without a cached
prefix), decode attention over KV lengths, and a reference mixture-of-experts layer. It writes
the tables in the schema of the committed vLLM kernel tables (aiconfigurator's, read by
:mod:`calibration.kernels`), plus ``device.json`` (the device's memory and its measured
GEMM FLOP/s and copy bandwidth), so ``comem calibrate fit --kernels DIR`` gives a profile of
this device. One GPU measures no all-reduce: that table is written empty and the profile
serves TP 1.

What is timed is torch's own kernels, not vLLM's: ``F.linear`` / ``torch._scaled_mm``
(per-tensor scales) for GEMMs, ``F.scaled_dot_product_attention`` for prefill, a grouped
plain implementation for decode (reads each KV head once, as a GQA kernel does), and a loop
over the active experts for MoE. Each table's ``kernel_source`` says which.

Timing: CUDA events around a run of calls after warm-up (the calls queue on the stream, so
launch gaps hide behind the kernels), CPU ``time.perf_counter``; each row is the median of
several such runs, divided by the calls in a run. ``latency`` is milliseconds, as in the
committed tables.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from calibration.errors import ComemInputError
from calibration.kernels import KERNEL_FILES
from calibration.microbench_plan import (
    ContextShape,
    DecodeShape,
    GemmShape,
    MoeShape,
    Plan,
    gpu_plan,
    quick_plan,
)
from calibration.opmodels import MOE_KERNEL_SOURCES

#: kernel_source of the reference MoE layer (one of those the fit reads)
MOE_KERNEL_SOURCE = MOE_KERNEL_SOURCES[1]

#: The device description written next to the tables (read by get_gpu / calibrate fit).
DEVICE_FILE = "device.json"

#: device strings of torch.cuda.get_device_name -> registry GPU names (as in the tables)
KNOWN_DEVICES = {"NVIDIA H100 80GB HBM3": "h100_sxm", "NVIDIA H200": "h200_sxm"}


def require_torch() -> Any:
    """Import torch, or one clear line saying it is the ``serve`` extra."""
    try:
        import torch
    except ImportError:
        raise ComemInputError(
            "calibrate microbench needs torch, which is not installed"
            " (pip install 'comem-sim[serve]', or a CUDA build of torch for a GPU)"
        ) from None
    return torch


# --- timing ----------------------------------------------------------------------------------


@dataclass
class Timer:
    """Seconds per call of a closure on one device (see the module docstring)."""

    torch: Any
    device: str
    plan: Plan

    def _run(self, fn: Callable[[], Any], calls: int) -> float:
        if self.device == "cuda":
            cuda = self.torch.cuda
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) * 1e-3
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - t0

    def seconds(self, fn: Callable[[], Any]) -> float:
        for _ in range(self.plan.warmup):
            fn()
        once = max(self._run(fn, 1), 1e-7)
        calls = int(min(max(math.ceil(self.plan.min_run_s / once), 1), 1000))
        runs = [self._run(fn, calls) / calls for _ in range(self.plan.runs)]
        # A GPU stream is timed alone: the median. A CPU shares its cores with whatever else
        # runs, which only ever adds time: the fastest run is the op's own cost.
        return statistics.median(runs) if self.device == "cuda" else min(runs)


# --- the ops -----------------------------------------------------------------------------------


def _fp8_works(torch: Any, device: str) -> bool:
    """True if ``torch._scaled_mm`` runs an fp8 e4m3 product on this device."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return False
    try:
        a = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
        b = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
        one = torch.tensor(1.0, device=device)
        torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _gemm_fn(torch: Any, device: str, s: GemmShape, dtype: str) -> Callable[[], Any]:
    x = torch.randn(s.m, s.k, device=device, dtype=torch.bfloat16)
    w = torch.randn(s.n, s.k, device=device, dtype=torch.bfloat16)
    if dtype == "bf16":
        linear = torch.nn.functional.linear
        return lambda: linear(x, w)
    xf, wf = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    one = torch.tensor(1.0, device=device)
    wt = wf.t()  # column-major (k, n), as _scaled_mm wants its second operand
    return lambda: torch._scaled_mm(xf, wt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


def _context_fn(torch: Any, device: str, s: ContextShape) -> Callable[[], Any]:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    bf16 = torch.bfloat16
    q = torch.randn(s.batch, s.nq, s.isl, s.head_dim, device=device, dtype=bf16)
    k = torch.randn(s.batch, s.nkv, s.prefix + s.isl, s.head_dim, device=device, dtype=bf16)
    v = torch.randn_like(k)
    if s.prefix == 0:
        return lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True)
    # the new tokens are the last isl positions: causal from the bottom right
    from torch.nn.attention.bias import causal_lower_right

    bias = causal_lower_right(s.isl, s.prefix + s.isl)
    return lambda: sdpa(q, k, v, attn_mask=bias, enable_gqa=True)


def _decode_fn(torch: Any, device: str, s: DecodeShape) -> Callable[[], Any]:
    bf16 = torch.bfloat16
    group = s.nq // s.nkv
    q = torch.randn(s.batch, s.nkv, group, s.head_dim, device=device, dtype=bf16)
    k = torch.randn(s.batch, s.nkv, s.kv_len, s.head_dim, device=device, dtype=bf16)
    v = torch.randn_like(k)
    scale = s.head_dim**-0.5

    def attend() -> Any:
        # one pass over each KV head for its whole query group
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        return torch.matmul(torch.softmax(scores.float(), dim=-1).to(bf16), v)

    return attend


def _moe_fn(torch: Any, device: str, s: MoeShape) -> Callable[[], Any]:
    bf16 = torch.bfloat16
    x = torch.randn(s.tokens, s.hidden, device=device, dtype=bf16)
    w13 = torch.randn(s.experts, 2 * s.inter, s.hidden, device=device, dtype=bf16) * 0.02
    w2 = torch.randn(s.experts, s.hidden, s.inter, device=device, dtype=bf16) * 0.02
    # balanced routing: token t's j-th expert is (t * top_k + j) mod experts
    slots = torch.arange(s.tokens * s.top_k, device=device)
    expert_of = slots % s.experts
    token_of = slots // s.top_k
    groups = [
        (e, token_of[expert_of == e]) for e in range(s.experts) if bool((expert_of == e).any())
    ]
    linear, silu = torch.nn.functional.linear, torch.nn.functional.silu

    def layer() -> Any:
        out = torch.zeros_like(x)
        for e, idx in groups:
            gate, up = linear(x[idx], w13[e]).chunk(2, dim=-1)
            out.index_add_(0, idx, linear(silu(gate) * up, w2[e]))
        return out

    return layer


# --- the device ------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU " + (platform.processor() or platform.machine())


def device_name(torch: Any, device: str) -> str:
    """The device string the tables carry (torch's CUDA name, or the CPU model)."""
    return str(torch.cuda.get_device_name(0)) if device == "cuda" else _cpu_name()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "device"


def _memory_bytes(torch: Any, device: str) -> float:
    if device == "cuda":
        return float(torch.cuda.get_device_properties(0).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _copy_bandwidth(torch: Any, device: str, timer: Timer, quick: bool) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    n = (1 << 22) if quick else (1 << 30)  # 8 MiB or 2 GiB of bf16
    src = torch.empty(n, device=device, dtype=torch.bfloat16).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = timer.seconds(lambda: dst.copy_(src))
    return 2.0 * 2.0 * n / seconds


# --- running ---------------------------------------------------------------------------------


@dataclass
class MicrobenchResult:
    """Where the tables went, how many rows each has, and what was skipped and why."""

    out_dir: Path
    rows: dict[str, int]
    device: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def _common(torch: Any, name: str, op: str, source: str) -> dict[str, Any]:
    return {
        "framework": "torch",
        "version": str(torch.__version__),
        "device": name,
        "op_name": op,
        "kernel_source": source,
    }


def run_microbench(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    plan: Plan | None = None,
    progress: Callable[[str], None] | None = None,
) -> MicrobenchResult:
    """Measure ``plan`` (default: quick or the GPU set) on ``device``; write the tables.

    A shape that fails on the device (out of memory, an unsupported fp8 shape) is skipped
    and listed in the result, not fatal; a table left with no row is an error.
    """
    torch = require_torch()
    if device not in ("cpu", "cuda"):
        raise ComemInputError(f"--device must be cpu or cuda, got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ComemInputError("--device cuda: torch sees no CUDA device (try --device cpu)")
    plan = plan if plan is not None else (quick_plan() if quick else gpu_plan())
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ComemInputError(
            f"{out}: cannot create the output directory ({exc.strerror})"
        ) from None
    say = progress or (lambda _msg: None)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    if device == "cpu":
        # One thread: on a CPU shared with other work, a thread pool waiting for a
        # descheduled worker turns 0.1 ms ops into 8 ms ones at random (seen on CI's cores).
        torch.set_num_threads(1)
    try:
        return _run_plan(torch, out, device, plan, say)
    finally:
        torch.set_num_threads(threads)


class _Measurer:
    """Times one shape's op; a shape the device cannot run (out of memory, an unsupported
    fp8 shape) is listed in ``skipped`` instead of failing the run."""

    def __init__(self, torch: Any, device: str, plan: Plan) -> None:
        self.torch = torch
        self.device = device
        self.timer = Timer(torch, device, plan)
        #: the device's name, as written in every row
        self.name = device_name(torch, device)
        self.skipped: list[str] = []

    def seconds(self, what: str, make: Callable[[], Callable[[], Any]]) -> float | None:
        torch = self.torch
        try:
            with torch.inference_mode():
                return self.timer.seconds(make())
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            self.skipped.append(f"{what}: {first}")
            if self.device == "cuda":
                torch.cuda.empty_cache()
            return None

    def row(self, op: str, source: str) -> dict[str, Any]:
        """The columns every row of ``op``'s table starts with."""
        return _common(self.torch, self.name, op, source)


def _run_plan(
    torch: Any, out: Path, device: str, plan: Plan, say: Callable[[str], None]
) -> MicrobenchResult:
    m = _Measurer(torch, device, plan)
    dtypes = ["bf16"] + (["fp8"] if _fp8_works(torch, device) else [])
    if "fp8" not in dtypes:
        m.skipped.append("fp8 GEMMs: torch._scaled_mm does not run fp8 on this device")
    tables = {
        "gemm": _gemm_rows(m, plan, dtypes, say),
        "context_attention": _context_rows(m, plan, say),
        "generation_attention": _decode_rows(m, plan, say),
        "moe": _moe_rows(m, plan, say),
    }
    for op, rows in tables.items():
        if not rows:
            raise ComemInputError(f"microbench: every {op} shape failed ({'; '.join(m.skipped)})")
    rows_written = {}
    for op, (fname, _columns) in KERNEL_FILES.items():
        rows = tables.get(op, [])
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=_ALLREDUCE_COLUMNS)
        frame.to_parquet(out / fname, index=False)
        rows_written[op] = len(frame)
    say("copy bandwidth")
    with torch.inference_mode():
        bandwidth = _copy_bandwidth(torch, device, m.timer, plan.name == "quick")
    info = _device_info(m, plan, _gemm_peaks(tables["gemm"]), bandwidth)
    (out / DEVICE_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return MicrobenchResult(out, rows_written, info, m.skipped)


def _gemm_rows(
    m: _Measurer, plan: Plan, dtypes: list[str], say: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows = []
    for dtype in dtypes:
        say(f"gemm {dtype}: {len(plan.gemm)} shapes")
        for s in plan.gemm:
            t = m.seconds(f"gemm {dtype} {s}", partial(_gemm_fn, m.torch, m.device, s, dtype))
            if t is not None:
                source = "torch_linear" if dtype == "bf16" else "torch_scaled_mm_per_tensor"
                rows.append(
                    m.row("gemm", source)
                    | {"gemm_dtype": "bfloat16" if dtype == "bf16" else "fp8"}
                    | asdict(s)
                    | {"latency": t * 1e3}
                )
    return rows


def _context_rows(m: _Measurer, plan: Plan, say: Callable[[str], None]) -> list[dict[str, Any]]:
    say(f"context attention: {len(plan.context)} shapes")
    rows = []
    for c in plan.context:
        t = m.seconds(f"context {c}", partial(_context_fn, m.torch, m.device, c))
        if t is not None:
            rows.append(
                m.row("context_attention", "torch_sdpa")
                | {
                    "batch_size": c.batch,
                    "isl": c.isl,
                    "num_heads": c.nq,
                    "num_key_value_heads": c.nkv,
                    "head_dim": c.head_dim,
                    "beam_width": 1,
                    "attn_dtype": "bfloat16",
                    "kv_cache_dtype": "bfloat16",
                    "step": c.prefix,
                    "window_size": 0,
                    "latency": t * 1e3,
                }
            )
    return rows


def _decode_rows(m: _Measurer, plan: Plan, say: Callable[[str], None]) -> list[dict[str, Any]]:
    say(f"decode attention: {len(plan.decode)} shapes")
    rows = []
    for d in plan.decode:
        t = m.seconds(f"decode {d}", partial(_decode_fn, m.torch, m.device, d))
        if t is not None:
            rows.append(
                m.row("generation_attention", "torch_grouped_matmul")
                | {
                    "batch_size": d.batch,
                    "isl": 1,
                    "num_heads": d.nq,
                    "num_key_value_heads": d.nkv,
                    "head_dim": d.head_dim,
                    "beam_width": 1,
                    "attn_dtype": "bfloat16",
                    "kv_cache_dtype": "bfloat16",
                    "step": d.kv_len - 1,  # the committed tables' convention: KV = step + 1
                    "window_size": 0,
                    "latency": t * 1e3,
                }
            )
    return rows


def _moe_rows(m: _Measurer, plan: Plan, say: Callable[[str], None]) -> list[dict[str, Any]]:
    say(f"moe: {len(plan.moe)} shapes")
    rows = []
    for e in plan.moe:
        t = m.seconds(f"moe {e}", partial(_moe_fn, m.torch, m.device, e))
        if t is not None:
            rows.append(
                m.row("moe", MOE_KERNEL_SOURCE)
                | {
                    "moe_dtype": "bfloat16",
                    "num_tokens": e.tokens,
                    "hidden_size": e.hidden,
                    "inter_size": e.inter,
                    "topk": e.top_k,
                    "num_experts": e.experts,
                    "moe_tp_size": 1,
                    "moe_ep_size": 1,
                    "distribution": "balanced",
                    "latency": t * 1e3,
                }
            )
    return rows


def _gemm_peaks(gemm_rows: list[dict[str, Any]]) -> dict[str, float]:
    """The fastest measured GEMM FLOP/s per dtype (what ``device.json`` calls the peak)."""
    bf16 = [r for r in gemm_rows if r["gemm_dtype"] != "fp8"]
    bf16_peak = max(2.0 * r["m"] * r["n"] * r["k"] / (r["latency"] * 1e-3) for r in bf16)
    peaks = {"bf16": bf16_peak}
    fp8 = [r for r in gemm_rows if r["gemm_dtype"] == "fp8"]
    if fp8:
        peaks["fp8"] = max(2.0 * r["m"] * r["n"] * r["k"] / (r["latency"] * 1e-3) for r in fp8)
    return peaks


def _device_info(
    m: _Measurer, plan: Plan, peaks: dict[str, float], bandwidth: float
) -> dict[str, Any]:
    """``device.json``: the device as ``get_gpu`` reads it, and how it was measured."""
    torch, device = m.torch, m.device
    props = torch.cuda.get_device_properties(0) if device == "cuda" else None
    return {
        "name": KNOWN_DEVICES.get(m.name, _slug(m.name)),
        "device": m.name,
        "memory_gib": round(_memory_bytes(torch, device) / 2**30, 2),
        "hbm_bandwidth_Bps": float(f"{bandwidth:.4g}"),
        "peak_flops": {k: float(f"{v:.4g}") for k, v in peaks.items()},
        "nvlink_Bps": 0.0,
        "sm_count": int(props.multi_processor_count) if props is not None else os.cpu_count() or 1,
        "source": (
            f"comem calibrate microbench (plan '{plan.name}', {device}"
            f"{', one thread' if device == 'cpu' else ''}), torch {torch.__version__},"
            f" {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}; peak_flops is the"
            " fastest measured GEMM, hbm_bandwidth_Bps a measured device copy (read + write)"
        ),
        "skipped": m.skipped,
    }


_ALLREDUCE_COLUMNS = [
    "framework",
    "version",
    "device",
    "op_name",
    "kernel_source",
    "allreduce_dtype",
    "num_gpus",
    "message_size",
    "latency",
    "backend",
]

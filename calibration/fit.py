"""Fitting profiles: per-op models from kernel tables, with the framework overhead fitted
on end-to-end runs (:mod:`calibration.e2e_overhead`) or copied from another profile."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration import op_cv
from calibration import opmodels as om
from calibration.dtypes import check_dtype, compute_dtype
from calibration.e2e_overhead import E2E_FRAMEWORK, e2e_overhead_entry, fit_overhead, load_e2e
from calibration.errors import ComemInputError, KernelDataError
from calibration.kernels import KernelTables, load_kernel_tables
from calibration.opmodels import OpFit
from calibration.profile import (
    DEFAULT_FRAMEWORK,
    FP8_KV_SUFFIX,
    Profile,
    code_commit,
)
from calibration.registry import GpuSpec, get_gpu

#: device strings in the aiconfigurator tables -> registry GPU names
DEVICE_NAMES = {
    "NVIDIA H100 80GB HBM3": "h100_sxm",
    "NVIDIA H200": "h200_sxm",
    "NVIDIA B200": "b200_sxm",
    "NVIDIA B300 SXM6 AC": "b300_sxm",
    "NVIDIA GB200": "gb200",
    "NVIDIA A100-SXM4-80GB": "a100_sxm",
    "NVIDIA L40S": "l40s",
}

#: A roofline that misses its own table by more than this (MAPE) means the table is
#: physically inconsistent, not that the model is too simple (see fit_kernel_ops).
INCONSISTENT_MAPE = 0.5

#: The device description ``comem calibrate microbench`` writes next to its tables.
DEVICE_FILE = "device.json"


def gpu_of_tables(tables: KernelTables) -> str:
    """The registry GPU of the tables' device, else their ``device.json`` (a path)."""
    if tables.device in DEVICE_NAMES:
        return DEVICE_NAMES[tables.device]
    described = tables.directory / DEVICE_FILE
    if described.is_file():
        return str(described)
    raise KernelDataError(
        f"{tables.directory}: device '{tables.device}' is not a known GPU and there is no"
        f" {DEVICE_FILE}; pass --gpu"
    )


#: An op fitter: ``fit_form`` on (features, seconds) with the GPU's hardware figures.
OpFitter = Callable[[om.OpForm, om.Features, np.ndarray, dict[str, float]], OpFit]


def _fitter(cross_validate: bool) -> OpFitter:
    """``fit_form``, plus the op's shape-held-out error (``stats["cv"]``) when asked."""

    def fit(form: om.OpForm, f: om.Features, y: np.ndarray, hw: dict[str, float]) -> OpFit:
        result = om.fit_form(form, f, y, hw)
        if cross_validate:
            result.stats["cv"] = op_cv.cross_validate(form, f, y, hw)
        return result

    return fit


def hardware(gpu: GpuSpec, dtype: str) -> dict[str, float]:
    """The roofline figures an op of weight ``dtype`` is fitted with on ``gpu``: the peak
    FLOP/s of the dtype it computes in, and the HBM bandwidth."""
    return {"peak_flops": gpu.peak_flops[compute_dtype(dtype)], "hbm_Bps": gpu.hbm_bandwidth_Bps}


def fit_kernel_ops(
    tables: KernelTables,
    gpu: GpuSpec,
    dtype: str,
    fallback: KernelTables | None = None,
    cross_validate: bool = False,
) -> tuple[dict[str, OpFit], list[str]]:
    """Fit every op model of a profile; returns the fits and notes on what was done.

    The attention ops are fitted twice, on the bf16 and the fp8 KV-cache rows (suffix
    ``_fp8kv``: ``--kv-cache-dtype fp8``), for both weight dtypes; the all-reduce tables
    are bf16. The GEMM and MoE tables use the profile's dtype (fp8: the 128x128
    block-scaled kernel, plus ``gemm_fp8_tensor``, the per-tensor scaled one), plus a bf16
    GEMM for the LM head and the MoE router (kept in bf16 by FP8 checkpoints). If an op's
    own table is physically inconsistent (its roofline misses it by more than 50% MAPE)
    and a ``fallback`` directory of another GPU with the same SMs is given, that op is
    fitted there and the profile records it.
    """
    dtype = check_dtype(dtype)
    if compute_dtype(dtype) not in gpu.peak_flops:
        raise KernelDataError(f"{tables.directory}: gpu {gpu.name} has no {dtype} peak FLOP/s")
    notes: list[str] = []
    hw_bf16 = hardware(gpu, "bf16")
    hw_dtype = hardware(gpu, dtype)
    _check_required_rows(tables, dtype)
    ops: dict[str, OpFit] = {}
    fit_op = _fitter(cross_validate)
    f, y = om.gemm_rows(tables.gemm, dtype)
    ops["gemm"] = fit_op(om.GEMM, f, y, hw_dtype)
    f, y = om.gemm_rows(tables.gemm, "bf16")
    ops["gemm_bf16"] = fit_op(om.GEMM, f, y, hw_bf16)
    moe = _fit_moe(tables, dtype, hw_dtype, fit_op, notes)
    if moe is not None:
        ops["moe"] = moe
    if dtype == "fp8":
        f, y = om.gemm_rows(tables.gemm, dtype, kernel=om.FP8_TENSOR_KERNEL)
        if len(y) >= 4:
            ops["gemm_fp8_tensor"] = fit_op(om.GEMM, f, y, hw_dtype)
        else:
            notes.append("gemm_fp8_tensor: no per-tensor fp8 GEMM rows, fp8_gemm=tensor not priced")
    # attention work is spread over the SMs in tiles (see opmodels.query_tiles)
    hw_ctx = hw_bf16 | {"sm_count": float(gpu.sm_count)}
    ops |= _fit_attention(tables, hw_bf16, hw_ctx, fit_op, fallback, notes)
    for n in (2, 4, 8):
        f, y = om.allreduce_rows(tables.allreduce, n)
        if len(y) < 4:
            notes.append(f"allreduce_{n}: fewer than 4 rows, not fitted")
            continue
        ops[f"allreduce_{n}"] = fit_op(om.ALLREDUCE, f, y, hw_bf16)
    return ops, notes


def _check_required_rows(tables: KernelTables, dtype: str) -> None:
    """A device's own tables (calibrate microbench) may lack an op or a dtype: the ops every
    model needs must be there (MoE and all-reduce are left out with a note)."""
    for op, rows, which in (
        ("GEMM", om.gemm_rows(tables.gemm, dtype), dtype),
        ("GEMM", om.gemm_rows(tables.gemm, "bf16"), "bf16"),
        ("context_attention", om.context_rows(tables.context_attention), "bf16"),
        ("generation_attention", om.generation_rows(tables.generation_attention), "bf16"),
    ):
        if len(rows[1]) < 4:
            raise KernelDataError(
                f"{tables.directory}: {len(rows[1])} usable {which} {op} row(s), 4 needed"
            )


def _fit_moe(
    tables: KernelTables,
    dtype: str,
    hw: dict[str, float],
    fit_op: OpFitter,
    notes: list[str],
) -> OpFit | None:
    """The MoE op on :data:`calibration.opmodels.MOE_ROUTING` (else balanced routing), with
    its error per expert-parallel size; None (and a note) when the table has too few rows."""
    routing = om.moe_routing(tables.moe, dtype)
    f, y = om.moe_rows(tables.moe, dtype, routing)
    if len(y) < 4:
        notes.append(f"moe: {len(y)} {dtype} rows, not fitted (the profile prices dense models)")
        return None
    if routing == om.MOE_ROUTING:
        notes.append(f"moe: fitted on {routing} routing (calibration.opmodels.MOE_ROUTING)")
    else:
        notes.append(
            f"moe: no {om.MOE_ROUTING} rows; fitted on {routing} routing, which touches the"
            " most experts: at decode sizes slower than a trained router's"
        )
    moe = fit_op(om.MOE, f, y, hw)
    ep_rows = int(np.sum(f["ep"] > 1))
    pred = om.predict(om.MOE, moe, f)
    moe.stats["with_lattice_by_ep"] = {
        str(int(ep)): om.error_stats(pred[f["ep"] == ep], y[f["ep"] == ep])
        for ep in np.unique(f["ep"])
    }
    if not ep_rows:  # the parameter is then unconstrained: leave it out
        del moe.params["nonlocal_slot"]
        notes.append("moe: no expert-parallel rows, --enable-expert-parallel not priced")
    return moe


def _fit_attention(
    tables: KernelTables,
    hw_bf16: dict[str, float],
    hw_ctx: dict[str, float],
    fit_op: OpFitter,
    fallback: KernelTables | None,
    notes: list[str],
) -> dict[str, OpFit]:
    """Context and generation attention on the bf16 and the fp8 KV-cache rows; a context
    table whose roofline misses it by more than :data:`INCONSISTENT_MAPE` is fitted on
    ``fallback``'s instead."""
    ops: dict[str, OpFit] = {}
    for kv in ("bf16", "fp8"):
        suffix = FP8_KV_SUFFIX if kv == "fp8" else ""
        f, y = om.context_rows(tables.context_attention, kv)
        if kv == "fp8" and len(y) < 4:
            notes.append("attention: no fp8 KV-cache rows, kv_cache_dtype=fp8 not priced")
            continue
        ctx = fit_op(om.CONTEXT_ATTENTION, f, y, hw_ctx)
        if ctx.stats["roofline_only"]["mape"] > INCONSISTENT_MAPE and fallback is not None:
            own = ctx.stats["roofline_only"]["mape"]
            fb_f, fb_y = om.context_rows(fallback.context_attention, kv)
            ctx = fit_op(om.CONTEXT_ATTENTION, fb_f, fb_y, hw_ctx)
            ctx.stats["fitted_on"] = str(fallback.directory)
            ctx.stats["own_table_mape"] = round(
                om.mape(om.predict(om.CONTEXT_ATTENTION, ctx, f), y), 4
            )
            notes.append(
                f"context_attention{suffix}: own table inconsistent (roofline MAPE {own:.0%}), "
                f"fitted on {fallback.device} instead"
            )
        ops["context_attention" + suffix] = ctx
        f, y = om.generation_rows(tables.generation_attention, kv)
        ops["generation_attention" + suffix] = fit_op(om.GENERATION_ATTENTION, f, y, hw_bf16)
    return ops


def fit_profile(
    kernel_dir: str | Path,
    dtype: str = "bf16",
    gpu: str | None = None,
    e2e_csv: str | Path | None = None,
    fallback_kernel_dir: str | Path | None = None,
    overhead_from: Profile | None = None,
    replace: dict[str, Path] | None = None,
    cross_validate: bool = False,
    family_folders: list[Path] | None = None,
) -> Profile:
    """Fit a full profile from a kernel directory (and optionally an end-to-end CSV).

    The overhead term comes from ``e2e_csv`` when given, else from ``overhead_from``
    (the per-iteration CPU work does not depend on the GPU model), else it is zero.
    """
    tables = load_kernel_tables(kernel_dir, replace)
    gpu_name = gpu or gpu_of_tables(tables)
    spec = get_gpu(gpu_name)
    fallback = load_kernel_tables(fallback_kernel_dir) if fallback_kernel_dir else None
    ops, notes = fit_kernel_ops(tables, spec, dtype, fallback, cross_validate)
    if family_folders:
        family, family_notes = _fit_families(
            family_folders, ops, spec, tables, dtype, _fitter(cross_validate)
        )
        ops |= family
        notes += family_notes
    framework = DEFAULT_FRAMEWORK
    folder = Path(kernel_dir).name
    version = folder.removeprefix("vllm-") if folder.startswith("vllm-") else "unknown"
    kernel_data = (
        "NVIDIA ai-dynamo/aiconfigurator commit 095f58a51c4ca8e61b66ec108d86f223f8d559ce, "
        f"systems/data/{spec.name}/<op>/vllm/{version} (Apache-2.0)"
    )
    for op, path in (replace or {}).items():
        kernel_data += f"; {op} from {'/'.join(path.parts[-3:])}"
    described = tables.directory / DEVICE_FILE
    if described.is_file():  # a device's own tables, from comem calibrate microbench
        from calibration.inputs import read_json

        framework = "torch-microbench"
        device = read_json(described, "device")
        kernel_data = str(
            device.get("source", described) if isinstance(device, dict) else described
        )
    provenance: dict[str, Any] = {
        "kernel_data": kernel_data,
        "kernel_dir": "/".join(Path(kernel_dir).parts[-3:]),
        "kernel_dtypes": {
            "gemm_moe": om.kernel_dtype(tables.gemm["gemm_dtype"], check_dtype(dtype)),
            "moe": om.kernel_dtype(tables.moe["moe_dtype"], check_dtype(dtype), moe=True),
            "attention_kv": "bfloat16",
        },
        "kernel_vllm_version": version,
        "fit_code_commit": code_commit(),
        "fit_date": _dt.date.today().isoformat(),
        "notes": notes,
    }
    profile = Profile(spec.name, check_dtype(dtype), framework, ops, {}, provenance)
    if e2e_csv is not None:
        e2e = load_e2e(e2e_csv)
        fit, _ = fit_overhead(profile, e2e, gpu_name)
        entry = e2e_overhead_entry(fit, len(e2e))
        profile.overheads = {E2E_FRAMEWORK: entry}
        profile.overhead = dict(entry)
    elif overhead_from is not None:
        copied = f"{overhead_from.gpu}/{overhead_from.dtype}"
        profile.overhead = dict(overhead_from.overhead) | {"copied_from": copied}
        profile.overheads = {
            name: dict(entry) | {"copied_from": copied}
            for name, entry in overhead_from.overheads.items()
        }
    return profile


def build_default_profiles(shared: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Regenerate the embedded profiles from a ``shared/`` checkout.

    h100_sxm bf16 gets the overhead fitted on the end-to-end runs; the other three copy
    it. h200_sxm's context-attention table is inconsistent (see fit_kernel_ops), so
    h100_sxm's table is its fallback: both GPUs are GH100 with the same SMs and clocks.
    """
    from calibration.profile import PROFILE_DIR, profile_path

    root = Path(shared)
    kernels = root / "data" / "kernels"
    e2e = root / "data" / "e2e" / "vllm_static_batch_h100.csv"
    out = Path(out_dir) if out_dir is not None else PROFILE_DIR
    h100 = kernels / "h100_sxm" / "vllm-0.19.0"
    h200 = kernels / "h200_sxm" / "vllm-0.19.0"
    base = fit_profile(h100, "bf16", "h100_sxm", e2e_csv=e2e)
    written = [base.save(out / profile_path("h100_sxm", "bf16").name)]
    for gpu, directory, dtype in (
        ("h100_sxm", h100, "fp8"),
        ("h200_sxm", h200, "bf16"),
        ("h200_sxm", h200, "fp8"),
    ):
        fallback = h100 if gpu == "h200_sxm" else None
        prof = fit_profile(directory, dtype, gpu, None, fallback, overhead_from=base)
        written.append(prof.save(out / profile_path(gpu, dtype).name))
    return written


@dataclass(frozen=True)
class GpuTables:
    """Where a GPU's profiles are fitted from: its aiconfigurator version ``folder``, ops
    whose table comes from another folder (``replace``: op -> path under the GPU), the
    dtypes to build (``only``; empty: every dtype its tables price) and a ``fallback``
    GPU for an inconsistent op table (see :func:`fit_kernel_ops`)."""

    folder: str
    replace: tuple[tuple[str, str], ...] = ()
    only: tuple[str, ...] = ()
    fallback: str | None = None


#: The profiles beyond H100/H200 bf16/fp8 (``shared/data/kernels/README.md``). L40S: the
#: 0.22.0 decode-attention table is a 175-row gap fill (step 63..423), so the 0.24.0 table
#: (FlashAttention-2 rows for a bf16 cache, FlashInfer for fp8) is used. H100/H200 get only
#: their weight-only-expert profiles here (their bf16/fp8 ones come from
#: :func:`build_default_profiles`); H200's context attention falls back to H100's as there.
OTHER_GPUS: dict[str, GpuTables] = {
    "b200_sxm": GpuTables("vllm-0.19.0"),
    "b300_sxm": GpuTables("vllm-0.19.0"),
    "gb200": GpuTables("vllm-0.19.0"),
    "a100_sxm": GpuTables("vllm-0.14.0"),
    "l40s": GpuTables(
        "vllm-0.22.0",
        (("generation_attention", "vllm-0.24.0/generation_attention_perf.parquet"),),
    ),
    "h100_sxm": GpuTables("vllm-0.19.0", only=("int4", "mxfp4")),
    "h200_sxm": GpuTables("vllm-0.19.0", only=("int4", "mxfp4"), fallback="h100_sxm"),
}

#: The committed profile whose framework overhead a new GPU's profile copies, per dtype:
#: the overhead is CPU work per iteration, sequence and request (fitted on H100 serving
#: runs, see README); fp4 runs as fp8 does, the weight-only dtypes as bf16.
OVERHEAD_DONOR = {"bf16": "bf16", "fp8": "fp8", "fp4": "fp8", "int4": "bf16", "mxfp4": "bf16"}


def profile_dtypes(tables: KernelTables, gpu: GpuSpec) -> list[str]:
    """The weight dtypes a GPU's tables price: its GEMM dtype's rows and peak FLOP/s (fp8,
    fp4), or, for the expert-only dtypes (int4, mxfp4), its bf16 MoE rows
    (:mod:`calibration.weight_only`)."""
    gemm = set(tables.gemm["gemm_dtype"])
    moe = set(tables.moe["moe_dtype"])
    found = ["bf16"]
    if "fp8" in gpu.peak_flops and gemm & {"fp8", "fp8_block"}:
        found.append("fp8")
    if "fp4" in gpu.peak_flops and "nvfp4" in gemm and "nvfp4" in moe:
        found.append("fp4")
    found += [d for d in ("int4", "mxfp4") if om.MOE_KERNEL_DTYPES[d] in moe]
    return found


def build_other_gpu_profiles(
    shared: str | Path, gpus: list[str] | None = None, out_dir: str | Path | None = None
) -> list[Path]:
    """Fit the embedded profiles of :data:`OTHER_GPUS` (every dtype their tables price),
    each op with its shape-held-out cross-validated error; the framework overhead is copied
    from the committed h200_sxm profile (:data:`OVERHEAD_DONOR`), left as it is. The
    serving fit (``benchmarks/serving_transfer.py --write-defaults``) writes every
    profile's overhead, its own where serving rows were measured (gpt-oss MXFP4 on
    H100/H200, Kimi-K2.5 int4 on H200): rerun it after a rebuild."""
    from calibration.profile import PROFILE_DIR, default_profile, profile_path

    kernels = Path(shared) / "data" / "kernels"
    out = Path(out_dir) if out_dir is not None else PROFILE_DIR
    written = []
    for name in gpus or list(OTHER_GPUS):
        if name not in OTHER_GPUS:
            raise ComemInputError(f"unknown gpu '{name}' to build; known: {', '.join(OTHER_GPUS)}")
        where = OTHER_GPUS[name]
        directory = kernels / name / where.folder
        replace = {op: kernels / name / rel for op, rel in where.replace}
        fallback = kernels / where.fallback / where.folder if where.fallback else None
        tables = load_kernel_tables(directory, replace)
        dtypes = profile_dtypes(tables, get_gpu(name))
        folders = sorted((kernels / name).glob("vllm-*"))
        for dtype in [d for d in dtypes if not where.only or d in where.only]:
            donor = default_profile("h200_sxm", OVERHEAD_DONOR[dtype])
            prof = fit_profile(
                directory, dtype, name, None, fallback, overhead_from=donor,
                replace=replace, cross_validate=True, family_folders=folders,
            )  # fmt: skip
            written.append(prof.save(out / profile_path(name, dtype).name))
    return written


def _fit_families(
    folders: list[Path],
    ops: dict[str, OpFit],
    spec: GpuSpec,
    tables: KernelTables,
    dtype: str,
    fit_op: Any,
) -> tuple[dict[str, OpFit], list[str]]:
    """The attention families' ops of ``folders`` (:func:`calibration.family_fit.fit_family_ops`)
    on ``spec``'s hardware, their module rows' GEMMs in ``dtype``'s kernel (every caller:
    the profile fit, :mod:`calibration.profile_updates`' add_family_ops and
    add_data_ranges)."""
    from calibration.family_fit import fit_family_ops

    hw = {"peak_flops": spec.peak_flops["bf16"], "hbm_Bps": spec.hbm_bandwidth_Bps}
    hw["sm_count"] = float(spec.sm_count)
    gemm_type = om.kernel_dtype(tables.gemm["gemm_dtype"], check_dtype(dtype))
    return fit_family_ops(folders, ops, hw, gemm_type, fit_op)


#: The family op prefixes (calibration.family_fit).
FAMILIES = ("mla", "dsa", "gdn")

"""In-place updates of the committed profiles: how they were moved to a new op, a new
rule or new statistics without a full rebuild (``comem calibrate build-defaults``), each
recording what it did, with the commit and the date, in the profile's provenance. A fresh
build gives the same result; ``tests/calibration`` checks that where it matters."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, cast

import numpy as np

from calibration import opmodels as om
from calibration.dtypes import EXPERT_ONLY_DTYPES
from calibration.errors import KernelDataError
from calibration.fit import (
    FAMILIES,
    OTHER_GPUS,
    GpuTables,
    _fit_families,
    _fit_moe,
    _fitter,
    hardware,
)
from calibration.kernels import KernelTables, load_kernel_tables
from calibration.op_cv import cross_validate
from calibration.profile import (
    FP8_KV_SUFFIX,
    PROFILE_DIR,
    Profile,
    code_commit,
    op_form,
    profile_path,
)
from calibration.registry import get_gpu
from calibration.weight_only import weight_only_profile


def add_family_ops(shared: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Add the attention families' ops (:mod:`calibration.family_fit`) to the committed
    H100/H200 bf16/fp8 profiles, leaving every other op and their overhead blocks as they
    are (those come from :func:`calibration.fit.build_default_profiles` and ``calibrate
    fit-serving``)."""
    kernels = Path(shared) / "data" / "kernels"
    out = Path(out_dir) if out_dir is not None else PROFILE_DIR
    written = []
    for name in ("h100_sxm", "h200_sxm"):
        spec = get_gpu(name)
        tables = load_kernel_tables(kernels / name / "vllm-0.19.0")
        for dtype in ("bf16", "fp8"):
            prof = Profile.load(profile_path(name, dtype))
            folders = sorted((kernels / name).glob("vllm-*"))
            family, notes = _fit_families(folders, prof.ops, spec, tables, dtype, _fitter(True))
            prof.ops = {k: v for k, v in prof.ops.items() if k.split("_")[0] not in FAMILIES}
            prof.ops |= family
            kept = [n for n in prof.provenance.get("notes", []) if not n.startswith(FAMILIES)]
            prof.provenance["notes"] = kept + notes
            fallback = None
            if name == "h200_sxm":  # as build_default_profiles fits it
                fallback = load_kernel_tables(kernels / "h100_sxm" / "vllm-0.19.0")
            add_cross_validation(prof, tables, fallback)
            prof.provenance["family_ops"] = (
                f"family ops and every op's cv added by add_family_ops at {code_commit()},"
                f" {_dt.date.today().isoformat()}"
            )
            written.append(prof.save(out / profile_path(name, dtype).name))
    return written


def _op_rows(
    key: str, tables: KernelTables, dtype: str, fallback: KernelTables | None
) -> tuple[om.Features, np.ndarray] | None:
    """The rows ``fit_kernel_ops`` fits op ``key`` on (None: not one of its ops)."""
    kv = "fp8" if key.endswith(FP8_KV_SUFFIX) else "bf16"
    base = key.removesuffix(FP8_KV_SUFFIX)
    if base in ("gemm", "gemm_bf16", "gemm_fp8_tensor"):
        kernel = om.FP8_TENSOR_KERNEL if base == "gemm_fp8_tensor" else None
        return om.gemm_rows(tables.gemm, "bf16" if base == "gemm_bf16" else dtype, kernel)
    if base == "moe":
        return om.moe_rows(tables.moe, dtype)
    if base == "context_attention":
        source = fallback if fallback is not None else tables
        return om.context_rows(source.context_attention, kv)
    if base == "generation_attention":
        return om.generation_rows(tables.generation_attention, kv)
    if base.startswith("allreduce_"):
        return om.allreduce_rows(tables.allreduce, int(base.split("_")[1]))
    return None


def add_cross_validation(
    prof: Profile, tables: KernelTables, fallback: KernelTables | None = None
) -> None:
    """Record every kernel op's shape-held-out cross-validated error (``stats["cv"]``) in a
    profile fitted without it; its parameters are left as they are."""
    for key, fit in prof.ops.items():
        rows = _op_rows(key, tables, prof.dtype, fallback)
        if rows is None or "cv" in fit.stats:
            continue
        f, y = rows
        fit.stats["cv"] = cross_validate(op_form(key), f, y, fit.hw)


def add_data_ranges(shared: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Record in every committed profile the coordinate range each kernel op's lattice was
    fitted on (``Lattice.data_range``: past it the correction is held, not decayed), from
    the same rows its fit used; nothing is refitted, so every prediction inside the tables
    stays as it was. An op whose rows cannot be found again (their count differs from its
    fit's) keeps the axes' ends."""
    kernels = Path(shared) / "data" / "kernels"
    out = Path(out_dir) if out_dir is not None else PROFILE_DIR
    written = []
    for (name, dtype), where in _committed_builds().items():
        tables, fallback = _build_tables(kernels, name, where)
        prof = Profile.load(profile_path(name, dtype))
        coords = _family_coords(kernels / name, tables, prof, dtype)
        for key in prof.ops:
            rows = _op_rows(key, tables, dtype, fallback)
            if rows is not None:
                coords[key] = (len(rows[1]), op_form(key).coords(rows[0]))
        for key, (count, axes) in coords.items():
            op = prof.ops.get(key)
            if op is None or op.lattice is None or count != op.stats["with_lattice"]["rows"]:
                continue  # not the rows it was fitted on
            op.lattice.data_range = [(float(np.min(c)), float(np.max(c))) for c in axes]
        prof.provenance["data_ranges"] = (
            f"lattice data ranges added by add_data_ranges at {code_commit()},"
            f" {_dt.date.today().isoformat()}"
        )
        written.append(prof.save(out / profile_path(name, dtype).name))
    return written


def _committed_builds() -> dict[tuple[str, str], GpuTables]:
    """Where each committed profile (GPU, dtype) was fitted from."""
    builds = {("h100_sxm", d): GpuTables("vllm-0.19.0") for d in ("bf16", "fp8")}
    builds |= {
        ("h200_sxm", d): GpuTables("vllm-0.19.0", fallback="h100_sxm") for d in ("bf16", "fp8")
    }
    for name, where in OTHER_GPUS.items():
        for path in sorted(PROFILE_DIR.glob(f"{name}__*.json")):
            dtype = path.stem.rsplit("__", 1)[1]
            if not where.only or dtype in where.only:
                builds[(name, dtype)] = where
    return builds


def _build_tables(
    kernels: Path, name: str, where: GpuTables
) -> tuple[KernelTables, KernelTables | None]:
    """A GPU's kernel tables as its profiles are fitted on them, and its fallback GPU's."""
    replace = {op: kernels / name / rel for op, rel in where.replace}
    tables = load_kernel_tables(kernels / name / where.folder, replace)
    fallback = (
        load_kernel_tables(kernels / where.fallback / where.folder) if where.fallback else None
    )
    return tables, fallback


def refit_moe_ops(shared: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Refit the MoE op of every committed profile on
    :data:`calibration.opmodels.MOE_ROUTING` (with its shape-held-out error), leaving every
    other op and the overhead blocks as they are, and re-derive each GPU's weight-only
    profiles from its refitted bf16 one (:func:`calibration.weight_only.weight_only_profile`):
    how the committed profiles moved from balanced routing without a full rebuild. A fresh
    build gives the same MoE op."""
    kernels = Path(shared) / "data" / "kernels"
    out = Path(out_dir) if out_dir is not None else PROFILE_DIR
    written = []
    for (name, dtype), where in sorted(_committed_builds().items()):
        prof = Profile.load(profile_path(name, dtype))
        if dtype in EXPERT_ONLY_DTYPES or "moe" not in prof.ops:
            continue
        tables, _ = _build_tables(kernels, name, where)
        notes: list[str] = []
        moe = _fit_moe(tables, dtype, hardware(get_gpu(name), dtype), _fitter(True), notes)
        if moe is None:
            raise KernelDataError(f"{name}/{dtype}: its moe op has no rows to refit on")
        prof.ops["moe"] = moe
        kept = [n for n in prof.provenance.get("notes", []) if not n.startswith("moe:")]
        prof.provenance["notes"] = kept + notes
        prof.provenance["moe_routing"] = (
            f"moe op refitted on {om.moe_routing(tables.moe, dtype)} routing by refit_moe_ops"
            f" at {code_commit()}, {_dt.date.today().isoformat()}"
        )
        written.append(prof.save(out / profile_path(name, dtype).name))
        if dtype == "bf16":
            for wo in EXPERT_ONLY_DTYPES:
                if profile_path(name, wo).is_file():
                    derived = weight_only_profile(prof, Profile.load(profile_path(name, wo)), wo)
                    written.append(derived.save(out / profile_path(name, wo).name))
    return written


def _family_coords(
    gpu_dir: Path, tables: KernelTables, prof: Profile, dtype: str
) -> dict[str, tuple[int, list[np.ndarray]]]:
    """Per attention-family op, the count and lattice coordinates of the rows
    :func:`_fit_families` fits it on (found as it finds them)."""

    def rows_of(form: om.OpForm, f: om.Features, y: np.ndarray, _: Any) -> Any:
        return (len(y), form.coords(f))

    folders = sorted(gpu_dir.glob("vllm-*"))
    found, _ = _fit_families(folders, prof.ops, get_gpu(prof.gpu), tables, dtype, rows_of)
    return cast(dict[str, tuple[int, list[np.ndarray]]], found)

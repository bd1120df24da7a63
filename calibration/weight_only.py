"""The weight-only 4-bit expert dtypes (``int4``: Kimi-K2.5's compressed-tensors W4A16;
``mxfp4``: gpt-oss) priced as a W4A16 kernel works: 4-bit weights read from HBM,
dequantized in registers, multiplied with bf16 activations on the bf16 tensor cores.

Their MoE op is the GPU's **bf16 fused-MoE fit evaluated at the 4-bit weight bytes**
(:data:`calibration.dtypes.DTYPE_BYTES`: scales included), not a fit on the tables' own
4-bit MoE rows (``vllm_marlin_int4_moe``, ``vllm_mxfp4_moe``). Why:

- The Marlin int4 tables are slower than the same GPU's bf16 fused-MoE table at every
  token count from 16 up (H100, H200, B200), although they read a quarter of its weight
  bytes: their fit's memory efficiency is 14% of HBM bandwidth (fp8: 75%).
- They are refuted by the served model: on H200 TP8 (vLLM 0.16) Kimi-K2.5's measured TPOT
  at 16-64 clients (16-31 ms, every op included) is below the int4 table's MoE time alone
  (23-74 ms). The mxfp4 table, priced on its own gpt-oss shape, puts gpt-oss-120b's TPOT
  25-40% over the measured one at 4-8 clients on every TP.

This is a rule chosen by looking at those two models' serving rows; what it predicts for
rows no one looked at is reported in ``docs/explanation/latency-model.md``. Everything else
in these profiles (bf16 GEMMs, attention, all-reduce, overhead) is as the checkpoints run:
only the routed experts are quantized.
"""

from __future__ import annotations

import copy
import datetime as _dt
from pathlib import Path

from calibration.dtypes import EXPERT_ONLY_DTYPES
from calibration.errors import KernelDataError
from calibration.profile import PROFILE_DIR, Profile, code_commit, profile_path

#: the one-line rule each weight-only profile records (``provenance["weight_only_moe"]``)
WEIGHT_ONLY_MOE_RULE = (
    "moe: the bf16 fused-MoE fit at the 4-bit weight bytes (W4A16: bf16 tensor cores, 4-bit"
    " HBM reads); the tables' own Marlin int4 / mxfp4 MoE rows are not used (slower than bf16"
    " at >= 16 tokens and above Kimi-K2.5's served TPOT: calibration/weight_only.py)"
)


def weight_only_profile(bf16: Profile, base: Profile, dtype: str) -> Profile:
    """``base`` (a weight-only profile, or the bf16 one where the GPU has none) as a
    ``dtype`` profile whose MoE op is ``bf16``'s."""
    if "moe" not in bf16.ops:
        raise KernelDataError(
            f"profile {bf16.gpu}/bf16 has no moe op: nothing to price {dtype} experts with"
        )
    prof = copy.deepcopy(base)
    prof.dtype = dtype
    prof.ops["moe"] = copy.deepcopy(bf16.ops["moe"])
    prov = prof.provenance
    prov.setdefault("kernel_dtypes", {})["moe"] = "bfloat16"
    prov["notes"] = [n for n in prov.get("notes", []) if not n.startswith("moe:")]
    prov["notes"] += [n for n in bf16.provenance.get("notes", []) if n.startswith("moe:")]
    prov["weight_only_moe"] = (
        f"{WEIGHT_ONLY_MOE_RULE}; set by add_weight_only_profiles at {code_commit()},"
        f" {_dt.date.today().isoformat()}"
    )
    return prof


def add_weight_only_profiles(out_dir: str | Path | None = None) -> list[Path]:
    """Write an ``int4`` and an ``mxfp4`` profile for every GPU whose committed bf16
    profile prices MoE (:func:`weight_only_profile`): how the committed profiles were moved
    to this rule without a refit. A fresh fit (``comem calibrate build-defaults``) gives the
    same MoE op, fitted on the bf16 rows (:data:`calibration.opmodels.MOE_KERNEL_DTYPES`);
    the other ops come from the GPU's existing int4 profile, else its bf16 one. A GPU whose
    bf16 profile has no MoE op but a weight-only profile is an error (it would keep the
    tables' own 4-bit rows)."""
    out = Path(out_dir) if out_dir is not None else PROFILE_DIR
    written = []
    for path in sorted(PROFILE_DIR.glob("*__bf16.json")):
        bf16 = Profile.load(path)
        int4_path = profile_path(bf16.gpu, "int4")
        if "moe" not in bf16.ops:
            stale = [d for d in EXPERT_ONLY_DTYPES if profile_path(bf16.gpu, d).is_file()]
            if stale:
                raise KernelDataError(
                    f"{bf16.gpu}: {', '.join(stale)} profile(s) but no bf16 moe op to price"
                    " their experts with"
                )
            continue
        for dtype in EXPERT_ONLY_DTYPES:
            own = profile_path(bf16.gpu, dtype)
            base_path = own if own.is_file() else int4_path if int4_path.is_file() else path
            prof = weight_only_profile(bf16, Profile.load(base_path), dtype)
            written.append(prof.save(out / own.name))
    return written

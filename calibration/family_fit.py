"""Fit the attention families' ops on their own kernel tables (aiconfigurator, per GPU).

* ``mla_generation`` / ``mla_context``: vLLM's DeepSeek-V3-shaped MLA module
  (``mla_*_module_perf``: projections, norms, rope and the attention kernel of one layer) or,
  on A100 / L40S 0.14.0, the MLA attention kernel alone (``generation_mla_perf`` /
  ``context_mla_perf``, ``vllm_triton_mla``).
* ``dsa_generation`` / ``dsa_context``: the DeepSeek-V3.2 / GLM-5 sparse-attention module
  (``dsa_*_module_perf``: MLA over the indexer's top-k keys plus the indexer itself).
* ``gdn_generation`` / ``gdn_context``: the Gated DeltaNet kernels of one layer (``gdn_perf``:
  causal conv plus the recurrent / chunked delta rule), summed per measured shape.

A module row times the layer's projection GEMMs too. The latency model prices those with the
profile's GEMM op (:func:`calibration.attention_parts.projection_gemms`), so the attention op
is fitted on what is left: the row minus the GEMM op's prediction for its tokens, kept at no
less than :data:`MIN_ATTENTION_SHARE` of the row. The shapes are those of
:mod:`calibration.attention_parts`; ``_fp8kv`` ops are fitted on the fp8-cache rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calibration import opmodels as om
from calibration.attention_parts import mla_decode_shape, mla_prefill_hd, projection_gemms
from calibration.model_spec import ModelSpec
from calibration.opmodels import OpFit
from calibration.registry import get_model

#: A module row's share that is left to the attention op at least (the projections'
#: prediction may exceed a small row: launch-bound GEMMs overlap inside the module).
MIN_ATTENTION_SHARE = 0.2
#: The module tables' models, by the ``model`` column.
MODULE_MODELS = {
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "deepseek-ai/DeepSeek-V3.2": "deepseek-v3.2",
    "zai-org/GLM-5": "glm-5",
}
#: Files per family op, preferred first (module tables, then kernel-only legacy tables).
FAMILY_FILES = {
    "mla": ("mla_{phase}_module_perf.parquet", "{phase}_mla_perf.parquet"),
    "dsa": ("dsa_{phase}_module_perf.parquet",),
}
#: Bytes per element of the GDN recurrent state the tables were measured with (Qwen3.5's
#: ``mamba_ssm_dtype`` float32).
GDN_STATE_BYTES = 4.0


def _largest(folders: list[Path], name: str) -> pd.DataFrame | None:
    """The table ``name`` with the most rows among ``folders`` (a GPU's version folders)."""
    found = [pd.read_parquet(f / name) for f in folders if (f / name).is_file()]
    return max(found, key=len) if found else None


def _one_layer(spec: ModelSpec, heads: int) -> tuple[ModelSpec, int]:
    """The module's model with its attention only, and the TP that leaves ``heads``."""
    tp = max(1, spec.q_heads // heads)
    small = dataclasses.replace(
        spec, layers=1, dense_layers=1, intermediate=spec.intermediate or 1, experts=0,
        top_k=0, moe_intermediate=0, shared_experts=0,
    )  # fmt: skip
    return small, tp


def _projection_s(gemm: OpFit, spec: ModelSpec, tp: int, tokens: np.ndarray) -> np.ndarray:
    """Seconds of one layer's projection GEMMs over ``tokens`` tokens."""
    total = np.zeros_like(tokens, dtype=float)
    for _, n, k, _ in projection_gemms(spec, tp):
        feats = {
            "m": tokens.astype(float),
            "n": np.full(tokens.shape, float(n)),
            "k": np.full(tokens.shape, float(k)),
            "in_bytes": np.full(tokens.shape, 2.0),
        }
        total += om.predict(om.GEMM, gemm, feats)
    return total


def _module_rows(
    table: pd.DataFrame, phase: str, kv: str, gemm_type: str, gemm: OpFit | None
) -> tuple[om.Features, np.ndarray]:
    """Features and attention seconds of MLA / DSA rows (``gemm`` None: kernel-only rows)."""
    rows = table[table["kv_cache_dtype"] == om.KV_TABLE_DTYPES[kv]]
    if "gemm_type" in rows:
        rows = rows[rows["gemm_type"] == gemm_type]
    rows = rows[rows["batch_size"] * rows["isl"] <= 16384]
    models = rows["model"] if "model" in rows else pd.Series("deepseek-ai/DeepSeek-V3", rows.index)
    feats: dict[str, list[np.ndarray]] = {}
    seconds = []
    for (name, _), group in rows.groupby([models, rows["num_heads"]]):
        heads = int(group["num_heads"].iloc[0])
        spec = get_model(MODULE_MODELS[str(name)])
        small, tp = _one_layer(spec, heads)
        b = group["batch_size"].to_numpy(float)
        measured = group["latency"].to_numpy(float) * 1e-3
        if phase == "generation":
            # legacy kernel tables count the step as KV - 1, as the GQA tables do
            kv_len = group["step"].to_numpy(float) + (0.0 if gemm is not None else 1.0)
            nq, nkv, hd = mla_decode_shape(small, tp)
            part = {"batch": b, "kv_total": b * kv_len, "nq": nq, "nkv": nkv, "hd": hd}
            part["kv_bytes"] = np.full(len(b), 1.0 if kv == "fp8" else 2.0)
            tokens = b
        else:
            isl = group["isl"].to_numpy(float)
            hd = mla_prefill_hd(small)
            part = {"q": isl, "prefix": 0.0 * isl, "chunks": b, "nq": heads, "nkv": heads}
            part["hd"] = hd
            tokens = b * isl
        if gemm is not None:
            proj = _projection_s(gemm, small, tp, tokens)
            measured = np.maximum(measured - proj, MIN_ATTENTION_SHARE * measured)
        for key, value in part.items():
            feats.setdefault(key, []).append(np.broadcast_to(np.asarray(value, float), b.shape))
        seconds.append(measured)
    if not seconds:
        return {}, np.zeros(0)
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(seconds)


def _gdn_rows(table: pd.DataFrame, phase: str) -> tuple[om.Features, np.ndarray]:
    """Features and seconds of one GDN layer's kernels, summed per measured shape."""
    rows = table[table["phase"] == phase]
    key = ["model_name", "batch_size", "seq_len", "num_v_heads", "head_k_dim", "head_v_dim"]
    summed = rows.groupby(key, as_index=False)["latency"].sum()
    b = summed["batch_size"].to_numpy(float)
    heads = summed["num_v_heads"].to_numpy(float)
    if phase == "generation":
        kv = b * summed["head_k_dim"].to_numpy(float)
        hd, kv_bytes = summed["head_v_dim"].to_numpy(float), np.full(len(b), GDN_STATE_BYTES)
    else:
        kv = b * summed["seq_len"].to_numpy(float)
        hd, kv_bytes = summed["head_k_dim"].to_numpy(float), np.full(len(b), 2.0)
    feats = {"batch": b, "kv_total": kv, "nq": heads, "nkv": heads, "hd": hd}
    feats["kv_bytes"] = kv_bytes
    return feats, summed["latency"].to_numpy(float) * 1e-3


def fit_family_ops(
    folders: list[Path], ops: dict[str, OpFit], hw: dict[str, float], gemm_type: str, fit_op: Any
) -> tuple[dict[str, OpFit], list[str]]:
    """The family ops the GPU's ``folders`` have tables for (``ops``: the profile's GEMM fits,
    ``gemm_type``: the module rows' GEMM dtype to use; ``fit_op``: fit_form, with
    cross-validation when asked)."""
    found: dict[str, OpFit] = {}
    notes: list[str] = []
    for family, names in FAMILY_FILES.items():
        for phase in ("generation", "context"):
            table, module = None, False
            for pattern in names:
                table = _largest(folders, pattern.format(phase=phase))
                if table is not None:
                    module = "module" in pattern
                    break
            if table is None:
                notes.append(f"{family}_{phase}: no kernel table, {family.upper()} not priced")
                continue
            if module and "gemm_type" in table and not (table["gemm_type"] == gemm_type).any():
                gemm_type_used, gemm = "bfloat16", ops["gemm_bf16"]
            else:
                gemm_type_used, gemm = gemm_type, ops["gemm"]
            form = om.GENERATION_ATTENTION if phase == "generation" else om.CONTEXT_ATTENTION
            for kv, suffix in (("bf16", ""), ("fp8", "_fp8kv")):
                f, y = _module_rows(table, phase, kv, gemm_type_used, gemm if module else None)
                if len(y) >= 8:
                    found[f"{family}_{phase}{suffix}"] = fit_op(form, f, y, hw)
    gdn = _largest(folders, "gdn_perf.parquet")
    if gdn is None or gdn["phase"].nunique() < 2:
        notes.append("gdn: no full gdn_perf table, Gated DeltaNet not priced")
        return found, notes
    for phase in ("generation", "context"):
        f, y = _gdn_rows(gdn, phase)
        found[f"gdn_{phase}"] = fit_op(om.GENERATION_ATTENTION, f, y, hw)
    return found, notes

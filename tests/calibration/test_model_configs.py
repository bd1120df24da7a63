"""Models from Hugging Face ``config.json`` files: the registry's own, a user's path, the HF cache.

The registry is built from the committed configs (calibration/model_configs/); these tests pin
that it equals the hand-written rows it replaced, that a config round-trips, that every way of
naming a model reaches the same spec, and that a config the latency model cannot price or a
garbage file is one clear line naming the field or the file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import assert_user_error, run_comem
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.errors import ComemInputError
from calibration.hf_config import architecture_from_config
from calibration.latency import Batch, LatencyModel
from calibration.model_spec import ModelSpec
from calibration.opmodels import attended_pairs
from calibration.registry import MODEL_CONFIG_DIR, MODELS, REGISTRY, get_model, load_model_config

# The registry's rows as they were written by hand before it was built from configs
# (shared/data/models.md), plus the three models added with it.
EXPECTED = [
    ModelSpec("meta-llama/Llama-2-7b-hf", "llama-2-7b", 32, 4096, 11008, 32, 32, 32000),
    ModelSpec("meta-llama/Llama-2-70b-hf", "llama-2-70b", 80, 8192, 28672, 64, 8, 32000),
    ModelSpec("meta-llama/Meta-Llama-3-8B", "llama-3-8b", 32, 4096, 14336, 32, 8, 128256),
    ModelSpec("meta-llama/Meta-Llama-3-70B", "llama-3-70b", 80, 8192, 28672, 64, 8, 128256),
    ModelSpec("meta-llama/Llama-3.1-8B", "llama-3.1-8b", 32, 4096, 14336, 32, 8, 128256),
    ModelSpec("meta-llama/Llama-3.1-70B", "llama-3.1-70b", 80, 8192, 28672, 64, 8, 128256),
    ModelSpec(
        "mistralai/Mistral-7B-v0.1",
        "mistral-7b",
        32,
        4096,
        14336,
        32,
        8,
        32000,
        sliding_window=4096,
    ),
    ModelSpec("Qwen/Qwen2-7B", "qwen2-7b", 28, 3584, 18944, 28, 4, 152064),
    ModelSpec("Qwen/Qwen2-72B", "qwen2-72b", 80, 8192, 29568, 64, 8, 152064),
    ModelSpec("Qwen/Qwen3-4B", "qwen3-4b", 36, 2560, 9728, 32, 8, 151936, tied_embeddings=True),
    ModelSpec("Qwen/Qwen3-32B", "qwen3-32b", 64, 5120, 25600, 64, 8, 151936),
    ModelSpec("agentica-org/DeepSWE-Preview", "deepswe", 64, 5120, 25600, 64, 8, 151936),
    ModelSpec(
        "Qwen/Qwen3-Coder-480B-A35B-Instruct",
        "qwen3-coder-480b",
        62,
        6144,
        0,
        96,
        8,
        151936,
        experts=160,
        top_k=8,
        moe_intermediate=2560,
        shared_experts=0,
        dense_layers=0,
    ),
    ModelSpec(
        "Qwen/Qwen3-235B-A22B",
        "qwen3-235b-a22b",
        94,
        4096,
        0,
        64,
        4,
        151936,
        experts=128,
        top_k=8,
        moe_intermediate=1536,
        shared_experts=0,
        dense_layers=0,
    ),
    ModelSpec(
        "zai-org/GLM-4.7",
        "glm-4.7",
        92,
        5120,
        12288,
        96,
        8,
        151552,
        experts=160,
        top_k=8,
        moe_intermediate=1536,
        shared_experts=1,
        dense_layers=3,
        mtp_layers=1,  # num_nextn_predict_layers
    ),
]

# One model of each attention family from shared/data/model_configs, written by hand from
# its README table (and the config's fields named there).
EXPECTED_FAMILIES = [
    ModelSpec(
        "deepseek-ai/DeepSeek-V3", "deepseek-v3", 61, 7168, 18432, 128, 128, 129280,
        head_dim=56, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
        v_head_dim=128, q_lora_rank=1536, experts=256, top_k=8, moe_intermediate=2048,
        shared_experts=1, dense_layers=3, mtp_layers=1,
    ),
    ModelSpec(
        "zai-org/GLM-5", "glm-5", 78, 6144, 12288, 64, 64, 154880, head_dim=64,
        kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=192, v_head_dim=256,
        q_lora_rank=2048, index_topk=2048, index_n_heads=32, index_head_dim=128,
        experts=256, top_k=8, moe_intermediate=2048, shared_experts=1, dense_layers=3,
        mtp_layers=1,
    ),
    ModelSpec(
        "Qwen/Qwen3.5-27B", "qwen3.5-27b", 64, 5120, 17408, 24, 4, 248320, head_dim=256,
        attn_output_gate=True, linear_layers=48, linear_k_heads=16, linear_v_heads=48,
        linear_k_dim=128, linear_v_dim=128, linear_conv=4, linear_state_bytes=4,
        mtp_layers=1,  # mtp_num_hidden_layers
    ),
    ModelSpec(
        "openai/gpt-oss-120b", "gpt-oss-120b", 36, 2880, 0, 64, 8, 201088, head_dim=64,
        sliding_window=128, sliding_layers=18, experts=128, top_k=4, moe_intermediate=2880,
        dense_layers=0, stream_silent_tokens=3,  # model_type gpt_oss: the harmony header
    ),
]  # fmt: skip


def _committed(alias: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MODEL_CONFIG_DIR / f"{alias}.json").read_text())
    return data


def _plain(alias: str) -> dict[str, Any]:
    """A committed config as a user would have it: no registry metadata."""
    data = _committed(alias)
    meta = data.pop("_comem")
    data["_name_or_path"] = meta["hf_id"]
    return data


def _write(tmp_path: Path, data: Any, name: str = "config.json", folder: str = "m") -> Path:
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(json.dumps(data))
    return p


# -- the registry is built from configs ------------------------------------------------------


def test_registry_equals_the_hand_written_rows() -> None:
    # the rows are the architectures; the trained context (not every committed config
    # states it) is checked below
    for spec in EXPECTED + EXPECTED_FAMILIES:
        assert dataclasses.replace(MODELS[spec.alias], max_position_embeddings=0) == spec
    # config.json's max_position_embeddings, where the committed config has it
    assert MODELS["qwen3-8b"].max_position_embeddings == 40960
    assert MODELS["deepseek-v3"].max_position_embeddings == 163840
    assert MODELS["glm-4.7"].max_position_embeddings == 0  # architecture fields only
    assert [m.attention for m in EXPECTED_FAMILIES] == ["mla", "dsa", "gdn", "sliding"]


def test_every_shared_model_config_is_registered_or_refused() -> None:
    shared = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "model_configs"
    if not shared.is_dir():
        pytest.skip("../shared is not checked out")
    ids = {e.spec.hf_id.lower() for e in REGISTRY.values()}
    ids |= {name.lower() for e in REGISTRY.values() for name in e.also}
    for path in sorted(shared.glob("*_config.json")):
        if path.name.endswith("_hf_quant_config.json"):
            continue
        hf_id = path.name.removesuffix("_config.json").replace("--", "/").lower()
        hf_id = hf_id.replace("meta-llama/meta-llama-3.1", "meta-llama/llama-3.1")
        if "nemotron" in hf_id:  # Mamba-2 layers: refused, naming the field
            with pytest.raises(ComemInputError, match="hybrid_override_pattern"):
                get_model(str(path))
            continue
        assert hf_id in ids, hf_id
        assert get_model(str(path)).param_count() == get_model(hf_id).param_count()


@pytest.mark.parametrize("alias", sorted(MODELS))
def test_round_trip_committed_config(alias: str) -> None:
    path = MODEL_CONFIG_DIR / f"{alias}.json"
    assert load_model_config(path) == MODELS[alias]
    assert get_model(str(path)) == MODELS[alias]


@pytest.mark.parametrize("alias", sorted(MODELS))
def test_round_trip_plain_config_json(alias: str, tmp_path: Path) -> None:
    # A user's checkout: <dir named like the repo>/config.json, without the registry's metadata.
    repo = MODELS[alias].hf_id.split("/")[1]
    path = _write(tmp_path, _plain(alias), folder=repo)
    spec = get_model(str(path))
    assert spec.hf_id == MODELS[alias].hf_id
    assert spec.alias == repo.lower()
    same = dataclasses.replace(spec, alias=alias)
    assert same == MODELS[alias]
    assert get_model(str(path.parent)) == spec  # the directory works as well


def test_every_entry_names_its_source() -> None:
    for alias, entry in REGISTRY.items():
        assert entry.spec is MODELS[alias]
        assert entry.spec.hf_id in entry.source and "config.json" in entry.source


def test_list_models_shows_sources() -> None:
    proc = run_comem("list", "models")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for alias, entry in REGISTRY.items():
        assert f"source: {entry.source}" in lines[alias]


# -- naming a model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,alias",
    [
        ("meta-llama/Llama-3.1-70B", "llama-3.1-70b"),
        ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1-70b"),
        ("meta-llama/Llama-3.1-8B-Instruct-FP8", "llama-3.1-8b"),
        ("Llama-3.1-8B", "llama-3.1-8b"),
        ("Qwen/Qwen3-32B-FP8", "qwen3-32b"),
        ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b"),
        ("qwen3-235b-a22b", "qwen3-235b-a22b"),
        ("zai-org/GLM-4.5", "glm-4.7"),
    ],
)
def test_names_and_variants(name: str, alias: str) -> None:
    assert get_model(name) is MODELS[alias]


def test_hf_id_from_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    repo = hub / "models--SomeOrg--Tiny-Llama"
    old, new = repo / "snapshots" / "aaa", repo / "snapshots" / "bbb"
    for snap, layers in ((old, 2), (new, 4)):
        snap.mkdir(parents=True)
        cfg = _plain("llama-3-8b") | {"num_hidden_layers": layers}
        (snap / "config.json").write_text(json.dumps(cfg))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    spec = get_model("SomeOrg/Tiny-Llama")
    assert spec.layers == 2  # the snapshot refs/main names
    assert spec.hf_id == "SomeOrg/Tiny-Llama" and spec.alias == "tiny-llama"
    assert get_model("someorg/tiny-llama").layers == 2
    with pytest.raises(ComemInputError, match="unknown model 'SomeOrg/Other'"):
        get_model("SomeOrg/Other")


@pytest.mark.slow
def test_latency_model_and_predict_static_accept_a_path(tmp_path: Path) -> None:
    path = _write(tmp_path, _plain("qwen3-32b"), folder="Qwen3-32B")
    batch = Batch(decode_kv=[1000, 3000], prefill_new=[512], prefill_cached=[2048])
    by_path = LatencyModel(str(path), "h100_sxm", 2)
    assert by_path.iteration_time(batch) == LatencyModel("qwen3-32b", "h100_sxm", 2).iteration_time(
        batch
    )
    args = ["--gpu", "h100_sxm", "--tp", "2", "--batch", "4", "--input", "256", "--output", "16"]
    a = run_comem("predict-static", "--model", str(path), *args, "--json")
    b = run_comem(
        "predict-static", "--model", "Qwen/Qwen3-32B-FP8", *args, "--dtype", "bf16", "--json"
    )
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["latency_s"] == json.loads(b.stdout)["latency_s"]


@pytest.mark.slow
def test_checkpoint_dtype_is_read_from_the_checkpoint(tmp_path: Path) -> None:
    """vLLM loads an FP8 checkpoint in fp8 whatever ``--dtype`` says; ``auto`` does the same."""
    from calibration.registry import checkpoint_dtype

    assert checkpoint_dtype("Qwen/Qwen3-32B-FP8") == "fp8"
    assert checkpoint_dtype("meta-llama/Llama-3.1-8B-Instruct-FP8-Dynamic") == "fp8"
    assert checkpoint_dtype("Qwen/Qwen3-32B") == "bf16"
    assert checkpoint_dtype("qwen3-32b") == "bf16"
    quant = _plain("qwen3-32b") | {"quantization_config": {"quant_method": "fp8"}}
    assert checkpoint_dtype(str(_write(tmp_path, quant, folder="Qwen3-32B-q"))) == "fp8"
    awq = _plain("qwen3-32b") | {"quantization_config": {"quant_method": "awq", "bits": 4}}
    assert checkpoint_dtype(str(_write(tmp_path, awq, folder="Qwen3-32B-FP8-awq"))) == "int4"
    args = ["--gpu", "h100_sxm", "--tp", "2", "--batch", "4", "--input", "256", "--output", "16"]
    out = {}
    for model, dtype in (
        ("Qwen/Qwen3-32B-FP8", "auto"),
        ("qwen3-32b", "fp8"),
        ("qwen3-32b", "bfloat16"),
    ):
        proc = run_comem("predict-static", "--model", model, *args, "--dtype", dtype, "--json")
        assert proc.returncode == 0, proc.stderr
        out[model, dtype] = json.loads(proc.stdout)
    assert out["Qwen/Qwen3-32B-FP8", "auto"]["dtype"] == "fp8"
    assert out["Qwen/Qwen3-32B-FP8", "auto"]["latency_s"] == out["qwen3-32b", "fp8"]["latency_s"]
    assert out["qwen3-32b", "bfloat16"]["dtype"] == "bf16"
    assert_user_error(
        run_comem("predict-static", "--model", "qwen3-32b", "--dtype", "int3"), "int3"
    )


@pytest.mark.slow
def test_engine_sim_accepts_a_path(tmp_path: Path) -> None:
    path = _write(tmp_path, _plain("llama-3.1-8b"), folder="Llama-3.1-8B")
    load = ["load.clients=2", "load.requests=1", "load.first_prompt=64", "load.output=8"]
    sets = [x for s in load for x in ("--set", s)]
    proc = run_comem("engine-sim", "--set", f"engine.model={path}", *sets, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["requests_finished"] == 2


# -- MoE layouts ------------------------------------------------------------------------------


def test_qwen_moe_sparse_step_and_mlp_only_layers() -> None:
    cfg = _plain("qwen3-235b-a22b") | {"intermediate_size": 12288}
    assert architecture_from_config(cfg)["dense_layers"] == 0
    assert architecture_from_config(cfg)["intermediate"] == 0  # no dense layer: width unused
    every_other = architecture_from_config(cfg | {"decoder_sparse_step": 2})
    assert every_other["dense_layers"] == 47 and every_other["intermediate"] == 12288
    listed = architecture_from_config(cfg | {"mlp_only_layers": [0, 1, 93]})
    assert listed["dense_layers"] == 3
    with pytest.raises(ComemInputError, match="intermediate_size is missing"):
        architecture_from_config(_plain("qwen3-235b-a22b") | {"mlp_only_layers": [0]})


def test_deepseek_style_moe_layer_freq() -> None:
    cfg = _plain("glm-4.7") | {"moe_layer_freq": 2}
    # layers 3..91 with an even index are MoE: 4, 6, ..., 90 -> 44
    assert architecture_from_config(cfg)["dense_layers"] == 92 - 44


def test_mixtral_experts_have_the_ffn_width() -> None:
    cfg = _plain("mistral-7b") | {"num_local_experts": 8, "num_experts_per_tok": 2}
    cfg["sliding_window"] = None
    arch = architecture_from_config(cfg)
    assert (arch["experts"], arch["top_k"], arch["moe_intermediate"]) == (8, 2, 14336)
    assert arch["dense_layers"] == 0 and arch["intermediate"] == 0
    spec = ModelSpec("mistralai/Mixtral-8x7B-v0.1", "mixtral", **arch)
    assert spec.param_count() / 1e9 == pytest.approx(46.7, rel=0.01)  # Mixtral model card


def test_qwen2_moe_shared_expert_width() -> None:
    base = _plain("qwen3-235b-a22b") | {"moe_intermediate_size": 2560}
    arch = architecture_from_config(base | {"shared_expert_intermediate_size": 20480})
    assert arch["shared_experts"] == 8
    with pytest.raises(ComemInputError, match="shared_expert_intermediate_size"):
        architecture_from_config(base | {"shared_expert_intermediate_size": 1000})


def test_multimodal_text_config() -> None:
    cfg = {"model_type": "llava", "vision_config": {"hidden_size": 1024}}
    cfg["text_config"] = _plain("llama-3-8b")
    arch = architecture_from_config(cfg)
    assert arch["layers"] == 32 and arch["kv_heads"] == 8
    with pytest.raises(ComemInputError, match="text_config: hidden_size is missing"):
        architecture_from_config({"text_config": {"num_hidden_layers": 2}})


def test_missing_kv_heads_is_mha_and_missing_head_dim_is_derived() -> None:
    cfg = _plain("llama-2-7b")
    del cfg["num_key_value_heads"]
    arch = architecture_from_config(cfg)
    assert arch["kv_heads"] == 32 and arch["head_dim"] == 128


# -- sliding windows: modelled on every layer, refused on some --------------------------------


def test_sliding_window_fields() -> None:
    qwen = _plain("qwen2-7b")
    assert architecture_from_config(qwen)["sliding_window"] is None  # switched off
    on_all = qwen | {"use_sliding_window": True, "max_window_layers": 0}
    assert architecture_from_config(on_all)["sliding_window"] == 131072
    assert architecture_from_config(qwen | {"use_sliding_window": True})["sliding_window"] is None
    layer_types = _plain("llama-3-8b") | {"sliding_window": 1024}
    layer_types["layer_types"] = ["sliding_attention"] * 32
    assert architecture_from_config(layer_types)["sliding_window"] == 1024
    layer_types["layer_types"] = ["full_attention"] * 32
    assert architecture_from_config(layer_types)["sliding_window"] is None


@settings(max_examples=200, deadline=None)
@given(q=st.integers(1, 300), c=st.integers(0, 300), w=st.integers(1, 200))
def test_attended_pairs_match_brute_force(q: int, c: int, w: int) -> None:
    positions = np.arange(c + 1, c + q + 1)
    assert attended_pairs(np.array([q]), np.array([c]), w)[0] == np.minimum(positions, w).sum()
    assert attended_pairs(np.array([q]), np.array([c]))[0] == positions.sum()


def test_mistral_window_prices_attention_up_to_the_window() -> None:
    windowed = LatencyModel("mistral-7b", "h100_sxm", 1)
    full = LatencyModel(dataclasses.replace(get_model("mistral-7b"), sliding_window=None))
    inside = Batch(decode_kv=[1000, 4000], prefill_new=[1024], prefill_cached=[2048])
    assert windowed.iteration_time(inside) == full.iteration_time(inside)
    long = Batch(decode_kv=[20000] * 8, prefill_new=[2048], prefill_cached=[30000])
    assert windowed.iteration_time(long) < full.iteration_time(long)
    # beyond the window a longer context costs no more attention
    longer = Batch(decode_kv=[40000] * 8, prefill_new=[2048], prefill_cached=[60000])
    assert windowed.iteration_time(longer) == pytest.approx(windowed.iteration_time(long))
    at_window = Batch(decode_kv=[4096] * 8, prefill_new=[2048], prefill_cached=[4096])
    # (to the prefill table's interpolation between prefix knots)
    assert windowed.iteration_time(at_window) == pytest.approx(
        windowed.iteration_time(long), rel=1e-3
    )


@settings(max_examples=80, deadline=None)
@given(
    kv=st.lists(st.integers(1, 20000), min_size=1, max_size=16),
    chunk=st.tuples(st.integers(1, 4096), st.integers(0, 20000)),
    grow=st.integers(1, 8192),
)
def test_windowed_iteration_monotone(kv: list[int], chunk: tuple[int, int], grow: int) -> None:
    lm = _MISTRAL
    base = lm.iteration_time(Batch(kv, [chunk[0]], [chunk[1]]))
    longer = [kv[0] + grow, *kv[1:]]
    assert lm.iteration_time(Batch(longer, [chunk[0]], [chunk[1]])) >= base
    assert lm.iteration_time(Batch(kv, [chunk[0] + grow], [chunk[1]])) >= base
    assert lm.iteration_time(Batch(kv, [chunk[0]], [chunk[1] + grow])) >= base
    extra = [*kv, int(np.ceil(np.mean(kv)))]
    assert lm.iteration_time(Batch(extra, [chunk[0]], [chunk[1]])) >= base


_MISTRAL = LatencyModel("mistral-7b", "h100_sxm", 1)


# -- what cannot be priced, and garbage --------------------------------------------------------


def _mutate(alias: str, **changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(_plain(alias))
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


_DROP = object()

BAD_CONFIGS = [
    # features the latency model does not price
    (_mutate("llama-3-8b", kv_lora_rank=512), "qk_rope_head_dim", "missing"),
    (_mutate("llama-3-8b", q_lora_rank=1536), "q_lora_rank", "without kv_lora_rank"),
    (
        _mutate("llama-3-8b", layer_types=["mamba", "full_attention"] * 16),
        "layer_types",
        "mamba layers: not priced",
    ),
    (
        _mutate("llama-3-8b", layer_types=["linear_attention", "full_attention"] * 16),
        "linear_num_key_heads",
        "missing",
    ),
    (
        _mutate("llama-3-8b", layer_types=["sliding_attention", "full_attention"] * 16),
        "sliding_window",
        "missing",
    ),
    (_mutate("llama-3-8b", full_attention_interval=4), "linear_num_key_heads", "missing"),
    (
        _mutate("qwen3.5-27b", mamba_ssm_dtype="float8"),
        "mamba_ssm_dtype",
        "must be one of",
    ),
    (
        _mutate("llama-3-8b", hybrid_override_pattern="M*M*"),
        "hybrid_override_pattern",
        "Mamba-2",
    ),
    (_mutate("llama-3-8b", mamba_d_state=16), "mamba_d_state", "Mamba"),
    (_mutate("llama-3-8b", model_type="mamba"), "model_type", "state-space"),
    (_mutate("llama-3-8b", attention_chunk_size=8192), "attention_chunk_size", "chunked"),
    # missing or bad fields
    (_mutate("llama-3-8b", hidden_size=_DROP), "hidden_size", "missing"),
    (_mutate("llama-3-8b", num_hidden_layers=_DROP), "num_hidden_layers", "missing"),
    (_mutate("llama-3-8b", vocab_size=_DROP), "vocab_size", "missing"),
    (_mutate("llama-3-8b", intermediate_size=_DROP), "intermediate_size", "missing"),
    (_mutate("llama-3-8b", hidden_size=0), "hidden_size", ">= 1"),
    (_mutate("llama-3-8b", num_attention_heads=-32), "num_attention_heads", ">= 1"),
    (_mutate("llama-3-8b", intermediate_size=-1), "intermediate_size", ">= 1"),
    (_mutate("llama-3-8b", hidden_size="4096"), "hidden_size", "integer"),
    (_mutate("llama-3-8b", hidden_size=4096.5), "hidden_size", "integer"),
    (_mutate("llama-3-8b", num_hidden_layers=True), "num_hidden_layers", "integer"),
    (_mutate("llama-3-8b", num_attention_heads=24), "num_attention_heads", "does not divide"),
    (_mutate("llama-3-8b", num_key_value_heads=5), "num_key_value_heads", "must divide"),
    (_mutate("llama-3-8b", tie_word_embeddings="yes"), "tie_word_embeddings", "true or false"),
    (_mutate("llama-3-8b", layer_types=["full_attention"]), "layer_types", "one kind per layer"),
    (_mutate("qwen3-235b-a22b", num_experts_per_tok=200), "num_experts_per_tok", "exceeds"),
    (_mutate("qwen3-235b-a22b", num_experts_per_tok=_DROP), "num_experts_per_tok", "missing"),
    (_mutate("qwen3-235b-a22b", moe_intermediate_size=0), "moe_intermediate_size", ">= 1"),
    (
        _mutate("mistral-7b", num_local_experts=0, num_experts_per_tok=2),
        "num_local_experts",
        "needs experts",
    ),
    (_mutate("qwen3-235b-a22b", mlp_only_layers="all"), "mlp_only_layers", "list of integers"),
    (_mutate("glm-4.7", first_k_dense_replace=-1), "first_k_dense_replace", ">= 0"),
    (_mutate("llama-3-8b", sliding_window=-5), "sliding_window", ">= 1"),
    ([1, 2, 3], "JSON object", "list"),
    # a quantization that is read past would price the checkpoint as bf16 (found by a fuzzer)
    (_mutate("llama-3-8b", quantization_config="fp8"), "quantization_config", "JSON object"),
    (_mutate("llama-3-8b", quantization_config=["fp8"]), "quantization_config", "JSON object"),
    (
        _mutate("llama-3-8b", text_config={"quantization_config": 8}),
        "text_config: quantization_config",
        "JSON object",
    ),
    *(
        (
            _mutate(
                "deepseek-v3",
                quantization_config={"quant_method": "fp8", "weight_block_size": block},
            ),
            "quantization_config.weight_block_size",
            "two positive integers",
        )
        for block in ("x", 128, [128], [128, 0], [128, "128"], [True, 128], [128.0, 128])
    ),
]


@pytest.mark.parametrize(("data", "field", "why"), BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_field(
    data: Any, field: str, why: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ComemInputError) as info:
        get_model(str(path))
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg and field in msg and why in msg, msg


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe{not utf8", "not UTF-8"),
        (b'{"num_hidden_layers": 32,', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"null", "JSON object"),
    ],
)
def test_garbage_file_is_one_line(content: bytes, why: str, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ComemInputError, match=why):
        get_model(str(path))


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ComemInputError, match="does not exist"):
        get_model(str(tmp_path / "nope.json"))
    with pytest.raises(ComemInputError, match="config.json: model config file does not exist"):
        get_model(str(tmp_path))  # a directory without a config.json


@pytest.mark.slow
def test_cli_bad_config_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutate("llama-3-8b", mamba_d_state=16))
    proc = run_comem(
        "predict-static",
        "--model",
        str(path),
        *["--batch", "1"],
        *["--input", "8", "--output", "8"],
    )
    assert_user_error(proc, "mamba_d_state", str(path))
    garbage = tmp_path / "bad.json"
    garbage.write_bytes(b"\x00\xff")
    proc = run_comem("engine-sim", "--set", f"engine.model={garbage}")
    assert_user_error(proc, "bad.json", "UTF-8")


def test_quantization_config_of_the_wrong_type_is_refused_not_priced_as_bf16(
    tmp_path: Path,
) -> None:
    """``checkpoint_dtype`` (what predict-static and engine-sim ask first) refuses a
    ``quantization_config`` that is no object, naming the file and the field; a null
    ``weight_block_size`` (per-tensor fp8) and a well-formed one still read as fp8."""
    from calibration.registry import checkpoint_dtype, quantization_dtype

    path = _write(tmp_path, _mutate("llama-3-8b", quantization_config="fp8"))
    with pytest.raises(ComemInputError) as info:
        checkpoint_dtype(str(path))
    assert str(info.value).startswith(f"{path}: quantization_config must be a JSON object")
    for block in (None, [128, 128]):
        quant = {"quant_method": "fp8", "weight_block_size": block}
        assert quantization_dtype({"quantization_config": quant}) == "fp8"
        get_model(str(_write(tmp_path, _mutate("llama-3-8b", quantization_config=quant))))


@pytest.mark.slow
def test_cli_wrong_typed_quantization_exit_2(tmp_path: Path) -> None:
    quant = {"quant_method": "fp8", "weight_block_size": "x"}
    path = _write(tmp_path, _mutate("llama-3-8b", quantization_config=quant))
    proc = run_comem(
        *["predict-static", "--model", str(path)],
        *["--batch", "4", "--input", "128", "--output", "16"],
    )
    assert_user_error(proc, str(path), "quantization_config.weight_block_size", "'x'")


def test_quantization_methods_are_read_or_refused() -> None:
    """Each checkpoint quantization vLLM serves is read as the weights it loads; one that
    no table prices is refused in one line rather than priced as bf16 (2-4x the bytes)."""
    from calibration.registry import quantization_dtype

    def ct(bits: int, kind: str, acts: object = None) -> dict[str, object]:
        group = {"weights": {"num_bits": bits, "type": kind}, "input_activations": acts}
        return {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}

    cases = {
        "fp8 dynamic (compressed-tensors)": (ct(8, "float", {"num_bits": 8}), "fp8"),
        "NVFP4 (compressed-tensors)": (ct(4, "float", {"num_bits": 4}), "fp4"),
        "int4 weight-only (compressed-tensors)": (ct(4, "int"), "int4"),
        "GPTQ 4-bit": ({"quant_method": "gptq", "bits": 4}, "int4"),
        "FBGEMM fp8": ({"quant_method": "fbgemm_fp8"}, "fp8"),
    }
    for what, (quant, dtype) in cases.items():
        assert quantization_dtype({"quantization_config": quant}) == dtype, what
    refused = {
        "bitsandbytes": {"quant_method": "bitsandbytes"},
        "GPTQ 8-bit": {"quant_method": "gptq", "bits": 8},
        "int8 w8a8": ct(8, "int", {"num_bits": 8}),
        "no method": {"load_in_4bit": True},
    }
    for what, quant in refused.items():
        with pytest.raises(ComemInputError, match="is not priced.*--dtype"):
            quantization_dtype({"quantization_config": quant})
        assert what

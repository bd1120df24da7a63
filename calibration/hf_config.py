"""Read a Hugging Face ``config.json`` into the architecture fields of a
:class:`calibration.model_spec.ModelSpec`.

The registry's own models are such configs (``calibration/model_configs/``), and a user's model
is one too, so one parser prices both. Only what the latency model needs is read: layer count,
widths, heads, vocabulary, tied embeddings, and the MoE layout (routed / shared experts, which
layers are sparse), and the attention family: grouped-query, multi-head latent (MLA) with
DeepSeek's sparse indexer (DSA), hybrid Gated-DeltaNet linear layers, sliding windows on all
or some layers. A config with an attention no kernel table prices (Mamba layers, chunked
local attention) is refused with the field that says so, rather than priced as plain
attention.

Field names and their meaning follow the ``transformers`` configuration classes of each family
(Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE, DeepSeek-V2/V3, GLM-4.5), as listed
in ``shared/data/models.md``. Returns plain data: this module knows nothing of ModelSpec, so the
registry depends on it and not the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError

#: Fields whose presence (non-null) means an attention the latency model does not price:
#: no kernel table times these layers (docs/explanation/gpus-and-attention.md).
_UNPRICED_FIELDS = {
    "attention_chunk_size": "chunked local attention (no kernel table)",
    "attn_layer_period": "hybrid Mamba/attention layers",
    "hybrid_override_pattern": "hybrid Mamba-2/attention layers (no Mamba kernel table)",
    "layers_block_type": "hybrid Mamba/attention layers",
    "mamba_d_state": "Mamba (state-space) layers",
    "ssm_state_size": "Mamba (state-space) layers",
}

#: Layer kinds of ``layer_types`` the latency model prices.
_LAYER_KINDS = ("full_attention", "sliding_attention", "linear_attention")

#: Tokens a model generates, by ``model_type``, before the first text a client of the chat
#: endpoint is streamed (:attr:`calibration.model_spec.ModelSpec.stream_silent_tokens`).
#: gpt-oss answers in OpenAI's harmony format: the chat template ends the prompt with
#: ``<|start|>assistant`` and the reply opens with ``<|channel|>analysis<|message|>``, three
#: tokens that vLLM's harmony parser turns into no delta, so the first chunk with (reasoning)
#: content, where aiperf stops TTFT, comes with the fourth token (``vllm bench serve``
#: stops at the first chunk, the role chunk of the first token: ``--ttft-at``).
#: Source: the harmony response format of the gpt-oss model card (openai/gpt-oss); not in
#: ``shared/`` (asked for in the project's notes).
STREAM_SILENT_TOKENS = {"gpt_oss": 3}

#: model_type values of state-space / recurrent models that carry none of the fields above.
_UNPRICED_MODEL_TYPES = {"mamba", "mamba2", "rwkv", "recurrent_gemma", "xlstm"}


def _where(where: str, name: str) -> str:
    return f"{where}: {name}" if where else name


#: The most layers a config may declare: the deepest released LLMs have ~130; a count
#: of millions is a typo (and per-layer walks over it would take minutes).
MAX_LAYERS = 4096


def _int_field(
    cfg: Mapping[str, Any],
    name: str,
    where: str,
    default: int | None = None,
    minimum: int = 1,
    maximum: int | None = None,
) -> int:
    value = cfg.get(name)
    if value is None:
        if default is None:
            raise ComemInputError(f"{_where(where, name)} is missing")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ComemInputError(f"{_where(where, name)} must be an integer, got {value!r}")
    if value < minimum:
        raise ComemInputError(f"{_where(where, name)} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ComemInputError(f"{_where(where, name)} must be <= {maximum}, got {value}")
    return value


def _check_priceable(cfg: Mapping[str, Any], where: str) -> None:
    for name, what in _UNPRICED_FIELDS.items():
        if cfg.get(name) not in (None, 0, [], ""):
            raise ComemInputError(
                f"{_where(where, name)} is set: {what} is not priced by the latency model"
            )
    model_type = cfg.get("model_type")
    if isinstance(model_type, str) and model_type.lower() in _UNPRICED_MODEL_TYPES:
        raise ComemInputError(
            f"{_where(where, 'model_type')} '{model_type}': a state-space/recurrent model is"
            " not priced by the latency model"
        )


def _layer_kinds(cfg: Mapping[str, Any], layers: int, where: str) -> list[str]:
    """Each layer's attention kind: ``layer_types`` when given, else every
    ``full_attention_interval``-th layer full and the others linear (Qwen3-Next / Qwen3.5),
    else all full."""
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != layers:
            raise ComemInputError(
                f"{_where(where, 'layer_types')} must list one kind per layer ({layers})"
            )
        other = sorted({str(k) for k in layer_types} - set(_LAYER_KINDS))
        if other:
            raise ComemInputError(
                f"{_where(where, 'layer_types')} has {', '.join(other)} layers: not priced by"
                " the latency model"
            )
        return [str(k) for k in layer_types]
    if cfg.get("full_attention_interval") is not None:
        every = _int_field(cfg, "full_attention_interval", where)
        return [
            "full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(layers)
        ]
    return ["full_attention"] * layers


def _sliding_window(cfg: Mapping[str, Any], kinds: list[str], where: str) -> tuple[int | None, int]:
    """The sliding window and how many layers use it (None, 0: full attention everywhere).

    ``layer_types`` says which layers slide (gpt-oss alternates); without it the window is
    on every layer when ``sliding_window`` is set unless ``use_sliding_window`` is false
    (Mistral-7B sets only the former; Qwen2/Qwen3 set a window but switch it off), and
    Qwen2's ``max_window_layers`` puts it on layers ``i >= max_window_layers`` only.
    """
    layers = len(kinds)
    sliding = kinds.count("sliding_attention")
    if "layer_types" in cfg and cfg.get("layer_types") is not None:
        if not sliding:
            return None, 0
        return _int_field(cfg, "sliding_window", where), sliding
    window = cfg.get("sliding_window")
    if window is None or cfg.get("use_sliding_window") is False:
        return None, 0
    window = _int_field(cfg, "sliding_window", where)
    if "max_window_layers" in cfg and cfg.get("use_sliding_window") is True:
        # Qwen2 (transformers): layer i uses the window iff i >= max_window_layers.
        first = _int_field(cfg, "max_window_layers", where, minimum=0)
        if first >= layers:
            return None, 0
        return window, layers - first
    return window, layers


def _mla_fields(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2, GLM-5) and DeepSeek sparse
    attention's indexer (``index_topk``: DeepSeek-V3.2, GLM-5), or {} without MLA."""
    if cfg.get("kv_lora_rank") in (None, 0):
        if cfg.get("q_lora_rank") not in (None, 0):
            raise ComemInputError(
                f"{_where(where, 'q_lora_rank')} is set without kv_lora_rank: not MLA as"
                " DeepSeek defines it, not priced"
            )
        return {}
    fields: dict[str, Any] = {
        "kv_lora_rank": _int_field(cfg, "kv_lora_rank", where),
        "qk_rope_head_dim": _int_field(cfg, "qk_rope_head_dim", where),
        "qk_nope_head_dim": _int_field(cfg, "qk_nope_head_dim", where),
        "v_head_dim": _int_field(cfg, "v_head_dim", where),
        "q_lora_rank": _int_field(cfg, "q_lora_rank", where, default=0, minimum=0),
    }
    if cfg.get("index_topk") is not None:
        fields["index_topk"] = _int_field(cfg, "index_topk", where)
        fields["index_n_heads"] = _int_field(cfg, "index_n_heads", where)
        fields["index_head_dim"] = _int_field(cfg, "index_head_dim", where)
    return fields


#: Bytes of the recurrent state's dtype names (``mamba_ssm_dtype``).
_STATE_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _linear_fields(cfg: Mapping[str, Any], linear: int, where: str) -> dict[str, Any]:
    """Gated DeltaNet layers (Qwen3-Next, Qwen3.5): heads, dims, conv kernel, state dtype."""
    if not linear:
        return {}
    state = cfg.get("mamba_ssm_dtype", "bfloat16")
    if state not in _STATE_DTYPE_BYTES:
        raise ComemInputError(
            f"{_where(where, 'mamba_ssm_dtype')} must be one of"
            f" {', '.join(_STATE_DTYPE_BYTES)}, got {state!r}"
        )
    return {
        "linear_layers": linear,
        "linear_k_heads": _int_field(cfg, "linear_num_key_heads", where),
        "linear_v_heads": _int_field(cfg, "linear_num_value_heads", where),
        "linear_k_dim": _int_field(cfg, "linear_key_head_dim", where),
        "linear_v_dim": _int_field(cfg, "linear_value_head_dim", where),
        "linear_conv": _int_field(cfg, "linear_conv_kernel_dim", where),
        "linear_state_bytes": _STATE_DTYPE_BYTES[state],
    }


def _moe_layer_count(cfg: Mapping[str, Any], layers: int, where: str) -> int:
    """How many layers are mixture-of-experts layers (the rest are dense)."""
    if "first_k_dense_replace" in cfg or "moe_layer_freq" in cfg:
        # DeepSeek-V2/V3, GLM-4.5: layer i is MoE iff i >= k and i % freq == 0.
        first = _int_field(cfg, "first_k_dense_replace", where, default=0, minimum=0)
        freq = _int_field(cfg, "moe_layer_freq", where, default=1)
        return sum(1 for i in range(layers) if i >= first and i % freq == 0)
    if "decoder_sparse_step" in cfg or "mlp_only_layers" in cfg:
        # Qwen2-MoE, Qwen3-MoE: layer i is MoE iff it is not listed in mlp_only_layers and
        # (i + 1) % decoder_sparse_step == 0.
        step = _int_field(cfg, "decoder_sparse_step", where, default=1)
        only = cfg.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in only
        ):
            raise ComemInputError(f"{_where(where, 'mlp_only_layers')} must be a list of integers")
        dense = set(only)
        return sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return layers


def check_quantization_fields(cfg: Mapping[str, Any], where: str = "") -> None:
    """Refuse a ``quantization_config`` (top level or in ``text_config``) that is not a
    JSON object, and a ``weight_block_size`` in it that is not two positive integers
    (or null), naming the field: read past, either would price the checkpoint as bf16
    weights or with the wrong fp8 scaling, silently."""
    text = cfg.get("text_config")
    places = [(cfg, where)]
    if isinstance(text, Mapping):
        places.append((text, _where(where, "text_config")))
    for holder, at in places:
        quant = holder.get("quantization_config")
        if quant is None:
            continue
        name = _where(at, "quantization_config")
        if not isinstance(quant, Mapping):
            raise ComemInputError(
                f"{name} must be a JSON object (quant_method and its settings), got {quant!r}"
            )
        block = quant.get("weight_block_size")
        if block is not None and not (
            isinstance(block, list)
            and len(block) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
        ):
            raise ComemInputError(
                f"{name}.weight_block_size must be two positive integers ([128, 128]) or"
                f" null, got {block!r}"
            )


def architecture_from_config(cfg: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Map a Hugging Face config to ModelSpec's architecture fields (no hf_id / alias).

    Raises :class:`ComemInputError` naming the field for a missing or bad field and for an
    architecture the latency model does not price. Multimodal configs are read through their
    ``text_config`` (the language model; a vision encoder is not priced).
    """
    if not isinstance(cfg, Mapping):
        raise ComemInputError(f"{where or 'config'}: a config.json holds a JSON object")
    check_quantization_fields(cfg, where)
    text = cfg.get("text_config")
    if "num_hidden_layers" not in cfg and isinstance(text, Mapping):
        cfg = text
        where = _where(where, "text_config")
    _check_priceable(cfg, where)
    layers = _int_field(cfg, "num_hidden_layers", where, maximum=MAX_LAYERS)
    hidden = _int_field(cfg, "hidden_size", where)
    q_heads, kv_heads, head_dim = _head_fields(cfg, hidden, where)
    vocab = _int_field(cfg, "vocab_size", where)
    tied = cfg.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise ComemInputError(
            f"{_where(where, 'tie_word_embeddings')} must be true or false, got {tied!r}"
        )
    kinds = _layer_kinds(cfg, layers, where)
    window, sliding = _sliding_window(cfg, kinds, where)
    attention = _mla_fields(cfg, where) | _linear_fields(
        cfg, kinds.count("linear_attention"), where
    )
    gate = cfg.get("attn_output_gate", False)
    if not isinstance(gate, bool):
        raise ComemInputError(f"{_where(where, 'attn_output_gate')} must be true or false")
    moe = _moe_fields(cfg, layers, where)
    dense_layers = layers - moe.pop("moe_layers")
    intermediate = _int_field(cfg, "intermediate_size", where) if dense_layers else 0
    return {
        "layers": layers,
        "hidden": hidden,
        "intermediate": intermediate,
        "q_heads": q_heads,
        "kv_heads": kv_heads,
        "vocab": vocab,
        "head_dim": head_dim,
        "tied_embeddings": tied,
        "sliding_window": window,
        "sliding_layers": sliding,
        "attn_output_gate": gate,
        **attention,
        **moe,
        "dense_layers": dense_layers,
        "mtp_layers": _mtp_layers(cfg, where),
        "stream_silent_tokens": STREAM_SILENT_TOKENS.get(str(cfg.get("model_type", "")), 0),
        "max_position_embeddings": _trained_context(cfg),
    }


def _trained_context(cfg: Mapping[str, Any]) -> int:
    """``max_position_embeddings`` where it is a positive integer, else 0 (unknown): it
    only informs a note, so an odd value does not refuse a config that prices."""
    value = cfg.get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _head_fields(cfg: Mapping[str, Any], hidden: int, where: str) -> tuple[int, int, int]:
    """Query heads, KV heads (a missing ``num_key_value_heads`` means multi-head attention,
    as in transformers) and the head dimension (``hidden_size`` / heads unless given)."""
    q_heads = _int_field(cfg, "num_attention_heads", where)
    kv_heads = _int_field(cfg, "num_key_value_heads", where, default=q_heads)
    if q_heads % kv_heads:
        raise ComemInputError(
            f"{_where(where, 'num_key_value_heads')} ({kv_heads}) must divide"
            f" num_attention_heads ({q_heads})"
        )
    if cfg.get("head_dim") is None and hidden % q_heads:
        raise ComemInputError(
            f"{_where(where, 'num_attention_heads')} ({q_heads}) does not divide hidden_size"
            f" ({hidden}) and there is no head_dim"
        )
    head_dim = _int_field(cfg, "head_dim", where, default=hidden // q_heads)
    return q_heads, kv_heads, head_dim


#: the config.json fields that count a MoE layer's routed experts (by family)
_EXPERT_FIELDS = ("num_experts", "n_routed_experts", "num_local_experts")


def _moe_fields(cfg: Mapping[str, Any], layers: int, where: str) -> dict[str, int]:
    """The mixture-of-experts fields (all 0 for a dense model) and ``moe_layers``, the
    number of MoE layers: routed experts, active per token, their width, and the shared
    experts in units of that width."""
    experts_field = next((f for f in _EXPERT_FIELDS if cfg.get(f)), None)
    experts = moe_layers = top_k = moe_inter = shared = 0
    zero = next((f for f in _EXPERT_FIELDS if cfg.get(f) == 0 and f in cfg), None)
    if experts_field is None and zero is not None and cfg.get("num_experts_per_tok"):
        # a MoE config with no experts (a dense model does not route tokens)
        raise ComemInputError(
            f"{_where(where, zero)} is 0 while num_experts_per_tok is"
            f" {cfg.get('num_experts_per_tok')!r}: a mixture-of-experts model needs experts"
        )
    if experts_field is not None:
        experts = _int_field(cfg, experts_field, where)
        moe_layers = _moe_layer_count(cfg, layers, where)
    if moe_layers:
        top_k = _int_field(cfg, "num_experts_per_tok", where)
        if top_k > experts:
            raise ComemInputError(
                f"{_where(where, 'num_experts_per_tok')} ({top_k}) exceeds {experts_field}"
                f" ({experts})"
            )
        if experts_field == "num_local_experts" and "moe_intermediate_size" not in cfg:
            # Mixtral: every layer is MoE and the experts have the FFN's width.
            moe_inter = _int_field(cfg, "intermediate_size", where)
        else:
            moe_inter = _int_field(cfg, "moe_intermediate_size", where)
        shared = _int_field(cfg, "n_shared_experts", where, default=0, minimum=0)
        width = cfg.get("shared_expert_intermediate_size")
        if width:
            # Qwen2-MoE: one shared expert of its own width, priced as width / moe_inter
            # experts of the routed width.
            width = _int_field(cfg, "shared_expert_intermediate_size", where)
            if width % moe_inter:
                raise ComemInputError(
                    f"{_where(where, 'shared_expert_intermediate_size')} ({width}) is not a"
                    f" multiple of moe_intermediate_size ({moe_inter}): not priced"
                )
            shared += width // moe_inter
    else:
        experts = 0
    return {
        "experts": experts,
        "top_k": top_k,
        "moe_intermediate": moe_inter,
        "shared_experts": shared,
        "moe_layers": moe_layers,
    }


#: config fields naming a checkpoint's MTP modules, by model family
_MTP_FIELDS = ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_modules")


def _mtp_layers(cfg: Mapping[str, Any], where: str) -> int:
    """MTP modules the checkpoint ships (0: none; MiniMax counts them only with use_mtp)."""
    if cfg.get("use_mtp") is False:
        return 0
    for name in _MTP_FIELDS:
        if cfg.get(name) is not None:
            return _int_field(cfg, name, where, default=0, minimum=0)
    return 0


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``config.json`` (or a directory holding one) as a JSON object.

    One clear :class:`ComemInputError` line for a missing file, bytes that are not UTF-8, text
    that is not JSON, or JSON that is not an object.
    """
    from calibration.inputs import read_json

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    data = read_json(p, "model config")
    if not isinstance(data, dict):
        raise ComemInputError(f"{p}: a config.json holds a JSON object, got {type(data).__name__}")
    return data

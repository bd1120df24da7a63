"""How vLLM lays out the KV cache of each attention family, per GPU: page and block sizes,
KV-cache groups, and what one request holds.

Sources (``shared/design/VLLM_FACTS.md``, vLLM 0.19.0): section 2 (a page is
``2 x block x kv_heads_per_rank x head_dim x dtype bytes`` per layer; ``num_blocks = avail //
page // layers``), D (MLA caches one ``kv_lora_rank + qk_rope_head_dim`` vector per token per
layer, not sharded by TP; DeepSeek-V3.2's ``fp8_ds_mla`` is 656 bytes a token; backend block
sizes), E (hybrid linear attention: a fixed state per request and linear layer, the
attention block raised until its page holds that state, layers split into equal-size groups
sharing one block pool), F (sliding layers keep at most the window's blocks).

Everything here is per GPU of a tensor-parallel engine, in bytes and tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from calibration.errors import ComemInputError
from calibration.model_spec import ModelSpec

#: vLLM's default KV block (tokens).
DEFAULT_BLOCK = 16
#: ``fp8_ds_mla``: FlashMLA-sparse's per-token record for DeepSeek sparse attention, bytes:
#: 512 fp8 latent values, 4 fp32 scales (one per 128), 64 bf16 rope values (VLLM_FACTS D).
FP8_DS_MLA_BYTES = 512 + 4 * 4 + 64 * 2
#: Block of the FlashMLA-sparse backend DSA models run on (VLLM_FACTS D: FlashMLA 64).
DSA_BLOCK = 64
#: MLA backend block per GPU architecture: SM90 FLASH_ATTN_MLA takes 16, SM100 FLASHINFER_MLA
#: 32 or 64 (the smallest is taken), SM80/SM89 TRITON_MLA 16 (VLLM_FACTS D).
MLA_BLOCK = {"b200_sxm": 32, "b300_sxm": 32, "gb200": 32}
#: Hybrid groups: when the most numerous layer kind has fewer than this many times the
#: least numerous, the group size is the former (VLLM_FACTS E).
GROUP_RATIO = 1.5


def indexer_bytes_per_token(model: ModelSpec) -> int:
    """DSA indexer key cache per token per layer: ``index_head_dim`` fp8 values plus one
    fp32 scale per 128 (vLLM ``DeepseekV32IndexerCache``: 128 + 4 = 132 bytes)."""
    return model.index_head_dim + 4 * math.ceil(model.index_head_dim / 128)


def attention_bytes_per_token(model: ModelSpec, tp: int, kv_bytes: int) -> int:
    """Bytes one token occupies in ONE softmax-attention layer's cache on one GPU.

    GQA: K and V of the rank's KV heads (replicated when tp exceeds them). MLA: one latent
    vector, the same on every rank. DSA: ``fp8_ds_mla`` when the cache is fp8 (vLLM's
    default for these models, ``kv_bytes`` 1) or the bf16 latent, plus the indexer's keys.
    """
    if model.kv_lora_rank:
        latent = model.kv_lora_rank + model.qk_rope_head_dim
        if model.index_topk:
            main = FP8_DS_MLA_BYTES if kv_bytes == 1 else latent * kv_bytes
            return main + indexer_bytes_per_token(model)
        return latent * kv_bytes
    heads = max(1, model.kv_heads // tp)
    return 2 * heads * model.head_dim * kv_bytes


def linear_state_bytes(model: ModelSpec, tp: int, dtype_bytes: int = 2) -> int:
    """One Gated DeltaNet layer's state per request on one GPU: the causal conv's last
    ``conv - 1`` inputs over q, k, v (model dtype) and the recurrent ``k_dim x v_dim``
    matrix per value head (``mamba_ssm_dtype``; vLLM ``gated_delta_net_state_shape``)."""
    conv_dim = (
        2 * model.linear_k_heads * model.linear_k_dim + model.linear_v_heads * model.linear_v_dim
    )
    conv = (model.linear_conv - 1) * (conv_dim // tp) * dtype_bytes
    recurrent = (
        (model.linear_v_heads // tp)
        * model.linear_k_dim
        * model.linear_v_dim
        * model.linear_state_bytes
    )
    return conv + recurrent


@dataclass(frozen=True)
class KVLayout:
    """vLLM's KV cache of one model on one GPU.

    ``page_bytes`` is one layer's block; a group holds ``group_size`` layers, so one block of
    the shared pool is ``page_bytes * group_size``. ``full_groups`` / ``sliding_groups`` /
    ``linear_groups`` count the groups of each kind (a request takes blocks in each).
    """

    family: str
    block_size: int
    page_bytes: int
    group_size: int
    full_groups: int
    sliding_groups: int
    linear_groups: int
    window: int | None

    @property
    def block_bytes(self) -> int:
        """Bytes of one block of the pool (one page in each layer of a group)."""
        return self.page_bytes * self.group_size

    def num_blocks(self, avail_bytes: float) -> int:
        """Blocks of the pool (vLLM's null block included) in ``avail_bytes``."""
        return int(avail_bytes // self.block_bytes)

    @property
    def bytes_per_token(self) -> float:
        """Pool bytes one more token of context costs (the full groups' share)."""
        return self.block_bytes * self.full_groups / self.block_size

    def request_blocks(self, tokens: int, max_num_batched_tokens: int = 8192) -> int:
        """Blocks one request of ``tokens`` tokens holds: every full group its tokens', each
        sliding group at most the window's plus one chunk's (VLLM_FACTS F), each linear
        group one (its state)."""
        full = math.ceil(tokens / self.block_size)
        sliding = 0
        if self.sliding_groups and self.window is not None:
            span = min(self.window - 1 + max_num_batched_tokens, tokens)
            sliding = min(full, math.ceil(span / self.block_size) + 1)
        return self.full_groups * full + self.sliding_groups * sliding + self.linear_groups

    def constant_blocks(self) -> int:
        """Pool blocks a decoding request holds whatever its length: one per linear group
        (its state) and, per sliding group, the window's blocks plus one."""
        sliding = 0
        if self.sliding_groups and self.window is not None:
            sliding = self.sliding_groups * (math.ceil((self.window - 1) / self.block_size) + 1)
        return self.linear_groups + sliding

    def constant_bytes_per_request(self) -> int:
        """Pool bytes a decoding request holds whatever its length: its linear states and
        its sliding window (the window's blocks plus one)."""
        return self.constant_blocks() * self.block_bytes

    @property
    def token_groups(self) -> int:
        """Groups that keep every token (at least 1: a model of linear or sliding layers
        only counts its tokens in one)."""
        return max(1, self.full_groups)

    def request_state_blocks(self) -> int:
        """:meth:`constant_blocks` in the simulator's blocks: one simulated block of
        ``block_size`` tokens is a pool block in each full group (:attr:`token_groups`
        of them), so a request's constant part is rounded up to whole such blocks (exact
        for every shipped model: each has one full group)."""
        return -(-self.constant_blocks() // self.token_groups)


def _group_size(counts: list[int]) -> int:
    """Layers per KV-cache group for the layer kinds' counts (VLLM_FACTS E)."""
    present = [c for c in counts if c]
    low, high = min(present), max(present)
    return high if high < GROUP_RATIO * low else low


def kv_layout(
    model: ModelSpec,
    tp: int,
    kv_bytes: int,
    gpu: str = "h100_sxm",
    block_size: int = DEFAULT_BLOCK,
) -> KVLayout:
    """The KV-cache layout vLLM gives ``model`` at ``tp`` with ``kv_bytes`` per cached value
    (2: bf16, 1: fp8) on ``gpu`` (its MLA backend's block size) for ``--block-size``
    ``block_size``: the block is raised to what the attention backend needs (MLA, DSA)
    and, with linear layers, until one attention page holds a linear state (vLLM's
    ``HybridAttentionMambaModelConfig``: a smaller ``--block-size`` is raised, a larger
    one kept, the state's page padded to it)."""
    if kv_bytes not in (1, 2):
        raise ComemInputError(f"kv_bytes must be 1 (fp8) or 2 (bf16), got {kv_bytes}")
    per_token = attention_bytes_per_token(model, tp, kv_bytes)
    block = block_size
    if model.index_topk:
        block = max(block, DSA_BLOCK)
    elif model.kv_lora_rank:
        block = max(block, MLA_BLOCK.get(gpu, DEFAULT_BLOCK))
    full, sliding, linear = model.full_layers, model.sliding_layers, model.linear_layers
    if linear:
        state = linear_state_bytes(model, tp)
        # raise the attention block to a multiple of 16 whose page holds one state
        block = max(block, DEFAULT_BLOCK * math.ceil(state / (per_token * DEFAULT_BLOCK)))
    window = model.sliding_window if sliding else None
    if not linear and (not sliding or sliding == model.layers):
        # one kind of layer: one group of all of them (a uniform window keeps its tokens
        # here as the engine does; vLLM would free the blocks left behind the window)
        return KVLayout(model.attention, block, block * per_token, model.layers, 1, 0, 0, window)
    size = _group_size([full, sliding, linear])
    return KVLayout(
        family=model.attention,
        block_size=block,
        page_bytes=block * per_token,
        group_size=size,
        full_groups=math.ceil(full / size),
        sliding_groups=math.ceil(sliding / size),
        linear_groups=math.ceil(linear / size),
        window=window,
    )

"""Speculative decoding with MTP draft modules, as vLLM 0.19 runs it.

Sources (``shared/design/VLLM_FACTS.md`` H, A, B): ``--speculative-config '{"method":
"mtp", "num_speculative_tokens": k}'`` is EAGLE-style. Per step, a decoding request is
scheduled ``1 + k`` tokens (its last sampled token and k drafts; they count against
``max_num_batched_tokens`` and the drafts are cut when the budget runs out) and its KV
slots are reserved for ``k`` lookahead tokens besides. The target model verifies them in
one forward pass (logits at every position); with ``j`` drafts accepted the request emits
``j + 1`` tokens and its computed tokens drop back by the ``k - j`` rejected. Then the
drafter runs: one pass of the MTP module over every token the step scheduled, and
``k - 1`` single-token passes per decoding request (the same module reused when the
checkpoint ships fewer than k).

What is assumed here (not measured):

- **Acceptance.** Each draft is accepted independently with probability ``a`` given that
  the ones before it were, so a step with ``d`` drafts emits on average
  ``E(d) = 1 + a + ... + a^d = (1 - a^(d+1)) / (1 - a)`` tokens (:func:`expected_tokens`).
  A request emits exactly that mean over its steps: it carries the fractional remainder
  from step to step (:func:`emitted_tokens`), so the number of tokens per step is
  deterministic (the spread of real per-step acceptance is not modelled).
- **Cost of the MTP module.** One decoder layer of the target (its token-proportional ops
  averaged over the model's layers, :meth:`LatencyModel.linear_time` / layers, and one
  layer's share of the decode attention), its ``eh_proj`` GEMM (``2 hidden -> hidden``:
  DeepSeek-V3's MTP concatenates the embedding and the hidden state), and the shared LM
  head over one row per request.
- **Verify pass.** The target's token-proportional ops (GEMMs, MoE, all-reduce) run over
  the ``1 + k`` tokens of every decoding request and its LM head over all of them; its
  attention is priced as a decode over the request's context plus its drafts (the KV is
  read once for the ``1 + k`` queries, as the decode kernels do with a query length above 1).
"""

from __future__ import annotations

import math
from typing import Any

from calibration.errors import ComemInputError

#: the most draft tokens per step accepted as a parameter (vLLM allows more; gains stop
#: well before: E(k) < 1 / (1 - a))
MAX_SPECULATIVE_TOKENS = 16


def expected_tokens(drafts: int, acceptance: float) -> float:
    """Mean tokens one verify step of ``drafts`` drafts emits: ``(1 - a^(d+1)) / (1 - a)``,
    ``d + 1`` at ``a = 1``."""
    if acceptance >= 1.0:
        return float(drafts + 1)
    return (1.0 - acceptance ** (drafts + 1)) / (1.0 - acceptance)


def emitted_tokens(drafts: int, acceptance: float, carry: float) -> tuple[int, float]:
    """Tokens a verify step of ``drafts`` drafts emits for a request carrying ``carry``
    (in [0, 1)) from its earlier steps, and the new carry: the integer part of
    ``carry + E(drafts)``, which lies in ``[1, drafts + 1]``."""
    x = carry + expected_tokens(drafts, acceptance)
    n = min(max(int(math.floor(x)), 1), drafts + 1)
    return n, x - n


def check_speculative(model: Any, k: int, acceptance: float, where: str) -> None:
    """Refuse an MTP configuration vLLM would not run or we cannot price, in one line."""
    if k < 0 or k > MAX_SPECULATIVE_TOKENS:
        raise ComemInputError(
            f"{where}: num_speculative_tokens must be 0..{MAX_SPECULATIVE_TOKENS}, got {k}"
        )
    if not 0.0 <= acceptance <= 1.0:
        raise ComemInputError(f"{where}: spec_acceptance_rate must be in [0, 1], got {acceptance}")
    if k and not model.mtp_layers:
        raise ComemInputError(
            f"{where}: speculative decoding with MTP needs a checkpoint with MTP modules;"
            f" {model.alias} ships none (num_nextn_predict_layers / mtp_num_hidden_layers /"
            " num_mtp_modules absent or 0)"
        )


def draft_time(lm: Any, tokens: int, spec_seqs: int, kv_total: int, k: int) -> float:
    """GPU seconds of the MTP drafter after a step that scheduled ``tokens`` tokens with
    ``spec_seqs`` decoding requests over ``kv_total`` tokens of context: one module pass
    over all tokens, then ``k - 1`` passes of one token per request (see the module
    docstring for what a pass costs)."""
    m = lm.model
    layers = m.layers

    def one_pass(n: int, seqs: int) -> float:
        t = float(lm.linear_time(n)) / layers
        t += float(lm.token_ops.gemm("gemm", _arr(n), m.hidden, 2 * m.hidden, True)[0])
        t += float(lm.lm_head_tabulated(seqs))
        if seqs:
            t += lm.decode_attention_scalar(seqs, kv_total) / layers
        return t

    total = one_pass(tokens, spec_seqs)
    if k > 1 and spec_seqs:
        total += (k - 1) * one_pass(spec_seqs, spec_seqs)
    return total


def _arr(n: int) -> Any:
    import numpy as np

    return np.array([float(max(n, 1))])


def spec_iteration_time(
    lm: Any,
    num_decode: int,
    decode_kv_total: int,
    prefill_new: list[int],
    prefill_cached: list[int],
    spec_tokens: int,
    spec_seqs: int,
    k: int,
) -> float:
    """Seconds of one iteration whose ``num_decode`` decodes include ``spec_seqs`` verify
    passes carrying ``spec_tokens`` drafts in all: the target's kernels over every scheduled
    token, the drafter's, and the framework's overhead as :meth:`iteration_time_of` adds it."""
    base = lm.kernel_time_of(num_decode, decode_kv_total, prefill_new, prefill_cached)
    n = num_decode + sum(prefill_new)
    rows = num_decode + len(prefill_new)
    if spec_tokens:
        base += float(lm.linear_time(n + spec_tokens)) - float(lm.linear_time(n))
        base += float(lm.lm_head_tabulated(rows + spec_tokens)) - float(lm.lm_head_tabulated(rows))
    gpu = base + draft_time(lm, n + spec_tokens, spec_seqs, decode_kv_total, k)
    kv = decode_kv_total + sum(prefill_new) + sum(prefill_cached)
    return float(lm.with_framework(gpu, rows, kv))

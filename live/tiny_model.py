"""A tiny Llama with random weights and a word-level tokenizer, made locally (no downloads).

It is a real model for a real server: ``transformers serve`` loads it from a directory
and generates with it like with any checkpoint. The tokenizer maps the words ``w0``,
``w1``, ... one-to-one to tokens and splits on whitespace, so a prompt of n such words
is exactly n tokens and generated text re-tokenizes to the same ids (prefix caching
sees an agent's growing context as the simulator does). The rows of EOS and the other
special tokens in the output layer are zeroed, so greedy decoding never picks them
(their logit is 0, and the largest of the random others is positive): every request
generates exactly ``max_tokens`` ordinary words,
the equivalent of vLLM's ``ignore_eos``, which ``transformers serve`` does not accept.

Needs the ``serve`` extra (torch, transformers).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL = ("<unk>", "<s>", "</s>", "<pad>")


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Shape of the tiny model; the defaults give ~1.4 M parameters."""

    words: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 8192
    seed: int = 0


def word(i: int) -> str:
    """The i-th ordinary word of the vocabulary."""
    return f"w{i}"


def make_tiny_llama(out: str | Path, spec: TinyLlamaSpec | None = None) -> Path:
    """Write config, weights and tokenizer to ``out`` (created); returns the directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = spec or TinyLlamaSpec()
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate([*SPECIAL, *(word(i) for i in range(spec.words))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with single spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(path)
    torch.manual_seed(spec.seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # never generate a special token (the text would lose it)
        for special in SPECIAL:
            model.lm_head.weight[vocab[special]].zero_()
    model.save_pretrained(path)
    (path / "comem_tiny_spec.json").write_text(json.dumps(asdict(spec), indent=1) + "\n")
    return path

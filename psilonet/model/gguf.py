"""Convert a llama-family GGUF file into a Hugging Face style folder that ``mlx_lm.load`` opens.

Three things need care:

* ``mx.load`` returns quantized GGUF tensors as MLX affine quantization triples
  (``weight``/``scales``/``biases``, group size 32); we dequantize them to float32 because
  quantized matmuls have no fast path on the CPU.
* llama.cpp permutes the rows of ``attn_q``/``attn_k`` so that its interleaved ("traditional")
  RoPE applies. mlx-lm's llama uses the non-interleaved RoPE of Hugging Face checkpoints, so
  the permutation is undone here. Leaving it in still produces fluent-looking text, but costs
  about a nat of loss: only the loss test catches it.
* The tokenizer (byte-level BPE, merges, special tokens, chat template) lives in the GGUF
  metadata and is rebuilt with ``tokenizers``/``transformers``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import numpy as np
from tqdm import tqdm

GROUP_SIZE = 32
# GGUF tensor name (after "blk.N.") -> Hugging Face llama name (after "model.layers.N.").
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
TOKEN_TYPE_CONTROL = 3


class GGUFError(ValueError):
    """The GGUF file is not a llama-family model this converter understands."""


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, mx.array], dict]:
    """Raw tensors and metadata of a GGUF file."""
    try:
        return mx.load(str(path), return_metadata=True)
    except Exception as exc:  # mlx raises plain ValueError/RuntimeError with terse text
        raise GGUFError(f"cannot read GGUF file {path}: {exc}") from exc


def _scalar(meta: dict, key: str, default=None):
    value = meta.get(key, default)
    if value is None:
        raise GGUFError(f"GGUF metadata lacks {key!r}")
    return value.item() if hasattr(value, "item") else value


def hf_config(meta: dict) -> dict:
    """config.json for mlx-lm's ``llama`` model, read from GGUF metadata."""
    arch = _scalar(meta, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"only llama-family GGUF files are supported, this one is {arch!r}")
    heads = int(_scalar(meta, "llama.attention.head_count"))
    hidden = int(_scalar(meta, "llama.embedding_length"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(_scalar(meta, "llama.block_count")),
        "intermediate_size": int(_scalar(meta, "llama.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(meta, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_scalar(meta, "llama.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_scalar(meta, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_scalar(meta, "llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_scalar(meta, "llama.context_length")),
        "vocab_size": int(_scalar(meta, "llama.vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        "bos_token_id": int(_scalar(meta, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_scalar(meta, "tokenizer.ggml.eos_token_id")),
        "tie_word_embeddings": True,  # corrected by convert() when output.weight exists
        "torch_dtype": "float32",
    }


def undo_rope_permutation(w: mx.array, n_heads: int) -> mx.array:
    """Inverse of llama.cpp's ``permute``: per head, rows (head_dim/2, 2) -> (2, head_dim/2).

    llama.cpp interleaves the two rotated halves of each head so that adjacent dimensions
    form a RoPE pair; Hugging Face/mlx-lm rotate the first half against the second half.
    """
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _dequantized(tensors: dict[str, mx.array]) -> Iterator[tuple[str, mx.array]]:
    """(gguf base name, float32 array) for every logical tensor."""
    for name in sorted(tensors):
        if name.endswith((".scales", ".biases")):
            continue
        w = tensors[name]
        base = name[: -len(".weight")] if name.endswith(".weight") else name
        scales = tensors.get(f"{base}.scales")
        if scales is not None:
            bits = w.shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
            w = mx.dequantize(
                w,
                scales.astype(mx.float32),
                tensors[f"{base}.biases"].astype(mx.float32),
                group_size=GROUP_SIZE,
                bits=bits,
            )
        yield name, w.astype(mx.float32)


def hf_weights(
    tensors: dict[str, mx.array], config: dict, *, fix_rope: bool = True, progress: bool = False
) -> dict[str, mx.array]:
    """Float32 weights under Hugging Face llama names.

    ``fix_rope=False`` keeps llama.cpp's interleaved q/k rows: correct only for a model run
    with ``rope_traditional=True`` (used by the acceptance test as the GGUF reference).
    """
    out: dict[str, mx.array] = {}
    items = _dequantized(tensors)
    if progress:
        n = sum(1 for k in tensors if not k.endswith((".scales", ".biases")))
        items = tqdm(items, total=n, desc="dequantize", unit="tensor")
    for name, w in items:
        key, heads = hf_name(name, config)
        if fix_rope and heads:
            w = undo_rope_permutation(w, heads)
        mx.eval(w)
        out[key] = w
    return out


def hf_name(name: str, config: dict) -> tuple[str, int | None]:
    """``(Hugging Face llama name, heads)`` of a GGUF tensor name; ``heads`` is the head count
    whose RoPE row permutation :func:`undo_rope_permutation` undoes (q and k), else None.

    A row permutation moves whole rows, so it applies to packed quantized rows and their scales
    and biases alike (``psilonet.model.quantized`` keeps the GGUF's blocks that way)."""
    stem, _, suffix = name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        if part not in _BLOCK_NAMES:
            raise GGUFError(f"unexpected GGUF tensor {name}")
        heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}.get(part)
        return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{suffix}", heads
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}", None
    raise GGUFError(f"unexpected GGUF tensor {name}")


def build_tokenizer(meta: dict):
    """A transformers fast tokenizer equal to the one the GGUF was made from."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise GGUFError("only byte-level BPE ('gpt2') GGUF tokenizers are supported")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    types = np.array(meta["tokenizer.ggml.token_type"])
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM ("smollm" pre-tokenizer in llama.cpp): digits split one by one, then GPT-2 bytes.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [tokens[i] for i in np.flatnonzero(types == TOKEN_TYPE_CONTROL)]
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])

    def tok(key):
        idx = meta.get(key)
        return tokens[int(idx.item())] if idx is not None else None

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=tok("tokenizer.ggml.bos_token_id"),
        eos_token=tok("tokenizer.ggml.eos_token_id"),
        unk_token=tok("tokenizer.ggml.unknown_token_id"),
        pad_token=tok("tokenizer.ggml.padding_token_id"),
        additional_special_tokens=[t for t in specials if t not in tokens[:3]],
        model_max_length=int(_scalar(meta, "llama.context_length", 2048)),
        clean_up_tokenization_spaces=False,
    )
    template = meta.get("tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer


def convert(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write config.json, model.safetensors and the tokenizer files of ``gguf_path`` into ``out_dir``.

    ``out_dir`` should be a fresh staging folder: the caller publishes it atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = read_gguf(gguf_path)
    config = hf_config(meta)
    weights = hf_weights(tensors, config, progress=progress)
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    build_tokenizer(meta).save_pretrained(str(out_dir))
    return out_dir

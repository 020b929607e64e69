"""One forward pass over ``model.model.layers`` that exposes every block's output.

Works for a plain mlx-lm llama-family model and for a :class:`~psilonet.model.skip.SkipModel`.
States are named like TransformerLens hook points: ``states[0]`` is ``hook_embed`` and
``states[l + 1]`` is ``blocks.{l}.hook_resid_post``. ``after_block(l, h)`` may replace a
block's output before the next block sees it (doses use this).
"""

from __future__ import annotations

from typing import Callable

import psilonet  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
from mlx_lm.models.base import create_attention_mask

from psilonet.model.skip import SkipModel, block_with_heads

AfterBlock = Callable[[int, mx.array], mx.array]


def hidden_states(
    model, inputs: mx.array, cache=None, after_block: AfterBlock | None = None, heads: dict | None = None
) -> list[mx.array]:
    """``[h[0], ..., h[L]]`` for a base or skip model (before the final norm); ``heads``, if
    given, receives each block's attention heads ``{l: (B, H, T, hd)}`` (``blocks.{l}.attn.hook_z``)."""
    if isinstance(model, SkipModel):
        return model.hidden_states(inputs, cache=cache, after_block=after_block, heads=heads)
    inner = model.model
    h = inner.embed_tokens(inputs)
    caches = cache if cache is not None else [None] * len(inner.layers)
    mask = create_attention_mask(h, caches[0])
    states = [h]
    for l, (layer, c) in enumerate(zip(inner.layers, caches)):
        if heads is None:
            h = layer(h, mask, cache=c)
        else:
            h, heads[l] = block_with_heads(layer, h, mask, c)
        if after_block is not None:
            h = after_block(l, h)
        states.append(h)
    return states


def logits_from(model, h_last: mx.array) -> mx.array:
    """Final norm and LM head of a base or skip model."""
    if isinstance(model, SkipModel):
        return model.logits(h_last)
    out = model.model.norm(h_last)
    if model.args.tie_word_embeddings:
        return model.model.embed_tokens.as_linear(out)
    return model.lm_head(out)


def forward(model, inputs: mx.array, cache=None, after_block: AfterBlock | None = None) -> tuple[mx.array, list[mx.array]]:
    """``(logits, states)`` in one pass."""
    states = hidden_states(model, inputs, cache, after_block)
    return logits_from(model, states[-1]), states


def run_with_cache(model, inputs: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
    """``(logits, cache)`` with TransformerLens-style names, all from one forward pass:
    ``hook_embed``, ``blocks.{l}.hook_resid_post`` (B, T, D) and ``blocks.{l}.attn.hook_z``
    (B, T, H, hd), the attention heads before the o-projection."""
    heads: dict[int, mx.array] = {}
    states = hidden_states(model, inputs, heads=heads)
    cache = {"hook_embed": states[0]}
    for l in range(len(states) - 1):
        cache[f"blocks.{l}.hook_resid_post"] = states[l + 1]
        cache[f"blocks.{l}.attn.hook_z"] = heads[l].transpose(0, 2, 1, 3)
    return logits_from(model, states[-1]), cache


def num_layers(model) -> int:
    return len(model.layers if isinstance(model, SkipModel) else model.model.layers)

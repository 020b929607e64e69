"""One hooked forward pass over ``model.model.layers``, written once for every model family.

The base model and the skip model (:class:`psilonet.model.skip.SkipModel`) both run through
:func:`hidden_states`; capture, doses and entropy tracking read from it. It follows mlx-lm's
own ``models/llama.py`` step by step (embeddings; per block ``h + attn(norm(h))`` then
``h + mlp(norm(h))``; final norm; LM head) and exposes hook points named like TransformerLens's:

* ``hook_embed`` and ``blocks.{l}.hook_resid_post``: the residual states ``h[0..L]`` before the
  final norm (``states[0]`` and ``states[l + 1]``);
* ``blocks.{l}.attn.hook_z``: block ``l``'s attention heads before the o-projection;
* ``blocks.{l}.attn.hook_attn_scores``: the masked attention logits ``(B, H, Tq, Tk)``, which a
  hook may change per head and query row before the softmax, and ``blocks.{l}.attn.hook_pattern``,
  the probabilities after it;
* after each block, ``after_block(l, h)`` may replace the block's output (doses do): the
  replaced state is what later blocks, skip taps and the LM head see;
* ``attention(l, q, k, v, scale, mask, cache)`` may replace a block's attention core (after RoPE
  and the cache update) and ``mlp(l, layer, h, cache)`` its MLP branch: interventions that keep
  their own state from token to token (:mod:`psilonet.generation.bio`) plug in there.

The plain path calls ``mx.fast.scaled_dot_product_attention`` like mlx-lm, or a cache's own
``attention`` where it offers one (the compiled decode step's fixed cache on q4/q8 weights: the
extension's span attention); the attention is computed explicitly (scores, softmax, weighted
values) only while a score or pattern hook is set.

Supported model families (``config.json``'s ``model_type``), see :data:`FAMILIES`:

* ``llama`` (SmolLM2, Llama 3.x): optional attention biases; where the config lists
  ``layer_types``, ``sliding_attention`` layers get mlx-lm's sliding-window mask of
  ``sliding_window`` tokens (and a rotating KV cache), the others the full causal mask.
* ``qwen2`` (Qwen2.5): biases on the q/k/v projections; full causal mask.
* ``qwen3``: an RMSNorm over each query and key head (``q_norm``, ``k_norm``) before RoPE;
  full causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention

FAMILIES = {
    "llama": "SmolLM2, Llama 3.x",
    "qwen2": "Qwen2.5",
    "qwen3": "Qwen3",
}

AfterBlock = Callable[[int, mx.array], mx.array]
ScoresHook = Callable[[int, mx.array], mx.array]
AttentionHook = Callable[..., mx.array]  # (l, q, k, v, scale, mask, cache) -> heads (B, H, Tq, hd)
MlpHook = Callable[..., mx.array]  # (l, layer, h, cache) -> the MLP branch added to h


@dataclass
class Hooks:
    """What one forward pass exposes or changes; all off by default.

    ``z`` and ``pattern`` are dicts the pass fills per layer: ``z[l]`` is ``(B, H, T, hd)``
    (``hook_z`` with heads before positions), ``pattern[l]`` is ``(B, H, Tq, Tk)``.
    ``attn_scores(l, scores)`` returns the logits block ``l``'s softmax uses. Score and
    pattern hooks act on every block's own attention (not on the skip attention).
    """

    after_block: AfterBlock | None = None
    z: dict[int, mx.array] | None = None
    attn_scores: ScoresHook | None = None
    pattern: dict[int, mx.array] | None = None
    attention: AttentionHook | None = None
    mlp: MlpHook | None = None

    @property
    def explicit_attention(self) -> bool:
        return self.attn_scores is not None or self.pattern is not None

    @property
    def empty(self) -> bool:
        return (self.after_block is None and self.z is None and not self.explicit_attention
                and self.attention is None and self.mlp is None)


NO_HOOKS = Hooks()


# ---------------------------------------------------------------------- attention

def split_heads(x: mx.array, n_heads: int, norm=None) -> mx.array:
    """(B, T, n*hd) -> (B, n, T, hd), through the family's per-head norm (qwen3) if given."""
    b, t, _ = x.shape
    x = x.reshape(b, t, n_heads, -1)
    if norm is not None:
        x = norm(x)
    return x.transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """(B, n, T, hd) -> (B, T, n*hd)."""
    b, n, t, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, n * hd)


def queries(attn, x: mx.array) -> mx.array:
    """Query heads (B, H, T, hd) of an mlx-lm ``Attention``-like module, before RoPE."""
    return split_heads(attn.q_proj(x), attn.n_heads, getattr(attn, "q_norm", None))


def keys_values(attn, x: mx.array) -> tuple[mx.array, mx.array]:
    """Key and value heads (B, KV, T, hd), keys before RoPE."""
    k = split_heads(attn.k_proj(x), attn.n_kv_heads, getattr(attn, "k_norm", None))
    return k, split_heads(attn.v_proj(x), attn.n_kv_heads)


def attend(attn, q: mx.array, k: mx.array, v: mx.array, mask, cache, layer: int = -1,
           hooks: Hooks = NO_HOOKS) -> mx.array:
    """RoPE at the cache's offset, the KV cache update, then attention: heads (B, H, T, hd)."""
    offset = cache.offset if cache is not None else 0
    q = attn.rope(q, offset=offset)
    k = attn.rope(k, offset=offset)
    if cache is not None:
        k, v = cache.update_and_fetch(k, v)
    if hooks.attention is not None:
        return hooks.attention(layer, q, k, v, attn.scale, mask, cache)
    if not hooks.explicit_attention:
        fast = cache.attention(q, k, v, attn.scale) if hasattr(cache, "attention") else None
        if fast is not None:  # the fixed decode cache's own (psilonet.generation.decode_step)
            return fast
        return scaled_dot_product_attention(q, k, v, cache=cache, scale=attn.scale, mask=mask)
    return explicit_attention(q, k, v, attn.scale, mask, layer, hooks)


def grouped_scores(q: mx.array, k: mx.array, scale: float) -> mx.array:
    """``q k^T * scale`` (B, H, Tq, Tk) with grouped-query heads: query head ``h`` reads key head
    ``h // (H / KV)`` of ``k`` (B, KV, Tk, hd), without copying the keys per query head."""
    b, n_heads, t, hd = q.shape
    n_kv, s = k.shape[1], k.shape[2]
    groups = q.reshape(b, n_kv, n_heads // n_kv, t, hd) * scale
    return (groups @ mx.expand_dims(k, 2).swapaxes(-1, -2)).reshape(b, n_heads, t, s)


def grouped_values(probs: mx.array, v: mx.array) -> mx.array:
    """``probs v`` (B, H, Tq, hd) for probabilities (B, H, Tq, Tk) over grouped value heads (B, KV, Tk, hd)."""
    b, n_heads, t, s = probs.shape
    n_kv, hd = v.shape[1], v.shape[3]
    out = probs.reshape(b, n_kv, n_heads // n_kv, t, s) @ mx.expand_dims(v, 2)
    return out.reshape(b, n_heads, t, hd)


def explicit_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask, layer: int,
                       hooks: Hooks) -> mx.array:
    """``softmax(hook(mask(q k^T * scale))) v`` with grouped-query heads, exposing the logits
    and the probabilities; equal to the fused kernel when the hook changes nothing."""
    scores = apply_mask(grouped_scores(q, k, scale), mask)
    if hooks.attn_scores is not None:
        scores = hooks.attn_scores(layer, scores)
    probs = mx.softmax(scores, axis=-1, precise=True)
    if hooks.pattern is not None:
        hooks.pattern[layer] = probs
    return grouped_values(probs, v)


def apply_mask(scores: mx.array, mask) -> mx.array:
    """mlx-lm's mask kinds: None, ``"causal"`` (aligned to the last key), boolean or additive."""
    if mask is None:
        return scores
    if isinstance(mask, str):
        t, s = scores.shape[-2:]
        mask = mx.arange(s - t, s)[:, None] >= mx.arange(s)[None]
    if mask.dtype == mx.bool_:
        return mx.where(mask, scores, mx.finfo(scores.dtype).min)
    return scores + mask


def self_attention(attn, x: mx.array, mask, cache, layer: int, hooks: Hooks = NO_HOOKS) -> mx.array:
    """A block's own attention heads before the o-projection (``hook_z``), (B, H, T, hd)."""
    return attend(attn, queries(attn, x), *keys_values(attn, x), mask, cache, layer, hooks)


# ---------------------------------------------------------------------- blocks and the loop

Blend = Callable[[mx.array, mx.array], mx.array]


def block(layer, l: int, h: mx.array, mask, cache, hooks: Hooks = NO_HOOKS, blend: Blend | None = None) -> mx.array:
    """Block ``l``, as mlx-lm's ``TransformerBlock``: ``h + a``, then ``+ mlp(norm(h + a))``.

    ``a`` is ``o_proj(heads)``, or ``blend(norm(h), heads)`` where a skip model mixes in its
    skip attention.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    z = self_attention(attn, x, mask, cache, l, hooks)
    if hooks.z is not None:
        hooks.z[l] = z
    h = h + (attn.o_proj(merge_heads(z)) if blend is None else blend(x, z))
    if hooks.mlp is not None:
        return h + hooks.mlp(l, layer, h, cache)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def unwrap(model):
    """``(base, skip)``: the plain mlx-lm model and the skip model around it (or None).

    A skip model holds its frozen base as ``model.base`` and runs its own blocks through
    ``model.block``; a plain mlx-lm model has no ``base``.
    """
    base = getattr(model, "base", None)
    return (model, None) if base is None else (base, model)


def layer_masks(inner, h: mx.array, caches: list) -> list:
    """Each block's mask as its family builds it (llama: sliding-window layers get a window)."""
    sliding = [getattr(layer, "use_sliding", False) for layer in inner.layers]
    full = window = None
    if not all(sliding):
        full = create_attention_mask(h, caches[sliding.index(False)])
    if any(sliding):
        window = create_attention_mask(h, caches[sliding.index(True)], window_size=inner.sliding_window)
    return [window if s else full for s in sliding]


def hidden_states(model, inputs: mx.array, cache=None, hooks: Hooks = NO_HOOKS,
                  prefix: list[mx.array] | None = None) -> list[mx.array]:
    """``[h[0], ..., h[L]]`` of a base or skip model (before the final norm).

    ``prefix``, the states ``[h[0], ..., h[s]]`` of an earlier pass over the same tokens, skips
    blocks ``0..s-1`` (``inputs`` is then unused): what a row shares with another up to block
    ``s`` is not computed again (ablations of block ``s`` or later, :mod:`psilonet.analysis.ablation`).

    ``cache`` is the model's prompt cache (``mlx_lm.models.cache.make_prompt_cache``): a skip
    model's holds the base model's caches first, then its skip taps'.
    """
    base, skip = unwrap(model)
    layers = base.model.layers
    caches = list(cache[: len(layers)]) if cache is not None else [None] * len(layers)
    skip_caches = skip.skip_caches(cache) if skip is not None else {}
    states = [base.model.embed_tokens(inputs)] if prefix is None else list(prefix)
    h = states[-1]
    masks = layer_masks(base.model, h, caches)
    for l in range(len(states) - 1, len(layers)):
        layer = layers[l]
        if l in skip_caches:
            h = skip.block(l, h, states, masks[l], caches[l], skip_caches[l], hooks)
        else:
            h = block(layer, l, h, masks[l], caches[l], hooks)
        if hooks.after_block is not None:
            h = hooks.after_block(l, h)
        states.append(h)
    return states


def logits_from(model, h_last: mx.array) -> mx.array:
    """Final norm and LM head of a base or skip model."""
    base, _ = unwrap(model)
    out = base.model.norm(h_last)
    if base.args.tie_word_embeddings:
        return base.model.embed_tokens.as_linear(out)
    return base.lm_head(out)


def forward(model, inputs: mx.array, cache=None, hooks: Hooks = NO_HOOKS) -> tuple[mx.array, list[mx.array]]:
    """``(logits, states)`` in one pass."""
    states = hidden_states(model, inputs, cache, hooks)
    return logits_from(model, states[-1]), states


def run_with_cache(model, inputs: mx.array, *, return_type: str | None = "logits") -> tuple[mx.array | None, dict[str, mx.array]]:
    """``(logits, cache)`` with TransformerLens names from one pass: ``hook_embed`` and
    ``blocks.{l}.hook_resid_post`` (B, T, D), ``blocks.{l}.attn.hook_z`` (B, T, H, hd).

    ``return_type=None`` skips the LM head (logits ``None``), as in TransformerLens.
    """
    if return_type not in ("logits", None):
        raise ValueError(f"return_type: 'logits' or None, got {return_type!r}")
    z: dict[int, mx.array] = {}
    states = hidden_states(model, inputs, hooks=Hooks(z=z))
    cache = {"hook_embed": states[0]}
    for l in range(len(states) - 1):
        cache[f"blocks.{l}.hook_resid_post"] = states[l + 1]
        cache[f"blocks.{l}.attn.hook_z"] = z[l].transpose(0, 2, 1, 3)
    logits = logits_from(model, states[-1]) if return_type == "logits" else None
    return logits, cache


def num_layers(model) -> int:
    return len(unwrap(model)[0].model.layers)

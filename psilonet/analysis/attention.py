"""Attention patterns: where each head of a block looks, for the base attention and each skip tap.

``patterns(model, inputs, layer)`` returns, per row, head, query and key position, the
probabilities ``softmax(mask(q k^T * scale))`` of block ``layer``:

* ``"base"``: the block's own attention, captured from the hooked forward's explicit attention
  path (``hook_pattern``): queries and keys from ``norm_l(h[l])`` through the family's q/k
  projections, per-head q/k norms (qwen3), RoPE, grouped-query heads and the layer's mask
  (causal, or llama's sliding window);
* for a skip model, one entry per skip tap distance ``d`` (an int): the skip attention's queries
  from ``norm_l(h[l])`` over keys of the history state ``norm_l(h[l - d])``, with the same mask
  and RoPE positions, computed through the same explicit-attention code on the states that
  forward pass produced. The tap weight (softmax over taps) and gate alpha that scale a tap's
  output are not in the pattern: :meth:`~psilonet.model.skip.SkipModel.tap_weights` and
  :meth:`~psilonet.model.skip.SkipModel.gate_alphas` give them.

Under synaptic fatigue (``fatigue``: one strength per row, :mod:`psilonet.generation.bio`)
the base pattern is the one after fatigue, the probabilities the fatigued block actually used
(each key's weight scaled by its remaining pool and renormalised); a strength-0 row's is the
plain softmax. Skip taps are not fatigued, but read the states of the fatigued pass.

Rows sum to one over the keys a query may see; masked keys get probability 0.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from psilonet.generation import bio as bio_mod
from psilonet.model import forward
from psilonet.model.skip import _key as skip_key

BASE = "base"


def base_patterns(model, ids: np.ndarray, fatigue: list[float] | None = None) -> tuple[dict[int, mx.array], list[mx.array]]:
    """``({layer: base attention probabilities (B, H, T, T)}, states)`` of every block in one
    hooked forward of ``ids`` (B, T), row ``r`` under fatigue strength ``fatigue[r]``."""
    captured: dict[int, mx.array] = {}
    if fatigue is not None and len(fatigue) != ids.shape[0]:
        raise ValueError(f"fatigue: one strength per row is needed, got {len(fatigue)} for {ids.shape[0]} rows")
    if fatigue is not None and any(s > 0 for s in fatigue):
        bio_mod.check_family(model)
        bio = bio_mod.Bio(list(fatigue), [0.0] * len(fatigue), forward.num_layers(model), patterns=captured)
        hooks = bio.hooks()
    else:
        hooks = forward.Hooks(pattern=captured)
    return captured, forward.hidden_states(model, mx.array(ids), hooks=hooks)


def patterns(model, inputs, layer: int, *, fatigue: list[float] | None = None) -> dict[str | int, np.ndarray]:
    """``{"base" or skip distance: probabilities (B, H, T, T)}`` of block ``layer`` for each row
    of ``inputs`` (B, T), row ``r`` under fatigue strength ``fatigue[r]`` (default none)."""
    base, _ = forward.unwrap(model)
    layers = base.model.layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer: {layer} is out of range (the model has layers 0..{len(layers) - 1})")
    ids = np.asarray(inputs, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    captured, states = base_patterns(model, ids, fatigue)
    return {BASE: np.array(captured[layer].astype(mx.float32)), **tap_patterns(model, states, layer)}


def tap_patterns(model, states: list[mx.array], layer: int) -> dict[int, np.ndarray]:
    """``{skip distance: probabilities (B, H, T, T)}`` of block ``layer``'s skip taps, recomputed
    from the residual ``states`` of one forward pass (empty where the block has no skip taps)."""
    base, skip = forward.unwrap(model)
    if skip is None or layer not in skip.skip_layers:
        return {}
    layers = base.model.layers
    mask = forward.layer_masks(base.model, states[0], [None] * len(layers))[layer]
    norm = layers[layer].input_layernorm
    attn = skip.blocks[skip_key(layer)].attn
    q = forward.queries(attn, norm(states[layer]))
    out: dict[int, np.ndarray] = {}
    for d in skip.cfg.taps(layer):
        k, v = forward.keys_values(attn, norm(states[layer - d]))
        tap: dict[int, mx.array] = {}
        forward.attend(attn, q, k, v, mask, None, layer, forward.Hooks(pattern=tap))
        out[d] = np.array(tap[layer].astype(mx.float32))
    return out


def every_pattern(model, inputs) -> tuple[list[mx.array], dict[int, dict[str | int, np.ndarray]]]:
    """``(states, {layer: {"base" or skip distance: probabilities (B, H, T, T)}})`` of every block
    in one forward pass (no fatigue): what :func:`patterns` gives for one layer, for all of them."""
    ids = np.asarray(inputs, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    captured, states = base_patterns(model, ids)
    out = {l: {BASE: np.array(p.astype(mx.float32)), **tap_patterns(model, states, l)}
           for l, p in sorted(captured.items())}
    return states, out


def records(pats: dict[str | int, np.ndarray], row: int = 0) -> list[dict]:
    """One JSON-ready dict per (tap, head, query position): ``weights`` over keys ``0..position``."""
    out = []
    for tap, p in pats.items():
        for head in range(p.shape[1]):
            for t in range(p.shape[2]):
                out.append(dict(head=head, tap=tap, position=t, weights=[float(w) for w in p[row, head, t, : t + 1]]))
    return out


def summaries(p: np.ndarray) -> dict[str, np.ndarray]:
    """Per row and head (B, H), means over the query positions ``t >= 1`` of a pattern (B, H, T, T):

    * ``entropy``: ``-sum_j p_tj log p_tj`` in nats;
    * ``sink``: ``p_t0``, the share of attention on position 0 (the attention sink);
    * ``distance``: ``sum_j p_tj (t - j)``, how many positions back the head reads on average.

    Query 0 is left out: it can only attend to itself, which would pull every head towards a
    sink share of one and a distance of zero on short prompts. Needs at least two positions.
    """
    t = p.shape[-1]
    if t < 2:
        raise ValueError("summaries: a pattern over at least two positions is needed")
    q = np.asarray(p, dtype=np.float64)[:, :, 1:, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(q > 0, q * np.log(q), 0.0).sum(-1)
    back = np.arange(1, t)[:, None] - np.arange(t)[None, :]  # (T-1, T): t - j
    return dict(entropy=ent.mean(-1), sink=q[..., 0].mean(-1), distance=(q * back).sum(-1).mean(-1))

"""Psychedelic skip-layer attention around a frozen mlx-lm llama-family model (DESIGN §5).

Notation (0-based, as in ``model.model.layers``): ``h[0]`` are the token embeddings and block
``l`` (0..L-1) maps ``h[l]`` to ``h[l+1]``, computing ``a = attn_l(norm_l(h[l]))`` and then its
MLP. (DESIGN's block ``i`` is ``l + 1`` here, so its ``h_{i-1-d}`` is our ``h[l-d]``.)

**Skip attention** at block ``l`` exists when ``l >= skip_start`` and ``l - d >= 0`` for some tap
distance ``d``. It is a second attention module with its own q (D->D), k, v (D->kv_dim) and
o (D->D) projections in the base's GQA head layout, RoPE at the same positions and a causal
mask. Queries come from ``norm_l(h[l])`` (the block's own attention input); keys and values
from the history state ``norm_l(h[l-d])``, normalised with the same RMSNorm. For
SmolLM2-135M with ``skip_start=3, distances=(3,)`` that is 27 modules and 23.9M parameters.

**Blend** of the base attention output ``a`` and the skip output ``s``:

* ``convex`` (the original research): ``a' = (1 - alpha) a + alpha s``; the skip q/k/v/o start
  as copies of the base block's own attention weights.
* ``additive``: ``a' = a + alpha s``; the skip o-projection starts at zero, so step 0 is
  exactly the base model.

**Multi-tap kernel**: with several ``distances``, one skip module per block attends to every
available history state (``l - d >= 0``) and mixes the results with ``softmax(tap_logits_l)``
over the available taps only (the others are masked out). Tap logits start at zero (uniform).

**Per-head gates**: ``alpha`` becomes per head, ``alpha_h = sigmoid(gate_logit_h) * dial``,
blended per head before the o-projections. Gate logits start at ``logit(alpha)`` so step 0
equals the scalar model at ``dial = 1``; ``dial`` is a plain attribute that can be changed at
inference time without retraining.

Only the skip parameters are trainable: the base model is frozen.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psilonet  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.cache import KVCache, make_prompt_cache

BLENDS = ("convex", "additive")
SPARSITY = (None, "l1", "entropy")
WEIGHTS_FILE = "skip_weights.safetensors"
CONFIG_FILE = "skip_config.json"


class SkipConfigError(ValueError):
    """A skip configuration that cannot be built; the message names the option."""


@dataclass
class SkipConfig:
    """Hyper-parameters of the skip adapter (all JSON-serialisable)."""

    distances: list[int] = field(default_factory=lambda: [3])
    skip_start: int = 3
    alpha: float = 0.65
    blend: str = "convex"
    gates: bool = False
    dial: float = 1.0
    sparsity: str | None = None
    sparsity_weight: float = 0.0

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "SkipConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(params) - names
        if unknown:
            raise SkipConfigError(f"unknown skip option(s): {', '.join(sorted(unknown))}")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, num_layers: int) -> "SkipConfig":
        """Raise :class:`SkipConfigError` naming the first bad option."""
        if not self.distances:
            raise SkipConfigError("distances: give at least one skip distance")
        if any(not isinstance(d, int) or d < 1 for d in self.distances):
            raise SkipConfigError(f"distances: each must be an integer >= 1, got {self.distances}")
        if len(set(self.distances)) != len(self.distances):
            raise SkipConfigError(f"distances: repeated values in {self.distances}")
        if max(self.distances) > num_layers - 1:
            raise SkipConfigError(
                f"distances: {max(self.distances)} is larger than the model allows "
                f"({num_layers} layers, so at most {num_layers - 1})"
            )
        if not 0 <= self.skip_start < num_layers:
            raise SkipConfigError(f"skip_start: must be in [0, {num_layers - 1}], got {self.skip_start}")
        if not self.skip_layers(num_layers):
            raise SkipConfigError("skip_start/distances: no block has a history state that far back")
        if not 0.0 <= self.alpha <= 1.0:
            raise SkipConfigError(f"alpha: must be in [0, 1], got {self.alpha}")
        if self.gates and not 0.0 < self.alpha < 1.0:
            raise SkipConfigError(f"alpha: gated models need 0 < alpha < 1 (gates start at logit(alpha)), got {self.alpha}")
        if self.blend not in BLENDS:
            raise SkipConfigError(f"blend: must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if self.dial < 0:
            raise SkipConfigError(f"dial: must be >= 0, got {self.dial}")
        if self.sparsity not in SPARSITY:
            raise SkipConfigError(f"sparsity: must be l1, entropy or none, got {self.sparsity!r}")
        if self.sparsity_weight < 0:
            raise SkipConfigError(f"sparsity_weight: must be >= 0, got {self.sparsity_weight}")
        return self

    def taps(self, layer: int) -> list[int]:
        """Distances whose history state exists at block ``layer``."""
        if layer < self.skip_start:
            return []
        return [d for d in self.distances if layer - d >= 0]

    def skip_layers(self, num_layers: int) -> list[int]:
        return [l for l in range(num_layers) if self.taps(l)]


def split_heads(x: mx.array, n_heads: int) -> mx.array:
    """(B, T, n*hd) -> (B, n, T, hd)."""
    b, t, _ = x.shape
    return x.reshape(b, t, n_heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """(B, n, T, hd) -> (B, T, n*hd)."""
    b, n, t, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, n * hd)


def attention_heads(attn, queries: mx.array, keys: mx.array, values: mx.array, mask, cache) -> mx.array:
    """Per-head attention output before the o-projection, (B, H, T, hd), for projected
    ``(B, H|KV, T, hd)`` queries/keys/values of an mlx-lm ``Attention``-like module."""
    offset = cache.offset if cache is not None else 0
    queries = attn.rope(queries, offset=offset)
    keys = attn.rope(keys, offset=offset)
    if cache is not None:
        keys, values = cache.update_and_fetch(keys, values)
    return scaled_dot_product_attention(queries, keys, values, cache=cache, scale=attn.scale, mask=mask)


def base_attention_heads(attn, x: mx.array, mask, cache) -> mx.array:
    """The frozen block's own attention heads, the same ops as mlx-lm's ``Attention.__call__``."""
    q = split_heads(attn.q_proj(x), attn.n_heads)
    k = split_heads(attn.k_proj(x), attn.n_kv_heads)
    v = split_heads(attn.v_proj(x), attn.n_kv_heads)
    return attention_heads(attn, q, k, v, mask, cache)


def block_with_heads(layer, x: mx.array, mask, cache) -> tuple[mx.array, mx.array]:
    """A frozen mlx-lm ``TransformerBlock`` step that also returns its attention heads
    (B, H, T, hd) before the o-projection; the same ops as ``TransformerBlock.__call__``."""
    attn = layer.self_attn
    heads = base_attention_heads(attn, layer.input_layernorm(x), mask, cache)
    h = x + attn.o_proj(merge_heads(heads))
    return h + layer.mlp(layer.post_attention_layernorm(h)), heads


class SkipAttention(nn.Module):
    """Queries from the block's input, keys/values from a history state (GQA, RoPE, causal)."""

    def __init__(self, base_attn, *, zero_output: bool):
        super().__init__()
        self.n_heads, self.n_kv_heads = base_attn.n_heads, base_attn.n_kv_heads
        self.scale = base_attn.scale
        self.rope = base_attn.rope  # no parameters: shared positions and frequencies
        self.q_proj = _copy_linear(base_attn.q_proj)
        self.k_proj = _copy_linear(base_attn.k_proj)
        self.v_proj = _copy_linear(base_attn.v_proj)
        self.o_proj = _copy_linear(base_attn.o_proj, zero=zero_output)


def _copy_linear(src: nn.Linear, zero: bool = False) -> nn.Linear:
    out_dims, in_dims = src.weight.shape
    layer = nn.Linear(in_dims, out_dims, bias="bias" in src)
    layer.weight = mx.zeros_like(src.weight) if zero else mx.array(src.weight)
    if "bias" in src:
        layer.bias = mx.zeros_like(src.bias) if zero else mx.array(src.bias)
    return layer


class SkipBlock(nn.Module):
    """Everything trainable at one block: the skip attention, tap logits, gate logits."""

    def __init__(self, base_attn, taps: list[int], cfg: SkipConfig):
        super().__init__()
        self._taps = list(taps)  # '_' keeps it out of parameters()
        self.attn = SkipAttention(base_attn, zero_output=cfg.blend == "additive")
        if len(cfg.distances) > 1:
            # One logit per configured distance; unavailable ones are masked at use.
            self.tap_logits = mx.zeros((len(cfg.distances),))
        if cfg.gates:
            self.gate_logits = mx.full((base_attn.n_heads,), math.log(cfg.alpha / (1 - cfg.alpha)))

    def tap_weights(self, distances: list[int]) -> mx.array:
        """softmax over the available taps, as a vector over ``self._taps``."""
        if "tap_logits" not in self:
            return mx.ones((1,))
        idx = mx.array([distances.index(d) for d in self._taps])
        return mx.softmax(self.tap_logits[idx], axis=-1)

    def alphas(self, cfg: SkipConfig, dial: float) -> mx.array:
        """Per-head alphas (H,) with gates, else the scalar alpha (shape ())."""
        if "gate_logits" in self:
            return mx.sigmoid(self.gate_logits) * dial
        return mx.array(cfg.alpha)


def _key(layer: int) -> str:
    # Not a bare number: mlx's tree_unflatten would turn "blocks.3" into a list index.
    return f"l{layer}"


class SkipModel(nn.Module):
    """A frozen mlx-lm llama-family model with skip attention, multi-tap kernels and gates.

    ``__call__(inputs, mask=None, cache=None)`` returns logits like the base model; caches
    come from :meth:`make_cache` (the base KV caches, then one per skip tap).
    """

    def __init__(self, base, cfg: SkipConfig):
        super().__init__()
        layers = base.model.layers
        cfg.validate(len(layers))
        self.cfg = cfg
        self.dial = cfg.dial
        self.base = base
        self.base.freeze()
        self._skip_layers = cfg.skip_layers(len(layers))
        self.blocks = {_key(l): SkipBlock(layers[l].self_attn, cfg.taps(l), cfg) for l in self._skip_layers}
        self.gradient_checkpointing = False

    @classmethod
    def from_base(cls, base, cfg: SkipConfig | dict) -> "SkipModel":
        return cls(base, cfg if isinstance(cfg, SkipConfig) else SkipConfig.from_dict(cfg))

    @property
    def skip_layers(self) -> list[int]:
        return self._skip_layers

    @property
    def layers(self):
        return self.base.model.layers

    @property
    def args(self):
        return self.base.args

    # ------------------------------------------------------------------ caches
    def make_cache(self) -> list:
        base = make_prompt_cache(self.base)
        return base + [KVCache() for l in self.skip_layers for _ in self.cfg.taps(l)]

    def _skip_caches(self, cache) -> dict[int, list]:
        if cache is None:
            return {l: [None] * len(self.cfg.taps(l)) for l in self._skip_layers}
        rest = iter(cache[len(self.layers):])
        return {l: [next(rest) for _ in self.cfg.taps(l)] for l in self._skip_layers}

    # ------------------------------------------------------------------ forward
    def skip_attention_output(
        self, l: int, x: mx.array, hist: list[mx.array], mask, cache, skip_cache, heads: dict | None = None
    ) -> mx.array:
        """The blended attention output ``a'`` of block ``l`` (before the residual add).

        ``heads[l]`` receives the block's own attention heads (before blending), if given.
        """
        layer = self.layers[l]
        block = self.blocks[_key(l)]
        base_attn, skip = layer.self_attn, block.attn
        norm = layer.input_layernorm(x)
        base_heads = base_attention_heads(base_attn, norm, mask, cache)
        if heads is not None:
            heads[l] = base_heads
        q = split_heads(skip.q_proj(norm), skip.n_heads)
        weights = block.tap_weights(self.cfg.distances)
        skip_heads = None
        for t, (h_old, c) in enumerate(zip(hist, skip_cache)):
            kv_in = layer.input_layernorm(h_old)
            k = split_heads(skip.k_proj(kv_in), skip.n_kv_heads)
            v = split_heads(skip.v_proj(kv_in), skip.n_kv_heads)
            out = attention_heads(skip, q, k, v, mask, c) * weights[t]
            skip_heads = out if skip_heads is None else skip_heads + out
        alpha = block.alphas(self.cfg, self.dial)
        if alpha.ndim:  # per-head gates: broadcast over (B, H, T, hd)
            alpha = alpha[None, :, None, None]
        if self.cfg.blend == "convex":
            base_heads = base_heads * (1 - alpha)
        return base_attn.o_proj(merge_heads(base_heads)) + skip.o_proj(merge_heads(skip_heads * alpha))

    def _block(self, l: int, x: mx.array, hist: list[mx.array], mask, cache, skip_cache, heads=None) -> mx.array:
        layer = self.layers[l]
        h = x + self.skip_attention_output(l, x, hist, mask, cache, skip_cache, heads)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def hidden_states(self, inputs: mx.array, mask=None, cache=None, after_block=None,
                      heads: dict | None = None) -> list[mx.array]:
        """``[h[0], ..., h[L]]`` (before the final norm).

        ``after_block(l, h)`` may replace block ``l``'s output (doses perturb it there); the
        replaced state is what later blocks and skip taps see. ``heads``, if given, receives
        every block's own attention heads ``{l: (B, H, T, hd)}`` before the o-projection.
        """
        h = self.base.model.embed_tokens(inputs)
        base_caches = cache[: len(self.layers)] if cache is not None else [None] * len(self.layers)
        if mask is None:
            mask = create_attention_mask(h, base_caches[0])
        skip_caches = self._skip_caches(cache)
        states = [h]
        for l, layer in enumerate(self.layers):
            if _key(l) not in self.blocks:
                if heads is None:
                    h = layer(h, mask, cache=base_caches[l])
                else:
                    h, heads[l] = block_with_heads(layer, h, mask, base_caches[l])
            else:
                hist = [states[l - d] for d in self.cfg.taps(l)]
                if self.gradient_checkpointing and cache is None and heads is None:
                    fn = nn.utils.checkpoint(self.blocks[_key(l)], lambda x, *hs, l=l: self._block(l, x, list(hs), mask, None, skip_caches[l]))
                    h = fn(h, *hist)
                else:
                    h = self._block(l, h, hist, mask, base_caches[l], skip_caches[l], heads)
            if after_block is not None:
                h = after_block(l, h)
            states.append(h)
        return states

    def logits(self, h_last: mx.array) -> mx.array:
        out = self.base.model.norm(h_last)
        if self.base.args.tie_word_embeddings:
            return self.base.model.embed_tokens.as_linear(out)
        return self.base.lm_head(out)

    def __call__(self, inputs: mx.array, mask=None, cache=None) -> mx.array:
        return self.logits(self.hidden_states(inputs, mask, cache)[-1])

    # ------------------------------------------------------------------ introspection
    def tap_weights(self) -> dict[int, dict[int, float]]:
        """{layer: {distance: weight}} over the available taps of every skip block."""
        out = {}
        for l in self.skip_layers:
            block = self.blocks[_key(l)]
            w = block.tap_weights(self.cfg.distances).tolist()
            out[l] = dict(zip(block._taps, w))
        return out

    def gate_alphas(self) -> dict[int, list[float]]:
        """{layer: per-head alpha at the current dial} (empty without gates)."""
        if not self.cfg.gates:
            return {}
        return {l: self.blocks[_key(l)].alphas(self.cfg, self.dial).tolist() for l in self._skip_layers}

    def sparsity_penalty(self) -> mx.array:
        """Mean over multi-tap blocks of the tap-weight penalty (0 when off or single-tap).

        ``entropy``: Shannon entropy of the tap weights (0 for a single active tap).
        ``l1``: the L1 norm of the element-wise square roots, minus one. Plain L1 of softmax
        weights is always 1, so the square root (an L1/2 quasi-norm) is what rewards
        putting the mass on few taps; it is 0 for one active tap.
        """
        terms = []
        for l in self.skip_layers:
            block = self.blocks[_key(l)]
            if "tap_logits" not in block or len(block._taps) < 2 or self.cfg.sparsity is None:
                continue
            w = block.tap_weights(self.cfg.distances)
            if self.cfg.sparsity == "entropy":
                terms.append(-(w * mx.log(w + 1e-12)).sum())
            else:
                terms.append(mx.sqrt(w + 1e-12).sum() ** 2 - 1)
        return mx.stack(terms).mean() if terms else mx.array(0.0)

    def num_trainable(self) -> int:
        return sum(v.size for _, v in tree_flatten(self.trainable_parameters()))

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Only the trainable skip parameters, as safetensors, plus the config as JSON."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = dict(tree_flatten(self.trainable_parameters()))
        mx.save_safetensors(str(folder / WEIGHTS_FILE), weights)
        (folder / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2))

    @classmethod
    def load(cls, base, folder: str | Path) -> "SkipModel":
        folder = Path(folder)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} has no {name}: not a saved skip model")
        model = cls(base, SkipConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text())))
        model.load_weights(str(folder / WEIGHTS_FILE), strict=False)
        model.base.freeze()
        return model

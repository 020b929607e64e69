"""Psychedelic skip-layer attention around a frozen mlx-lm model (llama, qwen2 or qwen3).

Notation (0-based, as in ``model.model.layers``): ``h[0]`` are the token embeddings and block
``l`` (0..L-1) maps ``h[l]`` to ``h[l+1]``, computing ``a = attn_l(norm_l(h[l]))`` and then its
MLP. (In 1-based block numbering, block ``i`` is ``l + 1`` here and its ``h_{i-1-d}`` is our
``h[l-d]``.)

**Skip attention** at block ``l`` exists when ``l >= skip_start`` and ``l - d >= 0`` for some tap
distance ``d``. It is a second attention module with its own q (D->D), k, v (D->kv_dim) and
o (D->D) projections in the base's GQA head layout, RoPE at the same positions and a causal
mask. Queries come from ``norm_l(h[l])`` (the block's own attention input); keys and values
from the history state ``norm_l(h[l-d])``, normalised with the same RMSNorm. For
SmolLM2-135M with ``skip_start=3, distances=(3,)`` that is 27 modules and 23.9M parameters.

The skip attention follows the base block's family: qwen2's q/k/v biases are copied with the
projections (and trained with them); qwen3's per-head ``q_norm``/``k_norm`` are copied as
trainable norms of the skip module, so a convex skip module starts as the block's own attention
function; at llama's sliding-window layers the skip attention sees the same window (its KV
caches are rotating caches of the same size).

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

**Per-row ablation masks** (:class:`SkipMasks`, set with :meth:`SkipModel.ablated`): each row of
a batch may turn off whole skip blocks, single taps or single heads' gates. Off means the
component's blend weight is zero: a block's ``alpha`` (so under the convex blend the base heads
get their full weight back), a tap's softmax weight (the others are not renormalised), a head's
``alpha_h``. A row with every mask at one computes exactly what the unmasked model computes;
a row with every block off computes the frozen base block exactly, under either blend.

Only the skip parameters are trainable: the base model is frozen.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

from psilonet.model import forward
from psilonet.model.loading import ModelError

from psilonet import config
from psilonet.config import ConfigError, option

BLENDS = ("convex", "additive")
SPARSITY = (None, "l1", "entropy")
WEIGHTS_FILE = "skip_weights.safetensors"
CONFIG_FILE = "skip_config.json"


class SkipConfigError(ConfigError):
    """A skip configuration that cannot be built; the message names the option."""


@dataclass
class SkipConfig(config.Declared):
    """Hyper-parameters of the skip adapter (all JSON-serialisable)."""

    error = SkipConfigError  # what from_dict and check_fields raise

    distances: list[int] = option(default_factory=lambda: [3], min=1,
                                  help="skip distance(s); several = multi-tap")
    skip_start: int = option(3, min=0, help="first block that gets a skip")
    alpha: float = option(0.65, min=0.0, max=1.0, help="initial blend weight of the skip path")
    blend: str = option("convex", choices=BLENDS, help="how the skip path mixes into the block input")
    gates: bool = option(False, help="per-head adaptive gates")
    dial: float = option(1.0, min=0.0, help="scales the gated skip contribution at inference")
    sparsity: str | None = option(None, choices=SPARSITY, help="sparsity penalty on the tap weights")
    sparsity_weight: float = option(0.0, min=0.0, help="weight of the sparsity penalty")

    def validate(self, num_layers: int) -> "SkipConfig":
        """Raise :class:`SkipConfigError` naming the first bad option."""
        self.check_fields()
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


class SkipAttention(nn.Module):
    """Queries from the block's input, keys/values from a history state, in the base block's
    attention layout (GQA, RoPE, the family's q/k norms and biases)."""

    def __init__(self, base_attn, *, zero_output: bool):
        super().__init__()
        self.n_heads, self.n_kv_heads = base_attn.n_heads, base_attn.n_kv_heads
        self.scale = base_attn.scale
        self.rope = base_attn.rope  # no parameters: shared positions and frequencies
        self.q_proj = _copy_linear(base_attn.q_proj)
        self.k_proj = _copy_linear(base_attn.k_proj)
        self.v_proj = _copy_linear(base_attn.v_proj)
        self.o_proj = _copy_linear(base_attn.o_proj, zero=zero_output)
        for name in ("q_norm", "k_norm"):  # qwen3
            if name in base_attn:
                setattr(self, name, _copy_norm(base_attn[name]))


def _copy_linear(src: nn.Linear, zero: bool = False) -> nn.Linear:
    out_dims, in_dims = src.weight.shape
    layer = nn.Linear(in_dims, out_dims, bias="bias" in src)
    layer.weight = mx.zeros_like(src.weight) if zero else mx.array(src.weight)
    if "bias" in src:
        layer.bias = mx.zeros_like(src.bias) if zero else mx.array(src.bias)
    return layer


def _copy_norm(src: nn.RMSNorm) -> nn.RMSNorm:
    norm = nn.RMSNorm(src.weight.shape[0], eps=src.eps)
    norm.weight = mx.array(src.weight)
    return norm


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


@dataclass
class SkipMasks:
    """Per-row on (1) / off (0) factors of a batch of ``B`` rows, per skip layer ``l``:
    ``block[l]`` (B,), ``taps[l]`` (B, available taps of ``l``), ``heads[l]`` (B, H).
    Layers left out of a dict are on in every row."""

    block: dict[int, mx.array]
    taps: dict[int, mx.array]
    heads: dict[int, mx.array]


def _cache_like(cache):
    if isinstance(cache, RotatingKVCache):
        return RotatingKVCache(max_size=cache.max_size, keep=cache.keep)
    return KVCache()


def _key(layer: int) -> str:
    # Not a bare number: mlx's tree_unflatten would turn "blocks.3" into a list index.
    return f"l{layer}"


class SkipModel(nn.Module):
    """A frozen mlx-lm model (a family of :data:`psilonet.model.forward.FAMILIES`) with skip
    attention, multi-tap kernels and gates.

    ``__call__(inputs, cache=None)`` returns logits like the base model; caches come from
    :meth:`make_cache` (the base KV caches, then one per skip tap). The layer loop is
    :func:`psilonet.model.forward.hidden_states`, which calls :meth:`block` at skip layers.
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
        self._masks: SkipMasks | None = None
        self._record: dict[int, mx.array] | None = None

    @contextmanager
    def ablated(self, masks: SkipMasks):
        """Run every forward inside the block with ``masks`` applied row by row."""
        previous, self._masks = self._masks, masks
        try:
            yield self
        finally:
            self._masks = previous

    @contextmanager
    def recording(self, out: dict[int, mx.array]):
        """Inside the block, every forward puts each skip block's output (its part of the blended
        attention output, (B, T, D) after its o-projection) into ``out[l]``."""
        previous, self._record = self._record, out
        try:
            yield self
        finally:
            self._record = previous

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
        """The base model's caches, then one per skip tap of the same kind as its layer's
        (a rotating cache at sliding-window layers), so that both see the same mask."""
        base = make_prompt_cache(self.base)
        return base + [_cache_like(base[l]) for l in self.skip_layers for _ in self.cfg.taps(l)]

    def skip_caches(self, cache) -> dict[int, list]:
        """{skip layer: its taps' caches (None without a cache)}."""
        if cache is None:
            return {l: [None] * len(self.cfg.taps(l)) for l in self._skip_layers}
        rest = iter(cache[len(self.layers):])
        return {l: [next(rest) for _ in self.cfg.taps(l)] for l in self._skip_layers}

    # ------------------------------------------------------------------ forward
    def block(self, l: int, h: mx.array, states: list[mx.array], mask, cache, skip_cache,
              hooks: forward.Hooks = forward.NO_HOOKS) -> mx.array:
        """Skip block ``l`` in :func:`psilonet.model.forward.hidden_states`: the base block with its
        attention output blended with the skip attention over ``states[l - d]``."""
        hist = [states[l - d] for d in self.cfg.taps(l)]

        def run(x, *hist):
            blend = lambda norm, heads: self.attention_output(l, norm, heads, hist, mask, skip_cache)
            return forward.block(self.layers[l], l, x, mask, cache, hooks, blend)

        if self.gradient_checkpointing and cache is None and hooks.empty:
            run = nn.utils.checkpoint(self.blocks[_key(l)], run)
        return run(h, *hist)

    def attention_output(self, l: int, norm: mx.array, base_heads: mx.array, hist, mask, skip_cache) -> mx.array:
        """The blended attention output ``a'`` of block ``l`` (before the residual add), from
        the block's normalised input ``norm`` and its own heads ``base_heads`` (B, H, T, hd)."""
        layer = self.layers[l]
        block = self.blocks[_key(l)]
        skip = block.attn
        q = forward.queries(skip, norm)
        weights = block.tap_weights(self.cfg.distances)
        masks = self._masks
        skip_heads = None
        for t, (h_old, c) in enumerate(zip(hist, skip_cache)):
            k, v = forward.keys_values(skip, layer.input_layernorm(h_old))
            w = weights[t]
            if masks is not None and l in masks.taps:
                w = (w * masks.taps[l][:, t])[:, None, None, None]
            out = forward.attend(skip, q, k, v, mask, c) * w
            skip_heads = out if skip_heads is None else skip_heads + out
        alpha = block.alphas(self.cfg, self.dial)
        if alpha.ndim:  # per-head gates: broadcast over (B, H, T, hd)
            alpha = alpha[None, :, None, None]
        if masks is not None:
            alpha = self._masked_alpha(l, alpha, masks)
        if self.cfg.blend == "convex":
            base_heads = base_heads * (1 - alpha)
        merge = forward.merge_heads
        skip_out = skip.o_proj(merge(skip_heads * alpha))
        if masks is not None and l in masks.block:  # an o-projection bias must go too
            skip_out = skip_out * masks.block[l][:, None, None]
        if self._record is not None:
            self._record[l] = skip_out
        return layer.self_attn.o_proj(merge(base_heads)) + skip_out

    @staticmethod
    def _masked_alpha(l: int, alpha: mx.array, masks: SkipMasks) -> mx.array:
        """``alpha`` times the rows' head and block factors, as (B, H or 1, 1, 1)."""
        factor = None
        if l in masks.heads:
            factor = masks.heads[l]
        if l in masks.block:
            b = masks.block[l][:, None]
            factor = b if factor is None else factor * b
        if factor is None:
            return alpha
        return alpha * factor[:, :, None, None]

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        return forward.forward(self, inputs, cache)[0]

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
        model.load_skip_weights(folder / WEIGHTS_FILE)
        return model

    def load_skip_weights(self, path: str | Path) -> None:
        """Load exactly this model's skip parameters from ``path``: a missing, unexpected or
        misshapen tensor raises :class:`~psilonet.model.loading.ModelError` naming the file."""
        weights = mx.load(str(path))
        expected = dict(tree_flatten(self.trainable_parameters()))
        problems = [f"missing {k}" for k in sorted(set(expected) - set(weights))]
        problems += [f"unexpected {k}" for k in sorted(set(weights) - set(expected))]
        problems += [f"{k} has shape {weights[k].shape}, expected {v.shape}"
                     for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
        if problems:
            shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            raise ModelError(f"{path} does not match this skip configuration: {shown}")
        self.load_weights(list(weights.items()), strict=False)  # strict would demand the base's weights too

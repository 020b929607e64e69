"""A decode step compiled once over a fixed-size KV cache written in place.

The plain loop rebuilds the graph of every layer for every token (~20 small ops per layer), and
on this CPU that overhead is a large part of each step. Here the one-token step (all layers, the
doses, both entropies and the greedy choice) is traced once with ``mx.compile`` and replayed:
its inputs are the new tokens, the KV buffers, the write position and the rows' state, so the
same compiled graph serves every token of every generation with the same batch and capacity.

**Fixed cache.** :class:`FixedKVCache` holds ``(B, kv_heads, capacity, head_dim)`` buffers and
writes new keys/values at ``offset`` (an array, so the position is an input of the compiled
graph, not a constant baked into it). Attention runs over the first ``span`` slots, a multiple of
``SPAN_STEP`` that covers every written position, with a boolean mask that hides the slots not
written yet: each span is its own compiled graph (traced once per process), so attention costs
what the text written so far needs, not what the whole capacity would (``bench.decode_spans``
measures the saving; the README's dosed-generation section has the dated figures). It speaks
mlx-lm's cache protocol (``offset``,
``update_and_fetch``, ``make_mask``), so the step is the hooked forward
:func:`psilonet.model.forward.hidden_states` itself (llama, qwen2 and qwen3 blocks alike).

**Per-row state.** ``rows`` is a dict of arrays whose first axis is the batch row, passed into and
returned from every step: the dose's constants and per-step noise keys live there, and an
intervention that keeps state from token to token (for example a per-row pool that depletes)
adds its own entries and returns their new values from its hook (see :class:`RowHook`).

**Prefill.** When no row is perturbed, the prompt is run once for one row and its cache and last
logits are broadcast to every row of the batch. Otherwise, on q4/q8 weights with the extension
active (its kernels give each row of a product the rounding it has alone), all rows' prompts run
as one batch; else each row's prompt runs on its own, so a row's numbers never depend on the
rows beside it: with OpenBLAS or MKL a float32 product's rounding depends on its row count (the
steps after it all run the whole batch).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx

from psilonet.generation.entropy import step_entropies
from psilonet.kernels import qmm
from psilonet.model import forward
from psilonet.model.skip import SkipModel

CAPACITY_STEP = 256  # buffers are sized in these steps so that generations reuse compiled graphs
SPAN_STEP = 64  # attention spans grow in these steps (one compiled graph per span)


class FixedKVCache:
    """A KV cache of fixed capacity for one layer; ``offset`` is a scalar int32 array.

    With ``fast_attention`` the hooked forward attends over it with the extension's
    :func:`psilonet.kernels.qmm.span_attention` (the same mask, one primitive per block)."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array, span: int | None = None,
                 fast_attention: bool = False):
        self.keys, self.values, self.offset = keys, values, offset
        self.span = span or keys.shape[2]  # attention reads slots [0, span): a static size
        self.fast_attention = fast_attention

    def attention(self, q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array | None:
        """Attention of ``q`` over this step's ``k``, ``v`` (from :meth:`update_and_fetch`) under
        :meth:`make_mask`'s mask, by the extension; None where it does not run it."""
        return qmm.span_attention(q, k, v, self.offset, scale) if self.fast_attention else None

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start = self.offset.reshape(1)
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        if self.span == self.keys.shape[2]:
            return self.keys, self.values
        return self.keys[:, :, : self.span], self.values[:, :, : self.span]

    def make_mask(self, n: int, return_array: bool = False, window_size=None):
        # Query i (absolute position offset + i) sees every written slot j <= offset + i.
        if window_size is not None:
            raise ValueError("sliding-window attention is not supported by the fixed cache")
        rows = self.offset + mx.arange(n, dtype=mx.int32)[:, None]
        return mx.arange(self.span, dtype=mx.int32)[None, :] <= rows


@dataclass
class RowHook:
    """A per-row intervention applied to block outputs inside the compiled step.

    ``after_block(layer, h, rows) -> (h, rows)`` may read any entry of ``rows`` and return
    replaced entries (state carried to the next step). ``step_inputs(step) -> dict`` gives
    arrays that change every step (keys of random draws), merged into ``rows`` before the step.
    ``key`` names the hook for the cache of compiled graphs (same key, same traced function).
    """

    key: tuple
    rows: dict[str, mx.array]
    after_block: Callable[[int, mx.array, dict], tuple[mx.array, dict]]
    step_inputs: Callable[[int], dict[str, mx.array]]


def supports(model) -> bool:
    """The compiled step drives plain mlx-lm decoder models (a skip model keeps the plain loop)."""
    if isinstance(model, SkipModel):
        return False
    args = getattr(model, "args", None)
    if args is None or not hasattr(getattr(model, "model", None), "layers"):
        return False
    return set(getattr(args, "layer_types", None) or ["full_attention"]) == {"full_attention"}


def rows_round_alone(model) -> bool:
    """Whether every row of the model's weight products rounds as it would alone: true of the
    extension's quantized kernels (q4/q8 weights), not of BLAS's float32 products."""
    return getattr(model, "psilonet_weights", "f32") != "f32" and qmm.active()


def capacity_for(tokens: int) -> int:
    return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP


def _kv_shape(model, batch: int, capacity: int):
    args = model.args
    heads = args.num_key_value_heads or args.num_attention_heads
    head_dim = getattr(args, "head_dim", None) or args.hidden_size // args.num_attention_heads
    return (batch, heads, capacity, head_dim)


def span_for(position: int, capacity: int, step: int = SPAN_STEP) -> int:
    """The attention span of a step that writes slot ``position``: the next multiple of ``step``."""
    return min(capacity, (position // step + 1) * step)


def _run(model, tokens, kv, offset, rows, hook: RowHook | None, track: bool, greedy: bool,
         span: int | None = None):
    """One forward over ``tokens`` (B, T) from ``offset``: the traced body of every step."""
    fast = rows_round_alone(model)  # q4/q8 through the extension: its attention too
    caches = [FixedKVCache(k, v, offset, span, fast_attention=fast) for k, v in kv]
    rows = dict(rows)

    def after(l, h):
        nonlocal rows
        h, new = hook.after_block(l, h, rows)
        rows.update(new)
        return h

    hooks = forward.Hooks(after_block=after) if hook else forward.NO_HOOKS
    states = forward.hidden_states(model, tokens, cache=caches, hooks=hooks)
    logits = forward.logits_from(model, states[-1][:, -1:, :])[:, 0, :]
    out = {"logits": logits}
    if greedy:
        out["tokens"] = mx.argmax(logits, axis=-1)
    if track:
        out.update(step_entropies(logits, states))
    new_kv = [(c.keys, c.values) for c in caches]
    return out, new_kv, offset + tokens.shape[1], rows


_COMPILED: dict[tuple, tuple[weakref.ref, Callable]] = {}


def _compiled_step(model, hook: RowHook | None, track: bool, greedy: bool, span: int) -> Callable:
    key = (id(model), hook.key if hook else None, track, greedy, span)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0]() is model:
        return hit[1]

    def step(tokens, kv, offset, rows):
        return _run(model, tokens, kv, offset, rows, hook, track, greedy, span)

    fn = mx.compile(step)
    _COMPILED[key] = (weakref.ref(model), fn)
    return fn


class Decoder:
    """Prefill a prompt for ``batch`` rows, then advance one token per :meth:`step`.

    ``span_step`` sets how attention spans grow (``capacity`` attends over the whole buffer every
    step, as before spans existed: ``bench.decode_spans`` compares the two).
    """

    def __init__(self, model, batch: int, capacity: int, *, hook: RowHook | None = None,
                 track: bool = False, greedy: bool = True, compiled: bool = True, span_step: int = SPAN_STEP):
        self.model, self.batch, self.hook, self.track, self.greedy = model, batch, hook, track, greedy
        self.capacity, self.span_step = capacity, span_step
        self.rows = dict(hook.rows) if hook else {}
        self.index = 0
        self.compiled = compiled
        self.kv = None
        self.offset = mx.array(0, dtype=mx.int32)
        self.position = 0  # the same as offset, known without a sync

    def _inputs(self) -> dict:
        rows = dict(self.rows)
        if self.hook is not None:
            rows.update(self.hook.step_inputs(self.index))
        return rows

    def prefill(self, prompt_ids) -> dict:
        """Run the prompt (once for all rows when no hook perturbs them; else as one batch where
        :func:`rows_round_alone`, row by row otherwise); lazy outputs."""
        if len(prompt_ids) > self.capacity:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the KV cache holds {self.capacity}")
        dtype = self.model.model.norm.weight.dtype  # the float dtype (embeddings may be packed)
        span = span_for(len(prompt_ids) - 1, self.capacity, self.span_step)
        inputs = self._inputs()
        # Rows per prompt run: a row's prompt must run through the shapes it would have alone
        # unless the products round each row alone (see the module docstring).
        together = 1 if self.hook is None else self.batch if rows_round_alone(self.model) else 1
        shape = _kv_shape(self.model, together, self.capacity)
        tokens = mx.array([list(prompt_ids)] * together, dtype=mx.int32)
        parts = []
        for r in range(0, 1 if self.hook is None else self.batch, together):
            kv = [(mx.zeros(shape, dtype=dtype), mx.zeros(shape, dtype=dtype)) for _ in self.model.model.layers]
            row_inputs = {k: v[r : r + together] for k, v in inputs.items()}
            parts.append(_run(self.model, tokens, kv, self.offset, row_inputs, self.hook, self.track, self.greedy, span))
        if len(parts) == 1:
            out, kv, self.offset, self.rows = parts[0]
            if self.hook is None and self.batch > 1:  # every row's prompt is the same, run once
                kv = [tuple(mx.repeat(a, self.batch, axis=0) for a in pair) for pair in kv]
                out = {k: mx.repeat(v, self.batch, axis=0) for k, v in out.items()}
        else:
            out = {k: mx.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
            kv = [tuple(mx.concatenate([p[1][layer][i] for p in parts]) for i in (0, 1)) for layer in range(len(parts[0][1]))]
            self.offset = parts[0][2]
            self.rows = {k: mx.concatenate([p[3][k] for p in parts]) for k in parts[0][3]}
        self.kv = kv
        self.index += 1
        self.position = len(prompt_ids)
        return out

    def step(self, tokens: mx.array) -> dict:
        """Advance every row by its token ``tokens`` (B,); returns lazy outputs of this step."""
        if self.position >= self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions; all are used")
        span = span_for(self.position, self.capacity, self.span_step)
        if self.compiled:
            step = _compiled_step(self.model, self.hook, self.track, self.greedy, span)
        else:
            step = lambda t, kv, o, r: _run(self.model, t, kv, o, r, self.hook, self.track, self.greedy, span)
        out, self.kv, self.offset, self.rows = step(tokens[:, None], self.kv, self.offset, self._inputs())
        self.index += 1
        self.position += 1
        return out

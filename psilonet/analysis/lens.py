"""The logit lens: what each layer's residual state would predict if the model stopped there.

For a batch of rows read teacher-forced through the one hooked forward
(:func:`psilonet.model.forward.hidden_states`), every residual state ``h[l]`` (``l = 0`` the
token embeddings, ``l`` in ``1..L`` the output of block ``l - 1``, as the forward's ``states``)
goes through the model's own final norm and unembedding (:func:`~psilonet.model.forward.logits_from`:
the tied embedding matrix or ``lm_head``), giving next-token log-probabilities
``log p_l = log_softmax(unembed(norm(h[l])))``. At ``l = L`` that is the model's own prediction.

Per (row, layer, position) :func:`logit_lens` records, all in **nats**:

* the ``top_k`` tokens and their probabilities under ``p_l``;
* ``p_next`` and ``rank_next`` of the token that actually comes next (by default the next input
  token; the last position has none: NaN and 0). Rank 1 is the top token: the rank is one plus
  the number of tokens with a strictly larger log-probability;
* ``entropy`` ``-sum p_l log p_l``;
* ``kl_final`` ``KL(p_L || p_l) = sum p_L (log p_L - log p_l)``, how far the layer's read-out is
  from the final one (0 at ``l = L``). This is the direction the tuned lens trains on;
* ``kl_sober`` ``KL(p_l[row 0] || p_l[row])``, how far a row's read-out at the same layer and
  position is from row 0's, the sober row of a :func:`side_hooks` batch: the depth where a
  dose's ``kl_sober`` leaves zero is where it takes hold (0 in row 0 itself).

The rows may differ only by their hooks: :func:`side_hooks` builds one batch whose rows are
the sober baseline and dosed or fatigued / Hebbian rows of the same input; a skip model's lens
reads its blended states the same way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from psilonet.generation import bio as bio_mod
from psilonet.generation.perturb import Doser, DoseSpec
from psilonet.model import forward

LENSES = ("logit", "tuned")  # tuned: psilonet.analysis.tuned_lens


@dataclass
class Lens:
    """Arrays over (row, layer 0..L, position); ``top_ids`` and ``top_p`` add the ``k`` axis."""

    top_ids: np.ndarray  # (B, L+1, T, k) int
    top_p: np.ndarray  # (B, L+1, T, k)
    p_next: np.ndarray  # (B, L+1, T), NaN where no next token
    rank_next: np.ndarray  # (B, L+1, T), 1 = top; 0 where no next token
    entropy: np.ndarray  # (B, L+1, T) nats
    kl_final: np.ndarray  # (B, L+1, T) nats
    kl_sober: np.ndarray  # (B, L+1, T) nats, from row 0 at the same layer
    next_tokens: np.ndarray  # (B, T), -1 where none

    @property
    def num_layers(self) -> int:
        return self.entropy.shape[1] - 1


def layer_logprobs(model, state: mx.array) -> mx.array:
    """``log_softmax`` of the final norm and LM head applied to one residual state (B, T, V), float32."""
    logits = forward.logits_from(model, state).astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _next_tokens(inputs: np.ndarray, next_tokens) -> np.ndarray:
    if next_tokens is not None:
        out = np.asarray(next_tokens, dtype=np.int64)
        if out.shape != inputs.shape:
            raise ValueError(f"next_tokens: shape {out.shape}, expected {inputs.shape}")
        return out
    out = np.full(inputs.shape, -1, dtype=np.int64)
    out[:, :-1] = inputs[:, 1:]
    return out


def _log_softmax(logits: mx.array, lp: np.ndarray, p: np.ndarray) -> None:
    """``log p`` and ``p`` of one layer's float32 logits into the buffers ``lp`` and ``p``, in
    numpy: its vectorised ``exp`` is many times MLX's on this CPU, and the lens runs one over the
    whole vocabulary per layer and token. The buffers are reused from layer to layer because
    fresh arrays this size are new pages that the kernel must zero first."""
    np.copyto(lp, np.asarray(logits))
    lp -= lp.max(axis=-1, keepdims=True)
    np.exp(lp, out=p)
    total = p.sum(axis=-1, keepdims=True)
    lp -= np.log(total)
    p /= total


def _dot(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum_v p[..., v] x[..., v]`` (broadcast over the leading axes)."""
    return np.einsum("...v,...v->...", p, x)


def _top_k(lp: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Indices of the ``k`` largest entries of the last axis, largest first (an exact top-k).

    A full sort of 49,152 entries per (layer, token) is most of a naive lens's time; instead
    the ``k`` blocks of ``block`` entries with the largest maxima must hold the top ``k`` (any
    other block's entries are below ``k`` block maxima), so only those are partitioned."""
    shape, vocab = lp.shape[:-1], lp.shape[-1]
    flat = lp.reshape(-1, vocab)
    blocks = vocab // block
    if blocks <= k or vocab % block:  # small vocabularies: one partition of everything
        top = np.argpartition(-flat, k - 1, axis=-1)[:, :k] if k < vocab else np.argsort(-flat, axis=-1)
    else:
        tiles = flat.reshape(len(flat), blocks, block)
        best = np.argpartition(-tiles.max(axis=-1), k - 1, axis=-1)[:, :k]  # (n, k) block numbers
        rows = np.arange(len(flat))[:, None]
        cand = tiles[rows, best].reshape(len(flat), k * block)
        pick = np.argpartition(-cand, k - 1, axis=-1)[:, :k]
        top = best[rows, pick // block] * block + pick % block
    order = np.argsort(-np.take_along_axis(flat, top, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(top, order, axis=-1).reshape(*shape, -1)[..., :k]


def logit_lens(model, inputs, *, hooks: forward.Hooks = forward.NO_HOOKS, next_tokens=None,
               top_k: int = 5, tuned=None) -> Lens:
    """The logit lens of every row of ``inputs`` (B, T) token ids in one hooked forward pass;
    with ``tuned`` (a :class:`psilonet.analysis.tuned_lens.TunedLens`) each state goes through
    its layer's translator first, which makes it the tuned lens.

    MLX computes the states and each layer's logits (the next layer's while numpy reduces the
    current one); numpy does the per-vocabulary statistics (``bench/lens.py`` measures it)."""
    ids = np.asarray(inputs, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    nxt = _next_tokens(ids, next_tokens)
    states = forward.hidden_states(model, mx.array(ids), hooks=hooks)
    return lens_of_states(model, states, nxt, top_k=top_k, tuned=tuned)


def lens_of_states(model, states: list[mx.array], next_tokens: np.ndarray, *, top_k: int = 5, tuned=None) -> Lens:
    """The lens of residual states already computed (``[h[0..L]]``, each (B, T, D), as
    :func:`psilonet.model.forward.hidden_states` returns them): what :func:`logit_lens` does after
    its forward pass. ``next_tokens`` (B, T) holds -1 where there is no next token."""
    nxt = np.asarray(next_tokens, dtype=np.int64)
    last = len(states) - 1

    def logits(l: int) -> mx.array:
        state = states[l] if tuned is None else tuned.translate(l, states[l])
        out = forward.logits_from(model, state).astype(mx.float32)
        mx.async_eval(out)
        return out

    has_next = nxt >= 0
    safe = np.maximum(nxt, 0)[..., None]
    order = [last] + list(range(last))  # the final read-out first: every KL needs it
    fields = {k: [None] * len(states) for k in ("top_ids", "top_p", "p_next", "rank_next", "entropy",
                                                 "kl_final", "kl_sober")}
    pending = logits(order[0])
    lp, p, diff = (np.empty(pending.shape, np.float32) for _ in range(3))
    above = np.empty(pending.shape, bool)
    for i, l in enumerate(order):
        _log_softmax(pending, lp, p)
        if i + 1 < len(order):
            pending = logits(order[i + 1])
        if l == last:
            final_lp, final_p = lp.copy(), p.copy()
        top = _top_k(lp, top_k)
        chosen = np.take_along_axis(lp, safe, axis=-1)  # (B, T, 1)
        fields["top_ids"][l] = top
        fields["top_p"][l] = np.exp(np.take_along_axis(lp, top, axis=-1))
        fields["p_next"][l] = np.where(has_next, np.exp(chosen[..., 0]), np.nan)
        np.greater(lp, chosen, out=above)
        fields["rank_next"][l] = np.where(has_next, np.count_nonzero(above, axis=-1) + 1, 0)
        fields["entropy"][l] = -_dot(p, lp)
        fields["kl_final"][l] = _dot(final_p, np.subtract(final_lp, lp, out=diff))
        fields["kl_sober"][l] = _dot(p[:1], np.subtract(lp[:1], lp, out=diff))
    return Lens(**{k: np.stack(v, axis=1) for k, v in fields.items()}, next_tokens=nxt)


def layer_means(lens: Lens, rows=slice(None)) -> dict[str, np.ndarray]:
    """Per state ``l = 0..L``, over every position of ``rows`` (default all; an int or a slice):
    the mean ``kl_final``, ``kl_sober`` and ``entropy`` (nats), the mean and median ``rank_next``
    over the positions that have a next token (NaN where none has), and ``top1_final``, the share
    of positions whose top-1 token is the last layer's top-1."""
    rows = [rows] if isinstance(rows, (int, np.integer)) else rows
    has = lens.next_tokens[rows] >= 0  # (b, T)
    ranks = lens.rank_next[rows].astype(np.float64)  # (b, L+1, T)
    ranks = np.where(has[:, None, :], ranks, np.nan)
    top = lens.top_ids[rows][..., 0]
    per_layer = ranks.transpose(1, 0, 2).reshape(ranks.shape[1], -1)  # (L+1, b*T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without a next token: NaN, not a warning
        rank_mean, rank_median = np.nanmean(per_layer, axis=1), np.nanmedian(per_layer, axis=1)
    return dict(kl_final=lens.kl_final[rows].mean(axis=(0, 2)), kl_sober=lens.kl_sober[rows].mean(axis=(0, 2)),
                entropy=lens.entropy[rows].mean(axis=(0, 2)), rank_mean=rank_mean, rank_median=rank_median,
                top1_final=(top == top[:, -1:]).mean(axis=(0, 2)))


def side_hooks(model, intensities: list[float], *, fatigue: list[float] | None = None,
               hebbian: list[float] | None = None, seed: int = 0, spec: DoseSpec = DoseSpec()) -> forward.Hooks:
    """Hooks for one batch whose row ``r`` carries dose ``intensities[r]`` (the same seed in every
    row, so rows differ only by intensity) and fatigue / Hebbian strength ``fatigue[r]`` /
    ``hebbian[r]`` (default 0). A row with all of them 0 is the sober baseline."""
    n = len(intensities)
    fatigue = list(fatigue) if fatigue is not None else [0.0] * n
    hebbian = list(hebbian) if hebbian is not None else [0.0] * n
    if not len(fatigue) == len(hebbian) == n:
        raise ValueError("one fatigue and one hebbian strength per row are needed")
    layers = forward.num_layers(model)
    doser = Doser(list(intensities), [seed] * n, layers, model.args.hidden_size, spec).at_step(0)
    bio = bio_mod.Bio(fatigue, hebbian, layers)
    if bio.active:
        bio_mod.check_family(model)
    return bio.hooks(after_block=None if doser.sober else doser)


def records(lens: Lens, decode, row: int = 0, top_k: int | None = None) -> list[dict]:
    """One JSON-ready dict per (layer, position) of ``row``; ``decode(id) -> str`` names tokens."""
    out = []
    k = lens.top_ids.shape[-1] if top_k is None else top_k
    for l in range(lens.num_layers + 1):
        for t in range(lens.entropy.shape[2]):
            ids = lens.top_ids[row, l, t, :k]
            nxt = int(lens.next_tokens[row, t])
            p_next = float(lens.p_next[row, l, t])
            out.append(dict(
                layer=l, position=t, top1=decode(int(ids[0])), p_top1=float(lens.top_p[row, l, t, 0]),
                kl_final=float(lens.kl_final[row, l, t]), kl_sober=float(lens.kl_sober[row, l, t]), entropy=float(lens.entropy[row, l, t]),
                next=decode(nxt) if nxt >= 0 else None, p_next=None if np.isnan(p_next) else p_next,
                rank_next=int(lens.rank_next[row, l, t]) if nxt >= 0 else None,
                top=[[decode(int(i)), float(p)] for i, p in zip(ids, lens.top_p[row, l, t, :k])],
            ))
    return out

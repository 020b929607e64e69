"""Corpus-level lens and attention summaries of a capture, stored beside its activations.

So that the Lens and Attention pages need no model for a stored capture, :func:`run_capture`
(:mod:`psilonet.analysis.capture`) adds, for each side (baseline and trained), from one extra
hooked forward pass over the first ``ceil(lens_positions / seq_len)`` evaluation windows (the
windows are already a seeded sample of the corpus):

* per state ``l = 0..L`` (0 = the embeddings) over every position of those windows: the mean
  KL to the final layer (nats), the mean and median rank of the next token (positions that have
  one), the share of positions whose top-1 token is the final layer's top-1, and the mean
  entropy (nats), all from :func:`psilonet.analysis.lens.lens_of_states`;
* per block, tap (``base`` or a skip distance) and head: the attention summaries of
  :func:`psilonet.analysis.attention.summaries` (entropy, sink share, mean distance),
  averaged over those windows;
* for the first window's first ``grid_positions`` positions: the layer x position grid (each
  position's input token, the lens's top-1 token, its probability, the KL to final, the next
  token's rank) and every block's attention patterns (base and skip taps), which are exact
  because attention is causal: the first ``n`` queries only ever see the first ``n`` keys.

The lens costs one unembedding per (state, position), about ``L + 1`` times the model's own
LM head per token, which is why it reads a sample of positions and not every captured token.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from psilonet.analysis import attention, lens as lens_mod

PATTERNS_FILE = "patterns.parquet"


def tap_name(tap) -> str:
    """How a tap is stored: ``base`` or the skip distance as text."""
    return str(tap)


def summary_windows(n_windows: int, seq_len: int, lens_positions: int) -> int:
    """How many of the first windows hold ``lens_positions`` positions (0: no summaries)."""
    return 0 if lens_positions <= 0 else min(n_windows, math.ceil(lens_positions / seq_len))


def lens_rows(side: str, lens: lens_mod.Lens) -> list[tuple]:
    """(side, layer, positions, kl_final, rank_mean, rank_median, top1_final, entropy) per state."""
    means = lens_mod.layer_means(lens)
    positions = int(lens.entropy[:, 0].size)
    return [(side, l, positions, *(means[k][l] for k in ("kl_final", "rank_mean", "rank_median", "top1_final",
                                                          "entropy")))
            for l in range(lens.num_layers + 1)]


def grid_rows(side: str, lens: lens_mod.Lens, window: np.ndarray, decode, n: int) -> list[tuple]:
    """(side, layer, pos, token_text, top1, p_top1, kl_final, rank_next, entropy) of row 0's first ``n`` positions."""
    rows = []
    for l in range(lens.num_layers + 1):
        for t in range(n):
            rank = int(lens.rank_next[0, l, t]) if lens.next_tokens[0, t] >= 0 else None
            rows.append((side, l, t, decode(int(window[t])), decode(int(lens.top_ids[0, l, t, 0])),
                         float(lens.top_p[0, l, t, 0]), float(lens.kl_final[0, l, t]), rank,
                         float(lens.entropy[0, l, t])))
    return rows


def pattern_records(side: str, pats: dict[int, dict], n: int):
    """(side, point, layer, head, matrix (n, n)) of the first window's first ``n`` positions, for
    the store's Parquet writer; ``point`` is the tap (``base`` or the skip distance)."""
    for layer, taps in pats.items():
        for tap, p in taps.items():
            for head in range(p.shape[1]):
                yield side, tap_name(tap), layer, head, p[0, head, :n, :n]


#: Positions per batch of the summary pass: it holds every block's patterns (B, H, T, T) at once.
BATCH_POSITIONS = 512


def summarise(side: str, model, windows: np.ndarray, decode, *, grid_positions: int) -> dict:
    """Every row the capture stores for one side: ``{"lens", "attention", "grid": rows, "patterns":
    records}`` over ``windows`` (the first summary windows)."""
    seq_len = windows.shape[1]
    batch_size = max(1, BATCH_POSITIONS // seq_len)
    n = min(grid_positions, seq_len)
    lens_parts, grid, records = [], [], []
    sums: dict[tuple, np.ndarray] = {}  # (layer, tap) -> summed (3, H) over windows
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        states, pats = attention.every_pattern(model, batch)
        lens = lens_mod.lens_of_states(model, states, lens_mod._next_tokens(batch, None), top_k=1)
        del states
        lens_parts.append(lens)
        for layer, taps in pats.items():
            for tap, p in taps.items():
                s = attention.summaries(p)
                part = np.stack([s["entropy"], s["sink"], s["distance"]]).sum(axis=1)  # (3, H)
                sums[(layer, tap)] = sums.get((layer, tap), 0) + part
        if start == 0 and n > 0:
            grid = grid_rows(side, lens, batch[0], decode, n)
            records = list(pattern_records(side, pats, n))
        del pats
        mx.clear_cache()
    merged = lens_mod.Lens(**{f: np.concatenate([getattr(p, f) for p in lens_parts], axis=0)
                              for f in lens_mod.Lens.__dataclass_fields__})
    att = [(side, tap_name(tap), layer, head, *(float(v) for v in total[:, head] / len(windows)))
           for (layer, tap), total in sums.items() for head in range(total.shape[1])]
    return {"lens": lens_rows(side, merged), "attention": att, "grid": grid, "patterns": records}

"""Which representation of the hidden states an analysis compares, and the outlier diagnostic.

SmolLM2-135M (like most LLMs: Sun et al. 2024, "Massive Activations in Large Language Models")
writes a huge activation into the first token of every window from block 11 on: its residual
norm is about 25,000 against a median near 140, almost all of it in dimension 507. Linear CKA,
SVCCA and PCA weight tokens by their norm, so on the raw residual stream these few tokens
(1.6% of a capture) decide the result. Three representations are therefore analysed:

``rms`` (the default)
    Each token's state divided by its root-mean-square over the hidden dimension: what the
    next block's RMSNorm reads, up to its elementwise weight. Keeps every token; no threshold.
``raw``
    The residual stream as captured.
``no-sink``
    The raw stream without the *sink tokens*: a token is a sink when, at any layer and on
    either side (baseline or trained), its residual norm exceeds :data:`SINK_RATIO` times that
    layer's median token norm. Sink tokens are dropped at every layer (and from the head
    outputs), so that every comparison, including layer-against-layer ones, uses the same rows.

Head outputs (``hook_z``, before the o-projection) carry no such outlier: the sink tokens'
head-output norms sit at the median and hold 0.1-2% of the variance, and nothing normalises a
head's output on its way into the residual stream. So heads stay as captured under ``rms``
(their results equal ``raw``'s) and lose the sink tokens under ``no-sink``.
"""

from __future__ import annotations

import numpy as np

REPRESENTATIONS = ("rms", "raw", "no-sink")
DEFAULT = "rms"
LABELS = {"rms": "RMS-normalised", "raw": "raw", "no-sink": "no-sink (outlier tokens dropped)"}
# A layer's token counts as an outlier above this multiple of the layer's median token norm. In
# SmolLM2-135M the sink tokens sit 100-180x above the median from block 11 on and 7-15x in the
# last two layers; ordinary tokens stay below 5x except a handful of spaces in layers 3-6 (12x).
SINK_RATIO = 10.0
# Top dimensions of the outlier tokens reported per layer.
TOP_DIMS = 3


class RepresentationError(ValueError):
    """An unknown representation name."""


def check(name: str) -> str:
    if name not in REPRESENTATIONS:
        raise RepresentationError(f"representation: expected one of {', '.join(REPRESENTATIONS)}, got {name!r}")
    return name


def rms_normalise(x: np.ndarray) -> np.ndarray:
    """``x / rms(x)`` along the last axis (float32 out); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True))
    return (x / np.where(rms > 0, rms, 1.0)).astype(np.float32)


def token_norms(resid) -> np.ndarray:
    """``(layers, n)`` Euclidean norms of each token's state at each layer (float64)."""
    return np.stack([np.linalg.norm(np.asarray(x, dtype=np.float64), axis=-1) for x in resid])


def outlier_flags(norms: np.ndarray, ratio: float = SINK_RATIO) -> np.ndarray:
    """``(layers, n)`` True where a token's norm exceeds ``ratio`` x the layer's median norm."""
    return norms > ratio * np.median(norms, axis=1, keepdims=True)


def sink_tokens(*resid_sides, ratio: float = SINK_RATIO) -> np.ndarray:
    """Sorted token indices that are outliers at any layer of any of the given sides."""
    flags = np.zeros(len(resid_sides[0][0]), bool)
    for resid in resid_sides:
        if resid is not None:
            flags |= outlier_flags(token_norms(resid), ratio).any(axis=0)
    return np.flatnonzero(flags)


def norm_stat_rows(side: str, resid, ratio: float = SINK_RATIO):
    """The outlier diagnostic of one captured side, as three lists of store rows.

    * per layer: (side, layer, median, p99, max, threshold, n_over) of the token norms;
    * per outlier token and layer: (side, layer, token_idx, norm, ratio to the median);
    * per layer with outliers: (side, layer, rank, dim, share) for the :data:`TOP_DIMS`
      dimensions holding the largest share of the outlier tokens' squared norm.
    """
    stats, outliers, dims = [], [], []
    for layer, x in enumerate(resid):
        x = np.asarray(x, dtype=np.float64)
        norms = np.linalg.norm(x, axis=1)
        median = float(np.median(norms))
        over = np.flatnonzero(norms > ratio * median)
        stats.append((side, layer, median, float(np.percentile(norms, 99)), float(norms.max()),
                      ratio * median, int(over.size)))
        outliers += [(side, layer, int(t), float(norms[t]), float(norms[t] / median)) for t in over]
        if over.size:
            energy = np.square(x[over]).sum(axis=0)
            for rank, d in enumerate(np.argsort(-energy)[:TOP_DIMS]):
                dims.append((side, layer, rank, int(d), float(energy[d] / energy.sum())))
    return stats, outliers, dims


def transform(name: str, resid, heads, drop: np.ndarray):
    """``(resid list, heads)`` of one side under representation ``name``.

    ``drop``: the sink token indices (used by ``no-sink`` only). ``heads`` may be None.
    """
    check(name)
    if name == "raw":
        return resid, heads
    if name == "rms":
        return [rms_normalise(x) for x in resid], heads
    keep = np.setdiff1d(np.arange(len(resid[0])), drop)
    return [np.asarray(x)[keep] for x in resid], (None if heads is None else heads[:, :, keep])


def outlier_summary(stats, outliers, dims, tokens):
    """One row per side and layer with outliers: the norm distribution, how many tokens exceed
    the threshold, at which window positions, which token strings and the top dimensions.

    Inputs are a capture's ``norm_stats``, ``norm_outliers``, ``outlier_dims`` and
    ``capture_tokens`` frames (see :func:`norm_stat_rows`)."""
    import pandas as pd

    columns = ["side", "layer", "median norm", "p99 norm", "max norm", "tokens over", "positions",
               "tokens", "top dimensions"]
    rows = []
    text = tokens.set_index("token_idx")
    for r in stats[stats.n_over > 0].itertuples():
        mine = outliers[(outliers.side == r.side) & (outliers.layer == r.layer)]
        positions = text.loc[mine.token_idx, "pos"].value_counts().sort_index()
        words = text.loc[mine.token_idx, "token_text"].map(repr).value_counts()
        top = dims[(dims.side == r.side) & (dims.layer == r.layer)].sort_values("rank")
        rows.append((r.side, int(r.layer), r.median, r.p99, r.max,
                     int(r.n_over),
                     ", ".join(f"{p} ({c})" if c > 1 else str(p) for p, c in positions.head(6).items())
                     + (" …" if len(positions) > 6 else ""),
                     ", ".join(f"{w} ×{c}" if c > 1 else w for w, c in words.head(5).items())
                     + (" …" if len(words) > 5 else ""),
                     ", ".join(f"{d.dim} ({d.share:.0%})" for d in top.itertuples())))
    return pd.DataFrame(rows, columns=columns)

"""Which skip component carries a trained adapter's gain: ablations, paired by window.

A **component** is one skip block's whole skip attention, one tap of a multi-tap block, or one
head's gate (gated runs). Turning it off sets its blend weight to zero (see
:class:`psilonet.model.skip.SkipMasks`): ``alpha`` of the block, the tap's softmax weight (the
other taps keep theirs, not renormalised), or ``alpha_h`` of the head. Two reference rows come
with every run: **none off** (the trained model) and **all off** (every block off: the frozen
base model, under the additive and the convex blend alike, since the convex blend's base heads
get weight ``1 - 0`` back).

Every (component, window) pair is one row of a batch: the rows of one forward read the same or
different held-out windows, each with its own masks, so an ablation costs one row, not a pass,
and a row runs only the blocks from its component's on (:func:`ablate`): the blocks below it
compute what the trained model computes, so their states are taken from one pass per window.
Per row we take the mean next-token cross-entropy (nats) of its window; per component the
summary gives the mean over windows of ``loss(component off) - loss(none off)`` on the same
window, its Student-t 95% CI, and the rank (1 = the largest loss increase).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pandas as pd

from psilonet.model import forward
from psilonet.model.skip import SkipMasks, SkipModel
from psilonet.store import tables as T
from psilonet.training.stats import mean_ci

NONE_OFF, ALL_OFF = "none off", "all off"
KINDS = ("block", "tap", "head")


class AblationError(ValueError):
    """An ablation that cannot be run; the message names the option."""


@dataclass(frozen=True)
class Component:
    """``kind`` is ``block``, ``tap``, ``head`` or ``reference``; ``index`` a tap's distance or a
    head's number (None for blocks and references)."""

    kind: str
    layer: int | None = None
    index: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "reference":
            return ALL_OFF if self.layer is None and self.index == 0 else NONE_OFF
        if self.kind == "block":
            return f"block {self.layer}"
        return f"block {self.layer} {'tap d=' if self.kind == 'tap' else 'head '}{self.index}"

    @property
    def distance(self) -> int | None:
        return self.index if self.kind == "tap" else None

    @property
    def head(self) -> int | None:
        return self.index if self.kind == "head" else None


REFERENCES = (Component("reference", None, 1), Component("reference", None, 0))  # none off, all off


def components(model: SkipModel, layers: list[int] | None = None) -> list[Component]:
    """Every ablatable component of ``model`` (at ``layers`` only, if given), references first.

    Taps are listed only for blocks with two or more available taps (with one, the tap is the
    block); heads only for gated runs.
    """
    check_layers(model, layers)
    chosen = [l for l in model.skip_layers if layers is None or l in layers]
    out = list(REFERENCES)
    out += [Component("block", l) for l in chosen]
    out += [Component("tap", l, d) for l in chosen if len(model.cfg.taps(l)) > 1 for d in model.cfg.taps(l)]
    if model.cfg.gates:
        n_heads = model.layers[chosen[0]].self_attn.n_heads if chosen else 0
        out += [Component("head", l, h) for l in chosen for h in range(n_heads)]
    return out


def check_layers(model_or_layers, layers: list[int] | None) -> None:
    """``layers`` must be skip layers of the run (a model, or its list of skip layers)."""
    skip_layers = getattr(model_or_layers, "skip_layers", model_or_layers)
    if layers is None:
        return
    if not layers:
        raise AblationError("layers: give at least one layer")
    bad = [l for l in layers if l not in skip_layers]
    if bad:
        raise AblationError(f"layers: {', '.join(map(str, bad))} not a skip layer of this run "
                            f"(its skip layers are {skip_layers[0]}..{skip_layers[-1]})")


def masks_for(model: SkipModel, rows: list[Component]) -> SkipMasks:
    """The per-row factors that turn off each row's component (none for ``none off``)."""
    n = len(rows)
    block, taps, heads = {}, {}, {}
    for l in model.skip_layers:
        b = np.ones(n, np.float32)
        t = np.ones((n, len(model.cfg.taps(l))), np.float32)
        hd = np.ones((n, model.layers[l].self_attn.n_heads), np.float32)
        for r, c in enumerate(rows):
            if c.name == ALL_OFF or (c.kind == "block" and c.layer == l):
                b[r] = 0.0
            elif c.kind == "tap" and c.layer == l:
                t[r, model.cfg.taps(l).index(c.index)] = 0.0
            elif c.kind == "head" and c.layer == l:
                hd[r, c.index] = 0.0
        block[l], taps[l] = mx.array(b), mx.array(t)
        if model.cfg.gates:
            heads[l] = mx.array(hd)
    return SkipMasks(block, taps, heads)


def row_losses(model: SkipModel, windows: np.ndarray, rows: list[Component],
               prefix: list[mx.array] | None = None) -> np.ndarray:
    """Mean next-token cross-entropy (nats) of each row: ``windows[r]`` with ``rows[r]`` off.

    ``prefix``, each row's unablated states ``h[0..s]`` (``(B, T-1, D)`` each), starts the pass at
    block ``s``: right when no row's component sits below block ``s`` (:func:`first_block`)."""
    tokens = mx.array(windows)
    with model.ablated(masks_for(model, rows)):
        states = forward.hidden_states(model, tokens[:, :-1], prefix=prefix)
        logits = forward.logits_from(model, states[-1])
    loss = nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="none").mean(axis=1)
    return np.array(loss, dtype=np.float64)


def first_block(model: SkipModel, c: Component) -> int:
    """The first block whose output turning ``c`` off changes: the row equals the trained
    model's before it (``none off``: no block, so the number of blocks)."""
    if c.name == NONE_OFF:
        return len(model.layers)
    return model.skip_layers[0] if c.name == ALL_OFF else c.layer


def pairs(comps: list[Component], n_windows: int) -> Iterator[tuple[Component, int]]:
    """(component, window) rows, window-major so that one batch shares few windows."""
    for w in range(n_windows):
        for c in comps:
            yield c, w


def ablate(model: SkipModel, windows: np.ndarray, comps: list[Component], *, batch_rows: int = 32,
           progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Per (component, window) losses: columns ``component, window_idx, loss``.

    A row recomputes only the blocks its component can change: the trained model's states of
    each window are computed once, and a batch of rows starts from them at the first block its
    rows change (a batch holds rows of one first block only). The skipped blocks
    would compute the same states again; a row's loss is its full pass's to float rounding."""
    if batch_rows < 1:
        raise AblationError(f"batch_rows: must be >= 1, got {batch_rows}")
    by_block: dict[int, list] = {}
    for c, w in pairs(comps, len(windows)):
        by_block.setdefault(first_block(model, c), []).append((c, w))
    # A batch starts at its lowest first block, so one "all off" row in a batch of block-28 rows
    # would run them all from the first skip block: batches never mix first blocks.
    chunks = [group[k : k + batch_rows] for group in by_block.values() for k in range(0, len(group), batch_rows)]
    total = sum(len(ch) for ch in chunks)
    tokens = mx.array(windows)
    trained = []  # per window, h[0..L] of the trained model (rows start from these)
    for w in range(len(windows)):
        states = forward.hidden_states(model, tokens[w : w + 1, :-1])
        mx.eval(states)
        trained.append(states)
    out = []
    for chunk in chunks:
        s = first_block(model, chunk[0][0])
        prefix = [mx.concatenate([trained[w][k] for _, w in chunk]) for k in range(s + 1)]
        loss = row_losses(model, windows[[w for _, w in chunk]], [c for c, _ in chunk], prefix)
        out += [(c.name, w, float(x)) for (c, w), x in zip(chunk, loss)]
        if progress is not None:
            progress(len(out), total)
    return pd.DataFrame(out, columns=list(T.ABLATION_LOSS.names))


def learned_weights(model: SkipModel) -> dict[str, float]:
    """What training learned for each component: a tap's softmax weight, a head's gate alpha,
    a block's mean alpha (over heads where gated)."""
    out = {}
    for l, taps in model.tap_weights().items():
        for d, w in taps.items():
            out[Component("tap", l, d).name] = float(w)
    alphas = model.gate_alphas()
    for l in model.skip_layers:
        heads = alphas.get(l)
        out[Component("block", l).name] = float(np.mean(heads)) if heads else float(model.cfg.alpha)
        for h, a in enumerate(heads or []):
            out[Component("head", l, h).name] = float(a)
    return out


def summarize(losses: pd.DataFrame, comps: list[Component], learned: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per component (``T.ABLATION.names``): mean loss, the paired difference with
    ``none off`` and its 95% CI over windows, ranked by that difference (1 = matters most;
    the references are not ranked)."""
    learned = learned or {}
    by = losses.pivot(index="window_idx", columns="component", values="loss")
    trained = by[NONE_OFF]
    rows = []
    for c in comps:
        diff = (by[c.name] - trained).dropna()
        mean, _, lo, hi = mean_ci(diff)
        rows.append(dict(component=c.name, kind=c.kind, layer=c.layer, distance=c.distance, head=c.head,
                         n=len(diff), loss=float(by[c.name].mean()), delta_loss=mean, ci_low=lo, ci_high=hi,
                         learned=learned.get(c.name), rank=None))
    table = pd.DataFrame(rows)
    for col in ("layer", "distance", "head"):
        table[col] = table[col].astype("Int64")
    ranked = table.kind != "reference"
    order = table.loc[ranked, "delta_loss"].rank(ascending=False, method="first")
    table["rank"] = pd.array([None] * len(table), dtype="Int64")
    table.loc[ranked, "rank"] = order.astype("Int64")
    return table[list(T.ABLATION.names)]


def weight_effect_correlation(table: pd.DataFrame) -> pd.DataFrame:
    """Do components with large learned weights matter most? Per kind (``tap``: the tap's softmax
    weight, ``head``: its gate alpha, ``block``: its mean alpha) and over taps and heads together
    (``tap+head``), Spearman's rank correlation between ``|learned|`` and ``delta_loss`` of a
    :func:`summarize` table: columns ``kind, n, spearman, p_value`` (two-sided, scipy's
    ``spearmanr``). +1: the larger the weight, the more the loss rises without it; 0: the
    weight does not order the effects. Kinds are not pooled: a tap weight (about 1 / taps) and a
    gate alpha are on different scales, so one ranking of both would rank the kinds. Kinds with
    fewer than 3 components, or with constant weights or effects (the correlation is undefined),
    are left out."""
    from scipy.stats import spearmanr

    data = table[(table.kind != "reference")].dropna(subset=["learned", "delta_loss"])
    rows = []
    for kind in KINDS:
        part = data[data.kind == kind]
        weight, effect = part.learned.abs().to_numpy(float), part.delta_loss.to_numpy(float)
        if len(part) < 3 or np.ptp(weight) == 0 or np.ptp(effect) == 0:
            continue
        rho, p = spearmanr(weight, effect)
        rows.append((kind, len(part), float(rho), float(p)))
    return pd.DataFrame(rows, columns=["kind", "n", "spearman", "p_value"])

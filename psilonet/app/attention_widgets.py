"""The Attention page's views: one block's head grid (base attention next to each skip tap, with
the tap weight and gate alpha the trained run learned) for a stored capture's first window, and
the layer x head heatmaps of the capture's attention summaries, baseline beside trained.

Everything comes from what ``jobs.capture`` stored (``RunReader.attention_summary()``, the
patterns file, the lens grid's input tokens) and the parent training run's last logged tap
weights and gate alphas: no model loads. State lives in the URL.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from psilonet.analysis import attention, capture_lens
from psilonet.app import helpers as app, layout, lens_charts, lens_widgets
from psilonet.app.charts import _observed_domain
from psilonet.app.lens_widgets import CAPTURE_HINT, SIDE_LABELS

METRICS = {"entropy": "entropy", "sink": "sink share", "distance": "mean distance"}


def tap_order(tap: str) -> tuple[bool, int]:
    """Stored taps in reading order: the base attention, then the skip distances ascending."""
    return tap != attention.BASE, 0 if tap == attention.BASE else int(tap)


def _last_step(frame: pd.DataFrame | None) -> pd.DataFrame:
    if frame is None or frame.empty:
        return pd.DataFrame()
    return frame[frame.step == frame.step.max()]


def learned(parent: str | None, layer: int) -> tuple[dict[int, float], dict[int, float]]:
    """({distance: tap weight}, {head: gate alpha}) of block ``layer`` at the training run's last
    logged step (empty where the run logged none, or the capture has no training run)."""
    if not parent:
        return {}, {}
    taps = _last_step(app.read_optional(parent, "tap_weights"))
    gates = _last_step(app.read_optional(parent, "gate_alphas"))
    weights = {} if taps.empty else {int(r.distance): float(r.weight) for r in taps[taps.layer == layer].itertuples()}
    alphas = {} if gates.empty else {int(r.head): float(r.alpha) for r in gates[gates.layer == layer].itertuples()}
    return weights, alphas


def pattern_frame(matrices: dict[str, dict[tuple[int, int], object]], layer: int, n: int,
                  weights: dict[int, float], alphas: dict[int, float]) -> pd.DataFrame:
    """Long rows (head, tap, query, key, weight, labels) of block ``layer``'s stored patterns for
    the first ``n`` positions; ``matrices`` maps a stored tap name to ``{(layer, head): matrix}``.
    Keys after the query (which it cannot see) are left out."""
    parts = []
    for order, (tap, by_head) in enumerate(matrices.items()):
        tap_label = "base attention" if tap == attention.BASE else (
            f"tap d={tap}" + (f" · weight {weights[int(tap)]:.2f}" if int(tap) in weights else ""))
        for (l, head), matrix in by_head.items():
            if l != layer:
                continue
            m = matrix[:n, :n]
            q, k = np.tril_indices(m.shape[0])
            parts.append(pd.DataFrame({
                "head": head, "tap": tap, "tap_order": order, "query": q, "key": k, "weight": m[q, k],
                "tap_label": tap_label,
                "head_label": f"head {head}" + (f" · α {alphas[head]:.2f}" if head in alphas else "")}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["head", "tap", "tap_order", "query", "key", "weight", "tap_label", "head_label"])


def head_grid_view(run: pd.Series, summary: pd.DataFrame, grid: pd.DataFrame) -> list:
    """Side, block and positions pickers, then the block's head grid; returns the export pairs."""
    side = lens_widgets.side_choice("Patterns of", summary, "att_side")
    layers = sorted(int(l) for l in summary.layer.unique())
    c1, c2 = st.columns(2)
    tapped = sorted(int(l) for l in summary[(summary.side == side) & (summary.tap != attention.BASE)].layer.unique())
    first = tapped[0] if tapped else layers[0]  # a skip block shows its taps beside the base attention
    layer = c1.selectbox("Block", layers, key="att_layer", index=layers.index(app.param("layer", first, int, layers)))
    tokens = list(grid[(grid.side == side) & (grid.layer == 0)].sort_values("pos").token_text)
    most = max(len(tokens), 2)
    n = c2.slider("Positions", 2, most, app.param("n", min(12, most), int, lo=2, hi=most), key="att_n",
                  help="The first window's first positions; fewer keep the token labels readable.")
    app.set_params(layer=layer, n=n)
    taps = sorted(summary[(summary.side == side) & (summary.layer == layer)].tap.unique(), key=tap_order)
    matrices = {}
    for tap in taps:
        stored = app.read(run.name, "stored_matrices", capture_lens.PATTERNS_FILE, side, tap)
        if stored:
            matrices[tap] = stored
    if not matrices:
        st.info(f"Capture `{run.name}` stored no attention patterns. {CAPTURE_HINT}")
        return []
    weights, alphas = learned(run.get("parent"), layer) if side == "trained" else ({}, {})
    frame = pattern_frame(matrices, layer, n, weights, alphas)
    subtitle = [f"{run.name} ({run.dataset})", f"{SIDE_LABELS[side]}, the first window's positions 0-{n - 1}"]
    title = f"Block {layer}: where each head looks"
    chart = lens_charts.head_grid(frame, tokens, title, subtitle)
    app.chart(("head_grid", run.name, side, layer, n), lambda: chart)
    if weights or alphas:
        st.caption(("Tap weights (softmax over the block's taps): " + ", ".join(
            f"d={d}: {w:.3f}" for d, w in sorted(weights.items())) if weights else "")
            + (" · " if weights and alphas else "")
            + ("gate alphas per head: " + ", ".join(f"{h}: {a:.2f}" for h, a in sorted(alphas.items())) if alphas else "")
            + " (the training run's last logged step; they scale a tap's output, not its pattern).")
    return [(title, chart)]


def summary_view(run: pd.Series, summary: pd.DataFrame) -> list:
    """The layer x head heatmaps of one summary metric for one tap, baseline beside trained."""
    c1, c2 = st.columns(2)
    metric = c1.radio("Summary", list(METRICS), format_func=METRICS.get, horizontal=True, key="att_metric",
                      index=list(METRICS).index(app.param("metric", "sink", str, list(METRICS))))
    taps = sorted(summary.tap.unique(), key=tap_order)
    tap = c2.selectbox("Attention", taps, key="att_tap", format_func=lambda t: "base" if t == attention.BASE else f"skip tap d={t}",
                       index=taps.index(app.param("stap", attention.BASE, str, taps)))
    app.set_params(metric=metric, stap=tap)
    rows = summary[summary.tap == tap]
    sides = [s for s in SIDE_LABELS if s in set(rows.side)]
    domain = _observed_domain(rows[metric])
    panels = [lens_charts.summary_heatmap(rows, metric, side, domain) for side in sides]
    layout.draw_panels(panels)
    st.caption("Means over the capture's first windows and every query position but the first (which can only "
               "attend to itself). Sink: the share of attention on the window's position 0. One colour scale for both "
               "panels.")
    return [(f"Attention {METRICS[metric]} per layer and head ({side})", p) for side, p in zip(sides, panels)]


def stored_view() -> None:
    found = lens_widgets.stored_capture("attention_summary", "attention summaries")
    if found is None:
        return
    run, summary, grid = found
    exported = head_grid_view(run, summary, grid)
    st.subheader("Per block and head")
    exported += summary_view(run, summary)
    app.export_button("Attention", exported, {"run": run.name, "dataset": run.dataset})

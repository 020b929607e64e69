"""Charts of the causal tests: ablation heatmaps and learned weight vs effect, the activation-
patching profile, direct logit attribution. Functions returning Altair charts, testable without
a browser (the Causes page and the Dosed generation page draw them)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from psilonet.app.charts import PAGE_WIDTH, _heatmap_size, _require, _title
from psilonet.store import tables as T

ABLATION_COLUMNS = T.ABLATION.pick("component", "kind", "layer", "distance", "head", "delta_loss", "ci_low",
                                   "ci_high", "learned", "rank")
DIVERGING = "redblue"


def _symmetric(values: pd.Series) -> list[float]:
    m = float(np.nanmax(np.abs(values))) if len(values) else 1.0
    m = m if m > 0 else 1.0
    return [-m, m]


def ablation_heatmap(table: pd.DataFrame, kind: str) -> alt.Chart:
    """Delta loss (nats) of turning one component off: ``kind`` ``tap`` (x = distance) or
    ``head`` (x = head), y = layer; red = the loss rises (the component helps), blue = it falls.
    The tooltip carries the 95% CI, the learned weight and the rank."""
    _require(table, ABLATION_COLUMNS, "ablation_heatmap")
    if kind not in ("tap", "head"):
        raise ValueError(f"ablation_heatmap: kind must be tap or head, got {kind!r}")
    x = "distance" if kind == "tap" else "head"
    data = table[table.kind == kind][list(ABLATION_COLUMNS)].copy()
    for col in ("layer", x):
        data[col] = data[col].astype("int64")
    data["rank"] = data["rank"].astype("float64")
    learned = "tap weight" if kind == "tap" else "gate alpha"
    width, height = _heatmap_size(data[x].nunique(), data["layer"].nunique())
    return alt.Chart(data).mark_rect().encode(
        x=alt.X(f"{x}:O", title="tap distance" if kind == "tap" else "head"),
        y=alt.Y("layer:O", title="layer", sort="ascending"),
        color=alt.Color("delta_loss:Q", title="Δ loss (nats)",
                        scale=alt.Scale(scheme=DIVERGING, domain=_symmetric(data.delta_loss), reverse=True),
                        # Below the plot: beside it, a half-page column squeezed one block's row to nothing.
                        legend=alt.Legend(orient="bottom", gradientLength=160)),
        tooltip=[alt.Tooltip("component:N"), alt.Tooltip("delta_loss:Q", title="Δ loss", format="+.4f"),
                 alt.Tooltip("ci_low:Q", title="95% CI low", format="+.4f"),
                 alt.Tooltip("ci_high:Q", title="95% CI high", format="+.4f"),
                 alt.Tooltip("learned:Q", title=learned, format=".3f"), alt.Tooltip("rank:Q", format="d")],
    ).properties(title=_title(f"Δ loss with one {'tap' if kind == 'tap' else 'gate'} off",
                              "mean over windows, paired with the trained model"), width=width, height=height)


def learned_vs_effect(table: pd.DataFrame) -> alt.LayerChart:
    """Each component's learned weight (tap weight, gate alpha, block's mean alpha) against the
    loss increase when it is off, with its 95% CI; one colour per kind."""
    _require(table, ABLATION_COLUMNS, "learned_vs_effect")
    data = table[(table.kind != "reference")][list(ABLATION_COLUMNS)].dropna(subset=["learned", "delta_loss"]).copy()
    data["rank"] = data["rank"].astype("float64")
    for col in ("layer", "distance", "head"):
        data[col] = data[col].astype("float64")
    base = alt.Chart(data).encode(
        x=alt.X("learned:Q", title="learned weight (tap weight / gate alpha / block mean alpha)"),
        color=alt.Color("kind:N", title="component"))
    bars = base.mark_rule(opacity=0.4).encode(y=alt.Y("ci_low:Q", title="Δ loss when off (nats)"), y2="ci_high:Q")
    points = base.mark_point(filled=True).encode(
        y="delta_loss:Q", tooltip=[alt.Tooltip("component:N"), alt.Tooltip("learned:Q", format=".3f"),
                                   alt.Tooltip("delta_loss:Q", format="+.4f"), alt.Tooltip("rank:Q", format="d")])
    return alt.layer(bars, points).properties(
        title=_title("Do components with large learned weights matter most?", "bars: 95% CI over windows"),
        width=min(PAGE_WIDTH, 560), height=320)


def patching_profile(rows: pd.DataFrame) -> alt.Chart:
    """Per block: the fraction of the dose's change that restoring its output removes, and the
    share that dosing it alone produces (``rows``: layer, restored, injected)."""
    _require(rows, ("layer", "restored", "injected"), "patching_profile")
    long = rows.melt(id_vars="layer", value_vars=["restored", "injected"], var_name="test", value_name="fraction")
    long["test"] = long["test"].map({"restored": "restored: dosed, this block's output sober",
                                     "injected": "injected: dosed at this block only"})
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("layer:Q", title="block", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("fraction:Q", title="fraction of KL(sober ‖ dosed)"),
        color=alt.Color("test:N", title=None, legend=alt.Legend(orient="bottom", columns=1, labelLimit=0)),
        tooltip=[alt.Tooltip("layer:Q", title="block"), alt.Tooltip("test:N"),
                 alt.Tooltip("fraction:Q", format=".3f")],
    ).properties(title=_title("Where the dose acts", "next-token distribution at the prompt's last position"),
                 width="container", height=300)


def dla_heatmap(frame: pd.DataFrame, part: str) -> alt.Chart:
    """Direct logit attribution of one ``part`` (attn / skip / mlp): x = position (its input
    token), y = block, colour = push on the logit of the token predicted there (red = for)."""
    _require(frame, ("pos", "token", "predicted", "part", "layer", "value"), "dla_heatmap")
    data = frame[frame.part == part].copy()
    data["layer"] = data["layer"].astype("int64")
    data["pos"] = data["pos"].astype("int64")
    n_x, n_y = data.pos.nunique(), data.layer.nunique()
    cell = int(np.clip(PAGE_WIDTH // max(n_x, 1), 8, 22))
    width, height = _heatmap_size(n_x, n_y, cell)
    return alt.Chart(data).mark_rect().encode(
        x=alt.X("pos:O", title="position"),
        y=alt.Y("layer:O", title="block", sort="ascending"),
        color=alt.Color("value:Q", title="Δ logit", scale=alt.Scale(scheme=DIVERGING, domain=_symmetric(data.value),
                                                                     reverse=True)),
        tooltip=[alt.Tooltip("pos:Q"), alt.Tooltip("token:N", title="input"), alt.Tooltip("predicted:N"),
                 alt.Tooltip("layer:Q", title="block"), alt.Tooltip("value:Q", title="Δ logit", format="+.3f")],
    ).properties(title=_title(f"Direct logit attribution: {part}",
                              "each block's direct push on the predicted token's logit (final norm linearised)"),
                 width=width, height=height)

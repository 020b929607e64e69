"""Charts of the logit lens and attention patterns: the layer x position grid of top-1 tokens,
per-layer curves (KL to final, next-token rank, where a dose takes hold), the head grid of one
block's attention and the layer x head heatmap of the stored summaries. Functions returning
Altair charts, testable without a browser (the Lens, Attention and Dosed generation pages)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from psilonet.app.charts import HEATMAP_SCHEME, PAGE_WIDTH, STATES_AXIS, BLOCKS_AXIS, _heatmap_size, _observed_domain, _require, _title
from psilonet.store import tables as T

GRID_COLUMNS = T.LENS_GRID.pick("layer", "pos", "token_text", "top1", "p_top1", "kl_final")
CURVE_COLUMNS = ("row", "layer", "kl_final", "rank_median")
SUMMARY_COLUMNS = T.ATTENTION_SUMMARY.pick("side", "layer", "head")
GRID_COLOURS = {"p_top1": "probability of the top-1 token", "kl_final": "KL to the final layer (nats)"}
SUMMARY_TITLES = {"entropy": "attention entropy (nats)", "sink": "share of attention on position 0 (sink)",
                  "distance": "mean distance attended (positions back)"}
SUMMARY_SHORT = {"entropy": "attention entropy", "sink": "sink share", "distance": "mean distance"}
#: The plot width a chart must keep to fit the main column of a 1000 px window with the sidebar open.
NARROW_WIDTH = 520
TOKEN_CHARS = 7  # a cell shows this many characters of its token (the tooltip has it whole)


def token_label(text: str, limit: int = TOKEN_CHARS) -> str:
    """A token as a cell or axis shows it: whitespace made visible, cut to ``limit`` characters."""
    shown = str(text).replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·")
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _position_labels(data: pd.DataFrame, pos: str, token: str) -> pd.Series:
    return data[pos].astype(int).astype(str) + " " + data[token].map(token_label)


def lens_grid(grid: pd.DataFrame, colour: str = "p_top1", subtitle: str = "") -> alt.LayerChart:
    """Layer (rows, the last state at the top) x position (columns, each labelled with its input
    token): each cell's text is the lens's top-1 next token there, its colour the top-1's
    probability or the KL from that layer's read-out to the final one (``colour``)."""
    _require(grid, GRID_COLUMNS, "lens_grid")
    if colour not in GRID_COLOURS:
        raise ValueError(f"lens_grid: colour must be one of {', '.join(GRID_COLOURS)}, got {colour!r}")
    data = grid[list(GRID_COLUMNS)].copy()
    data["layer"] = data["layer"].astype("int64")
    data["pos"] = data["pos"].astype("int64")
    data["input"] = _position_labels(data, "pos", "token_text")
    data["cell"] = data["top1"].map(lambda t: token_label(t, 5))
    order = list(dict.fromkeys(data.sort_values("pos")["input"]))
    n_x, n_y = data.pos.nunique(), data.layer.nunique()
    width = int(min(NARROW_WIDTH, max(160, 40 * n_x)))
    height = int(min(16 * n_y, 640)) if n_y else 120
    # The embeddings' read-out is the input token read back, tens of nats from the final one: its
    # KL would flatten every other layer's colour, so the scale spans the blocks' range (clamped).
    blocks = data[data.layer > 0] if (data.layer > 0).any() else data
    scale = (alt.Scale(scheme="viridis", domain=[0, 1]) if colour == "p_top1"
             else alt.Scale(scheme="magma", reverse=True, clamp=True,
                            domain=_observed_domain(blocks.kl_final, (0.0, 1.0))))
    base = alt.Chart(data).encode(
        x=alt.X("input:N", title="position and its input token", sort=order,
                axis=alt.Axis(labelAngle=-60, labelLimit=90)),
        y=alt.Y("layer:O", title=STATES_AXIS, sort="descending"))
    cells = base.mark_rect().encode(
        color=alt.Color(f"{colour}:Q", title=GRID_COLOURS[colour], scale=scale,
                        legend=alt.Legend(orient="bottom", gradientLength=240)),
        tooltip=[alt.Tooltip("layer:O", title="state"), alt.Tooltip("pos:O", title="position"),
                 alt.Tooltip("token_text:N", title="input token"), alt.Tooltip("top1:N", title="top-1 next token"),
                 alt.Tooltip("p_top1:Q", title="p(top-1)", format=".3f"),
                 alt.Tooltip("kl_final:Q", title="KL to final (nats)", format=".3f")])
    # Dark text on the light end of either scale, light text on the dark end.
    light = "datum.p_top1 < 0.55" if colour == "p_top1" else f"datum.kl_final > {np.mean(scale.domain):.6g}"
    text = base.mark_text(fontSize=9, limit=38).encode(
        text="cell:N", color=alt.condition(light, alt.value("white"), alt.value("black")))
    return alt.layer(cells, text).properties(
        title=_title("Top-1 next token per layer and position",
                     ([subtitle] if subtitle else []) + ["each state through the final norm and unembedding"]),
        width=width, height=height)


def layer_curve(curves: pd.DataFrame, value: str = "kl_final") -> alt.Chart:
    """One line per row (baseline, trained, sober, a dose...) over the states 0..L: the mean KL to
    the final layer (``kl_final``), or the median rank of the true next token (``rank_median``,
    log scale, 1 = top)."""
    titles = {"kl_final": ("mean KL to the final layer (nats)", "KL to the final layer"),
              "rank_median": ("median rank of the next token (log)", "Rank of the true next token"),
              "kl_sober": ("mean KL from the sober row (nats)", "Where each dose takes hold")}
    if value not in titles:
        raise ValueError(f"layer_curve: value must be one of {', '.join(titles)}, got {value!r}")
    _require(curves, ("row", "layer", value), "layer_curve")
    data = curves[["row", "layer", value]].dropna().copy()
    data["layer"] = data["layer"].astype("int64")
    y_title, title = titles[value]
    scale = alt.Scale(type="log") if value == "rank_median" else alt.Scale(zero=True)
    if value == "rank_median":
        data = data[data[value] >= 1]
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("layer:Q", title=STATES_AXIS, axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y(f"{value}:Q", title=y_title, scale=scale),
        color=alt.Color("row:N", title=None, sort=list(dict.fromkeys(data.row)),
                        legend=alt.Legend(orient="bottom", columns=1, labelLimit=0)),
        tooltip=[alt.Tooltip("row:N"), alt.Tooltip("layer:Q", title="state"),
                 alt.Tooltip(f"{value}:Q", title=y_title, format=".4g")],
    ).properties(title=_title(title, "mean over positions" if value != "rank_median" else "median over positions"),
                 width="container", height=260)


def head_grid(patterns: pd.DataFrame, tokens: list[str], title: str, subtitle: str | list[str] = "") -> alt.FacetChart:
    """The attention of one block, one small query x key heatmap per head (rows) and tap (columns:
    the base attention, then each skip tap). ``patterns`` has ``head, tap, query, key, weight``
    and the facet labels ``head_label`` and ``tap_label`` (which carry gate alphas and tap weights);
    ``tokens`` are the window's input tokens by position."""
    _require(patterns, ("head", "tap", "query", "key", "weight", "head_label", "tap_label"), "head_grid")
    data = patterns.copy()
    n = int(max(data["query"].max(), data["key"].max()) + 1) if len(data) else 1
    labels = [f"{i} {token_label(t, 6)}" for i, t in enumerate(tokens[:n])] + [str(i) for i in range(len(tokens), n)]
    data["q"] = data["query"].map(lambda i: labels[int(i)])
    data["k"] = data["key"].map(lambda i: labels[int(i)])
    taps = list(dict.fromkeys(data.sort_values("tap_order")["tap_label"])) if "tap_order" in data else list(
        dict.fromkeys(data["tap_label"]))
    heads = list(dict.fromkeys(data.sort_values("head")["head_label"]))
    columns = len(taps) if len(taps) > 1 else 3
    # Row headers (head and gate alpha, about 90 px) and the token labels (about 60 px) come on top.
    room = NARROW_WIDTH - (150 if len(taps) > 1 else 70)
    cell = int(np.clip(room // (columns * n + columns), 3, 16))
    side = cell * n
    show_labels = cell >= 8
    chart = alt.Chart(data).mark_rect().encode(
        x=alt.X("k:N", title="key position", sort=labels, axis=alt.Axis(labels=show_labels, labelFontSize=8)),
        y=alt.Y("q:N", title=None, sort=labels, axis=alt.Axis(labels=show_labels, labelFontSize=8)),
        color=alt.Color("weight:Q", title="attention", scale=alt.Scale(scheme=HEATMAP_SCHEME, domain=[0, 1]),
                        legend=alt.Legend(orient="bottom", gradientLength=200)),
        tooltip=[alt.Tooltip("head_label:N", title="head"), alt.Tooltip("tap_label:N", title="tap"),
                 alt.Tooltip("q:N", title="query"), alt.Tooltip("k:N", title="key"),
                 alt.Tooltip("weight:Q", format=".3f")],
    ).properties(width=side, height=side)
    if len(taps) > 1:
        faceted = chart.facet(row=alt.Row("head_label:N", title=None, sort=heads, header=alt.Header(labelAngle=0,
                                                                                                     labelAlign="left")),
                              column=alt.Column("tap_label:N", title=None, sort=taps))
    else:
        faceted = chart.facet(facet=alt.Facet("head_label:N", title=None, sort=heads), columns=columns)
    lines = [subtitle] if isinstance(subtitle, str) and subtitle else list(subtitle or [])
    lines.append("in each panel, rows: query, columns: key (position and input token)")
    return faceted.properties(title=_title(title, lines)).resolve_scale(color="shared")


def summary_heatmap(summary: pd.DataFrame, metric: str, side: str, domain=None) -> alt.Chart:
    """Layer x head heatmap of one side's stored attention summary ``metric`` (entropy, sink or
    distance), on ``domain`` (default: the observed range over both sides, so panels compare)."""
    _require(summary, (*SUMMARY_COLUMNS, metric), "summary_heatmap")
    if metric not in SUMMARY_TITLES:
        raise ValueError(f"summary_heatmap: metric must be one of {', '.join(SUMMARY_TITLES)}, got {metric!r}")
    domain = _observed_domain(summary[metric]) if domain is None else list(domain)
    data = summary[summary.side == side][["layer", "head", metric]].copy()
    data["layer"] = data["layer"].astype("int64")
    data["head"] = data["head"].astype("int64")
    width, height = _heatmap_size(data["head"].nunique(), data["layer"].nunique(), 16)
    return alt.Chart(data).mark_rect().encode(
        x=alt.X("head:O", title="head"),
        y=alt.Y("layer:O", title=BLOCKS_AXIS, sort="ascending"),
        color=alt.Color(f"{metric}:Q", title=SUMMARY_SHORT[metric],
                        scale=alt.Scale(scheme=HEATMAP_SCHEME, domain=domain, clamp=True),
                        legend=alt.Legend(orient="bottom", gradientLength=160)),
        tooltip=[alt.Tooltip("layer:O", title="block"), alt.Tooltip("head:O"),
                 alt.Tooltip(f"{metric}:Q", title=SUMMARY_TITLES[metric], format=".3f")],
    ).properties(title=_title(f"{side}: {SUMMARY_SHORT[metric]}", SUMMARY_TITLES[metric]),
                 width=min(width, PAGE_WIDTH), height=height)

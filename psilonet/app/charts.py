"""Altair chart builders for the psilonet explorer.

Every function here takes pandas DataFrames exactly as :mod:`psilonet.store` returns them (or a
join of them, documented per function) and returns an Altair chart: no I/O, no SQL, no
Streamlit.  Every chart builder is therefore testable without a browser: ``chart.to_dict()``
gives the Vega-Lite spec (data included), which is what the unit tests inspect.

Conventions:

* Each builder validates its required columns first and raises :class:`ValueError` naming the
  missing ones.
* Only the columns a chart needs are embedded in the spec.
* Altair's row limit (``alt.data_transformers`` ``max_rows``, 5000) is left alone.  Instead each
  builder keeps its data at most :data:`MAX_ROWS` rows: step series are thinned to evenly spaced
  steps (first and last kept), trajectories keep the first units, entropy heatmaps the first
  positions; whenever that happens the chart's subtitle says so.
* Line charts use ``width="container"``; heatmaps get a fixed width derived from their number
  of columns so that two of them side by side (:func:`side_by_side`) line up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import altair as alt
import numpy as np
import pandas as pd

from psilonet.generation.perturb import PRESETS as DOSE_PRESETS
from psilonet.store import tables as T

__all__ = [
    "MAX_ROWS",
    "cross_layer_heatmap",
    "cross_layer_heatmaps",
    "dose_overview",
    "entropy_heatmap",
    "gate_alpha_heatmap",
    "grad_norm_chart",
    "head_heatmap",
    "head_heatmaps",
    "layer_entropy_profile",
    "layer_similarity_curve",
    "loss_curves",
    "novelty_stats",
    "side_by_side",
    "similarity_domain",
    "tap_weight_evolution",
    "tap_weight_heatmap",
    "therapeutic_window",
    "token_norm_profile",
    "trajectory_chart",
]

#: Upper bound on the rows a chart embeds (Altair refuses more than 5000 by default).
MAX_ROWS = 4000
#: Points per series for step curves (loss, grad norm) before they are thinned.
MAX_CURVE_POINTS = 2000

# Columns each chart needs, taken from the store's table declarations (pick() fails at import
# if a table loses one). Token and layer entropies come joined with their generation's intensity.
METRICS_COLUMNS = T.METRICS.pick("step", "split", "name", "value")
SWEEP_COLUMNS = T.SWEEP_CONFIGS.pick("distances", "alpha", "variant", "n", "mean", "std", "ci_low", "ci_high")
# The representation column is filtered by the page; charts only name it in their titles.
SIMILARITY_COLUMNS = T.SIMILARITY.pick("source", "dataset", "view", "metric", "layer", "layer_b", "head", "value")
PATH_COLUMNS = T.TRAJECTORIES.pick("source", "side", "unit", "unit_id", "label", "layer", "pc1", "pc2")
VARIANCE_COLUMNS = T.PCA_VARIANCE.pick("source", "component", "ratio")
NORM_COLUMNS = T.NORM_STATS.names
#: Pixels of plot width that heatmaps side by side share on the Similarity page (its content column
#: at a 1400 px window is about 1,100 px; axes, titles and the colour legend take the rest).
SIDE_BY_SIDE_WIDTH = 760
#: Human names of the similarity metrics and of the representations, for titles and legends.
METRIC_TITLES = {"cka": "Linear CKA", "cka_debiased": "Debiased CKA", "svcca": "SVCCA", "pwcca": "PWCCA",
                 "mutual_knn": "Mutual 10-NN", "procrustes": "Procrustes distance (rad)"}
#: Where each metric reads "unchanged" (similarities 1, distances 0).
UNCHANGED = {"procrustes": 0.0}
REPRESENTATION_TITLES = {"rms": "RMS-normalised states", "raw": "raw states",
                         "no-sink": "raw states without the sink tokens"}
TAP_COLUMNS = T.TAP_WEIGHTS.names
GATE_COLUMNS = T.GATE_ALPHAS.names
TOKEN_COLUMNS = (T.TOKEN_ENTROPY.pick("gen_id") + T.GENERATIONS.pick("intensity")
                 + T.TOKEN_ENTROPY.pick("pos", "token_text", "entropy"))
LAYER_ENTROPY_COLUMNS = T.GENERATIONS.pick("intensity") + T.LAYER_ENTROPY.pick("layer", "entropy")

BASELINE_LABEL = "baseline (frozen model)"
TRAIN_LOSS_LABEL = "training loss (skip model)"
VAL_LOSS_LABEL = "validation loss (skip model)"
SIDES = ("baseline", "trained")
HEATMAP_SCHEME = "viridis"
#: Plot-area width budget of a chart that must fit, with its axes and legend, the app's main
#: column at a 1400 px window with the sidebar open (about 930 px).
PAGE_WIDTH = 780
#: Heatmap cells keep their size: the width and height given are the plot area's, axes, title
#: and legend come on top (Streamlit's default "fit" squeezes the plot into the given size,
#: which left a 4-row heatmap 3 px tall under its title and legend).
NATURAL_SIZE = alt.AutoSizeParams(type="pad", contains="padding")

# --------------------------------------------------------------------------- helpers


#: Layer axes say what they count: residual states (0 = the embeddings, L = the last block's
#: output) or transformer blocks (0 = the first block; heads and skip taps live in blocks).
STATES_AXIS = "layer (states, 0 = embeddings)"
BLOCKS_AXIS = "block (0 = first block)"


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise ValueError naming every column of ``columns`` that ``df`` lacks."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")


def _finite(x: float | None) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _even_steps(steps: Sequence, max_steps: int) -> np.ndarray:
    """At most ``max_steps`` evenly spaced values of sorted unique ``steps``, first and last kept."""
    unique = np.sort(pd.unique(np.asarray(steps)))
    if len(unique) <= max_steps:
        return unique
    idx = np.unique(np.round(np.linspace(0, len(unique) - 1, max(max_steps, 2))).astype(int))
    return unique[idx]


def _title(text: str, subtitle: str | list[str] | None = None) -> alt.TitleParams:
    if subtitle:
        return alt.TitleParams(text=text, subtitle=subtitle, anchor="start")
    return alt.TitleParams(text=text, anchor="start")


def _heatmap_size(n_x: int, n_y: int, cell: int = 22) -> tuple[int, int]:
    width = int(min(640, max(160, cell * max(n_x, 1))))
    height = int(min(640, max(120, cell * max(n_y, 1))))
    return width, height


def _plain_domain(domain: Sequence[float]) -> list[float]:
    lo, hi = (float(domain[0]), float(domain[1]))
    if not (_finite(lo) and _finite(hi)):
        raise ValueError(f"domain must be two finite numbers, got {domain!r}")
    return [lo, hi]


def _observed_domain(values: pd.Series, fallback: tuple[float, float] = (0.0, 1.0)) -> list[float]:
    """The values' own [min, max] (a flat series gets +-0.01 around its value), so that changes
    of a few hundredths (tap weights and gate alphas after a short run) are visible in colour
    instead of one flat tone on a fixed [0, 1] scale."""
    finite = pd.to_numeric(values, errors="coerce")
    finite = finite[np.isfinite(finite)]
    if finite.empty:
        return [float(fallback[0]), float(fallback[1])]
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    return [lo, hi]


def _range_note(domain: Sequence[float]) -> str:
    return f"colour spans the observed range {domain[0]:.3f}-{domain[1]:.3f}"


def _int_column(series: pd.Series) -> pd.Series:
    """Nullable-integer or float columns (DuckDB NULLs) as plain Python ints for the spec."""
    return series.astype("int64")


# --------------------------------------------------------------------------- training curves


def _step_axis() -> alt.X:
    """Optimizer steps are whole numbers: integer ticks only."""
    return alt.X("step:Q", title="step", axis=alt.Axis(tickMinStep=1, format="d"))


def _step_series(metrics: pd.DataFrame, split: str, name: str) -> pd.DataFrame:
    rows = metrics[(metrics["split"] == split) & (metrics["name"] == name)][["step", "value"]]
    rows = rows.dropna(subset=["value"])
    rows = rows[np.isfinite(rows["value"].astype(float))]
    rows = rows.groupby("step", as_index=False)["value"].mean().sort_values("step")
    rows["step"] = _int_column(rows["step"])
    keep = _even_steps(rows["step"], MAX_CURVE_POINTS)
    return rows[rows["step"].isin(keep)].reset_index(drop=True)


def loss_curves(metrics: pd.DataFrame, base_loss: float | None = None) -> alt.LayerChart:
    """Train ``loss`` per step (line), val ``skip_loss`` per eval step (line with points) and a
    dashed horizontal rule at ``base_loss``, whose legend entry is "baseline (frozen model)"
    (when given and finite).  Legend names are :data:`TRAIN_LOSS_LABEL`, :data:`VAL_LOSS_LABEL`
    and :data:`BASELINE_LABEL`; steps get integer ticks.

    ``metrics`` is ``RunReader.metrics()``: step, split, name, value, time.  Each series is
    thinned to at most :data:`MAX_CURVE_POINTS` evenly spaced steps (first and last kept)."""
    _require(metrics, METRICS_COLUMNS, "loss_curves")
    train = _step_series(metrics, "train", "loss").assign(series=TRAIN_LOSS_LABEL)
    val = _step_series(metrics, "val", "skip_loss").assign(series=VAL_LOSS_LABEL)
    has_base = _finite(base_loss)

    domain = [TRAIN_LOSS_LABEL, VAL_LOSS_LABEL] + ([BASELINE_LABEL] if has_base else [])
    palette = ["#4c78a8", "#f58518", "#7f7f7f"][: len(domain)]
    color = alt.Color("series:N", title=None, scale=alt.Scale(domain=domain, range=palette),
                      legend=alt.Legend(orient="top", labelLimit=0))
    x = _step_axis()
    y = alt.Y("value:Q", title="loss (nats / token)", scale=alt.Scale(zero=False))
    tooltip = [alt.Tooltip("series:N"), alt.Tooltip("step:Q"), alt.Tooltip("value:Q", title="loss", format=".4f")]

    layers = [
        alt.Chart(train).mark_line(strokeWidth=1.5).encode(x=x, y=y, color=color, tooltip=tooltip),
        alt.Chart(val).mark_line(point=True, strokeWidth=2).encode(x=x, y=y, color=color, tooltip=tooltip),
    ]
    if has_base:  # shown once: its legend entry and the dashed rule (no second text label)
        base = pd.DataFrame({"series": [BASELINE_LABEL], "value": [float(base_loss)]})
        layers.append(alt.Chart(base).mark_rule(strokeDash=[6, 4], strokeWidth=1.5).encode(
            y=alt.Y("value:Q"), color=color,
            tooltip=[alt.Tooltip("series:N"), alt.Tooltip("value:Q", title="loss", format=".4f")]))
    return alt.layer(*layers).properties(
        title=_title("Training loss"), width="container", height=320)


def grad_norm_chart(metrics: pd.DataFrame) -> alt.Chart:
    """Train ``grad_norm`` per step (line), thinned like :func:`loss_curves`."""
    _require(metrics, METRICS_COLUMNS, "grad_norm_chart")
    data = _step_series(metrics, "train", "grad_norm")
    return alt.Chart(data).mark_line(strokeWidth=1.2, color="#54a24b").encode(
        x=_step_axis(),
        y=alt.Y("value:Q", title="gradient norm", scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip("step:Q"), alt.Tooltip("value:Q", title="grad norm", format=".4f")],
    ).properties(title=_title("Gradient norm (train)"), width="container", height=220)


# --------------------------------------------------------------------------- sweeps


def _series_label(distances: object, variant: object) -> str:
    return f"{distances}" + (" gated" if str(variant) == "gated" else "")


def therapeutic_window(configs: pd.DataFrame) -> alt.LayerChart:
    """Mean improvement (%) against alpha, one line per distances set (and variant), with CI error
    bars.  ``configs`` is ``RunReader.sweep_configs()``; rows with ``n == 0`` are dropped, and so
    are rows without a mean.  Error bars are drawn only where both CI ends are known."""
    _require(configs, SWEEP_COLUMNS, "therapeutic_window")
    optional = [c for c in ("label", "failed", "best", "n_paired", "p_vs_best", "mean_skip_loss", "mean_base_loss")
                if c in configs.columns]
    data = configs[list(SWEEP_COLUMNS) + optional].copy()
    data = data[(data["n"].fillna(0) > 0) & data["mean"].notna()]
    data["series"] = [_series_label(d, v) for d, v in zip(data["distances"], data["variant"])]
    data["n"] = _int_column(data["n"])
    for col in ("failed", "n_paired"):
        if col in data.columns:
            data[col] = data[col].fillna(0).astype("int64")
    if "best" in data.columns:
        data["best"] = data["best"].fillna(False).astype(bool)
    data = data.sort_values(["series", "alpha"]).reset_index(drop=True)
    series = sorted(data["series"].unique())

    color = alt.Color("series:N", title="distances", scale=alt.Scale(domain=series) if series else alt.Undefined)
    x = alt.X("alpha:Q", title="alpha (skip mix)")
    y = alt.Y("mean:Q", title="mean improvement over baseline (%)")
    tooltip = [alt.Tooltip("series:N", title="distances")]
    if "label" in data.columns:
        tooltip.append(alt.Tooltip("label:N", title="config"))
    tooltip += [
        alt.Tooltip("alpha:Q", format=".3g"), alt.Tooltip("n:Q", title="n (seeds)"),
        alt.Tooltip("mean:Q", title="mean %", format=".3f"), alt.Tooltip("std:Q", title="std", format=".3f"),
        alt.Tooltip("ci_low:Q", title="CI low", format=".3f"), alt.Tooltip("ci_high:Q", title="CI high", format=".3f"),
    ]
    for col, title, fmt in (("p_vs_best", "p vs best", ".3g"), ("n_paired", "n paired", "d"),
                            ("failed", "failed", "d"), ("best", "best", None),
                            ("mean_skip_loss", "mean skip loss", ".4f"), ("mean_base_loss", "mean base loss", ".4f")):
        if col in data.columns:
            tooltip.append(alt.Tooltip(f"{col}:{'N' if fmt is None else 'Q'}", title=title,
                                       **({} if fmt is None else {"format": fmt})))

    base = alt.Chart(data)
    bars = alt.Chart(data[data["ci_low"].notna() & data["ci_high"].notna()]).mark_rule(strokeWidth=1.5).encode(
        x=x, y=alt.Y("ci_low:Q", title="mean improvement over baseline (%)"), y2=alt.Y2("ci_high:Q"),
        color=color, tooltip=tooltip)
    lines = base.mark_line().encode(x=x, y=y, color=color, detail="series:N")
    points = base.mark_point(filled=True, size=70).encode(
        x=x, y=y, color=color, tooltip=tooltip,
        shape=alt.Shape("best:N", title="best", scale=alt.Scale(domain=[False, True], range=["circle", "diamond"]))
        if "best" in data.columns else alt.Undefined)
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#999", strokeDash=[3, 3]).encode(y="y:Q")
    n_dropped = int(len(configs) - len(data))
    subtitle = "points: mean over seeds; bars: confidence interval"
    if n_dropped:
        subtitle += f"; {n_dropped} config(s) without successful runs hidden"
    return alt.layer(zero, bars, lines, points).properties(
        title=_title("Therapeutic window: improvement vs alpha", subtitle), width="container", height=340)


# --------------------------------------------------------------------------- similarity


def _sim_rows(sim: pd.DataFrame, view: str, metric: str | None, what: str) -> pd.DataFrame:
    _require(sim, SIMILARITY_COLUMNS, what)
    mask = sim["view"] == view
    if metric is not None:
        mask &= sim["metric"] == metric
    return sim[mask]


def similarity_domain(sim: pd.DataFrame, view: str, metric: str) -> tuple[float, float]:
    """(min, max) of ``value`` over every source for ``view``/``metric`` (NaNs ignored); (0, 1) when
    there is none.  Pass it as ``domain`` to the heatmaps so that they share one colour scale."""
    values = _sim_rows(sim, view, metric, "similarity_domain")["value"].astype(float)
    values = values[np.isfinite(values)]
    if values.empty:
        return (0.0, 1.0)
    return (float(values.min()), float(values.max()))


# Fit the container's width only: with Streamlit's default "fit" the legend, titles and axes
# are taken out of the height too, which left the per-layer curve a strip of about 100 px.
_FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")


def _metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def _with_representation(subtitle: str, representation: str | None) -> str:
    if representation is None:
        return subtitle
    return f"{subtitle} · {REPRESENTATION_TITLES.get(representation, representation)}"


def layer_similarity_curve(sim: pd.DataFrame, metric: str, representation: str | None = None) -> alt.LayerChart:
    """Per-layer similarity (baseline h[l] vs trained h[l]) under ``metric``, one line per source
    labelled "source (dataset)", with a dashed reference line where the metric reads unchanged
    (1.0, or 0 for the Procrustes distance, :data:`UNCHANGED`).

    The y axis spans the data's range padded by 10% (and always includes that line), so that 0.94
    against 1.0 is visible; the title names the metric and ``representation``."""
    rows = _sim_rows(sim, "layer", metric, "layer_similarity_curve")
    data = rows[["source", "dataset", "layer", "value"]].dropna(subset=["layer", "value"]).copy()
    data["layer"] = _int_column(data["layer"])
    data["series"] = data["source"].astype(str) + " (" + data["dataset"].astype(str) + ")"
    data = data.sort_values(["series", "layer"]).reset_index(drop=True)
    same = UNCHANGED.get(metric, 1.0)
    lo = min(same, float(data["value"].min())) if len(data) else min(same, 0.0)
    hi = max(same, float(data["value"].max())) if len(data) else max(same, 1.0)
    pad = max(0.1 * (hi - lo), 0.005)
    domain = [lo - pad, hi + pad]
    name = _metric_title(metric)
    line = alt.Chart(data[["series", "layer", "value"]]).mark_line(point=True).encode(
        x=alt.X("layer:Q", title=STATES_AXIS, axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=name, scale=alt.Scale(domain=domain, nice=False)),
        color=alt.Color("series:N", title="source (dataset)",
                        legend=alt.Legend(orient="bottom", columns=1, labelLimit=0, titleLimit=0)),
        tooltip=[alt.Tooltip("series:N", title="source (dataset)"), alt.Tooltip("layer:Q"),
                 alt.Tooltip("value:Q", title=name, format=".4f")],
    )
    # The same explicit domain on both layers: a layer without one would union in zero.
    reference = alt.Chart(pd.DataFrame({"value": [same]})).mark_rule(strokeDash=[4, 4], color="#777").encode(
        y=alt.Y("value:Q", scale=alt.Scale(domain=domain, nice=False)))
    subtitle = _with_representation(f"baseline vs trained residual stream per layer; dashed line: {same:g} = unchanged",
                                    representation)
    return alt.layer(reference, line).properties(
        title=_title(f"{name} per layer", subtitle), width="container", height=360, autosize=_FIT_WIDTH)


def _heatmap(data: pd.DataFrame, x: str, x_title: str, y: str, y_title: str, value: str, value_title: str,
             domain: Sequence[float], title: alt.TitleParams, scheme: str = HEATMAP_SCHEME,
             extra_tooltip: list | None = None, max_width: int | None = None) -> alt.Chart:
    n_x, n_y = data[x].nunique(), data[y].nunique()
    cell = 22 if max_width is None else int(np.clip(max_width // max(n_x, 1), 8, 22))
    width, height = _heatmap_size(n_x, n_y, cell)
    tooltip = [alt.Tooltip(f"{y}:O", title=y_title), alt.Tooltip(f"{x}:O", title=x_title),
               alt.Tooltip(f"{value}:Q", title=value_title, format=".4f")] + (extra_tooltip or [])
    return alt.Chart(data).mark_rect().encode(
        x=alt.X(f"{x}:O", title=x_title, sort="ascending"),
        y=alt.Y(f"{y}:O", title=y_title, sort="ascending"),  # ordinal, ascending: the first row at the top
        color=alt.Color(f"{value}:Q", title=value_title,
                        scale=alt.Scale(domain=_plain_domain(domain), scheme=scheme, clamp=True)),
        tooltip=tooltip,
    ).properties(title=title, width=width, height=height)


def _source_heatmap(sim: pd.DataFrame, view: str, metric: str, source: str, domain, x: str, x_title: str,
                    y_title: str, title: str, caller: str, representation: str | None = None,
                    max_width: int | None = None) -> alt.Chart:
    """One source's ``view`` rows as a heatmap of ``x`` against layer, on a shared colour domain."""
    rows = _sim_rows(sim, view, metric, caller)
    if domain is None:
        domain = similarity_domain(sim, view, metric)
    data = rows[rows["source"] == source][["layer", x, "value"]].dropna().copy()
    data["layer"] = _int_column(data["layer"])
    data[x] = _int_column(data[x])
    dataset = rows.loc[rows["source"] == source, "dataset"]
    sub = f"{source} ({dataset.iloc[0]})" if len(dataset) else f"{source} (no data)"
    return _heatmap(data, x, x_title, "layer", y_title, "value", _metric_title(metric), domain,
                    _title(title, _with_representation(sub, representation)), max_width=max_width)


def head_heatmap(sim: pd.DataFrame, metric: str, source: str,
                 domain: tuple[float, float] | None = None, representation: str | None = None,
                 max_width: int | None = None) -> alt.Chart:
    """Per-head similarity of one ``source``: x = head, y = layer (layer 0 at the top), colour =
    value on the scale ``domain`` (default: :func:`similarity_domain` over every source, so two
    heatmaps side by side are comparable). ``max_width`` bounds the plot's width in pixels (square
    cells shrink, down to 8 px) so that several fit side by side on the page."""
    return _source_heatmap(sim, "head", metric, source, domain, "head", "head", BLOCKS_AXIS,
                           f"{_metric_title(metric)} per head", "head_heatmap", representation, max_width)


def cross_layer_heatmap(sim: pd.DataFrame, source: str, domain: tuple[float, float] | None = None,
                        metric: str = "cka", representation: str | None = None,
                        max_width: int | None = None) -> alt.Chart:
    """CKA of every baseline layer (y) against every trained layer (x) for one ``source``; colour on
    the scale ``domain`` (default: :func:`similarity_domain` over every source); ``max_width`` as
    in :func:`head_heatmap`."""
    return _source_heatmap(sim, "cross_layer", metric, source, domain, "layer_b",
                           "trained state (0 = embeddings)", "baseline state (0 = embeddings)",
                           f"Cross-layer {_metric_title(metric)}: baseline vs trained",
                           "cross_layer_heatmap", representation, max_width)


def fit_width(chart: alt.Chart) -> alt.Chart:
    """``chart`` (one view) drawn at its container's width, axes and legend included, its height
    kept: what a page uses so that a heatmap fits any window (800 to 1600 px and beyond) instead
    of keeping a pixel width that a narrow window cuts."""
    return chart.properties(width="container", autosize=_FIT_WIDTH)


def side_by_side(charts: Sequence[alt.TopLevelMixin]) -> alt.HConcatChart:
    """Charts next to each other with one shared colour scale (use with a common ``domain``)."""
    charts = list(charts)
    if not charts:
        raise ValueError("side_by_side: no charts given")
    return alt.hconcat(*charts).resolve_scale(color="shared")


def _sources_with(rows: pd.DataFrame, sources: Sequence[str], what: str) -> list[str]:
    present = [s for s in sources if (rows["source"] == s).any()]
    if not present:
        raise ValueError(f"{what}: none of the sources {', '.join(map(str, sources)) or '(none)'} has rows")
    return present


def _side_by_side_rows(sim: pd.DataFrame, view: str, metric: str, sources: Sequence[str], what: str):
    """The ``view`` rows of ``sources`` for side-by-side heatmaps: the rows, the sources that have
    any, their shared colour domain and each chart's width."""
    rows = _sim_rows(sim, view, metric, what)
    rows = rows[rows["source"].isin(list(sources))]
    present = _sources_with(rows, sources, what)
    return rows, present, similarity_domain(rows, view, metric), SIDE_BY_SIDE_WIDTH // len(present)


def head_heatmap_panels(sim: pd.DataFrame, metric: str, sources: Sequence[str],
                        representation: str | None = None) -> list[alt.Chart]:
    """:func:`head_heatmap` of each of ``sources`` that has per-head rows, on one colour scale (the
    range over those sources), each within its share of :data:`SIDE_BY_SIDE_WIDTH`: the panels a
    page lays out side by side (:func:`fit_width` each) and :func:`head_heatmaps` joins."""
    rows, present, domain, width = _side_by_side_rows(sim, "head", metric, sources, "head_heatmaps")
    return [head_heatmap(rows, metric, s, domain, representation, width) for s in present]


def cross_layer_panels(sim: pd.DataFrame, sources: Sequence[str], representation: str | None = None,
                       metric: str = "cka") -> list[alt.Chart]:
    """:func:`cross_layer_heatmap` of each of ``sources`` that has cross-layer rows, on one
    colour scale, as :func:`head_heatmap_panels`."""
    rows, present, domain, width = _side_by_side_rows(sim, "cross_layer", metric, sources, "cross_layer_heatmaps")
    return [cross_layer_heatmap(rows, s, domain, metric, representation, width) for s in present]


def head_heatmaps(sim: pd.DataFrame, metric: str, sources: Sequence[str],
                  representation: str | None = None) -> alt.HConcatChart:
    """:func:`head_heatmap_panels` side by side in one chart (for an export)."""
    return side_by_side(head_heatmap_panels(sim, metric, sources, representation))


def cross_layer_heatmaps(sim: pd.DataFrame, sources: Sequence[str], representation: str | None = None,
                         metric: str = "cka") -> alt.HConcatChart:
    """:func:`cross_layer_panels` side by side in one chart (for an export)."""
    return side_by_side(cross_layer_panels(sim, sources, representation, metric))


def novelty_stats(sim: pd.DataFrame, metric: str, start: int, end: int) -> pd.DataFrame:
    """Per source: mean / min / max of the per-layer ``metric`` over layers ``start..end`` inclusive.

    Returns columns source, dataset, mean, min, max (one row per source, sorted by source)."""
    if start > end:
        raise ValueError(f"novelty_stats: start ({start}) is after end ({end})")
    rows = _sim_rows(sim, "layer", metric, "novelty_stats")
    rows = rows[(rows["layer"] >= start) & (rows["layer"] <= end)].dropna(subset=["value"])
    out = rows.groupby(["source", "dataset"], as_index=False)["value"].agg(["mean", "min", "max"])
    return out[["source", "dataset", "mean", "min", "max"]].sort_values("source").reset_index(drop=True)


#: Colours of the token-norm statistics; the outlier threshold is grey, beside them in the legend.
_NORM_COLOURS = {"max": "#d62728", "p99": "#ff7f0e", "median": "#1f77b4"}
_THRESHOLD_COLOUR = "#999999"


def threshold_label(stats: pd.DataFrame) -> str:
    """The outlier threshold as the legend names it, with its ratio to the layer's median as
    stored (e.g. "outlier threshold (10x median)")."""
    ratio = (stats["threshold"] / stats["median"]).replace([np.inf, -np.inf], np.nan).dropna()
    return f"outlier threshold ({ratio.median():.3g}x median)" if len(ratio) else "outlier threshold"


def token_norm_profile(stats: pd.DataFrame, source: str | None = None) -> alt.Chart:
    """The outlier diagnostic of a capture: per layer the median, p99 and max token norm and the
    outlier threshold (log scale; colour = statistic, the threshold grey and named in the legend
    with its ratio to the median; baseline solid, trained dashed).

    ``stats`` is ``RunReader.norm_stats()`` (side, layer, median, p99, max, threshold, n_over)."""
    _require(stats, NORM_COLUMNS, "token_norm_profile")
    limit = threshold_label(stats)
    long = stats.rename(columns={"threshold": limit}).melt(
        id_vars=["side", "layer", "n_over"], value_vars=[*_NORM_COLOURS, limit],
        var_name="statistic", value_name="norm").dropna(subset=["norm"])
    long["layer"] = _int_column(long["layer"])
    long["n_over"] = _int_column(long["n_over"])
    x = alt.X("layer:Q", title=STATES_AXIS, axis=alt.Axis(tickMinStep=1, format="d"))
    y = alt.Y("norm:Q", title="token norm (log scale)", scale=alt.Scale(type="log"))
    dash = alt.StrokeDash("side:N", title="side", scale=alt.Scale(domain=list(SIDES), range=[[1, 0], [5, 3]]))
    colour = alt.Color("statistic:N", title="token norm",
                       scale=alt.Scale(domain=[*_NORM_COLOURS, limit],
                                       range=[*_NORM_COLOURS.values(), _THRESHOLD_COLOUR]),
                       legend=alt.Legend(orient="bottom", labelLimit=0))
    return alt.Chart(long).mark_line(point=True).encode(
        x=x, y=y, strokeDash=dash, color=colour,
        tooltip=[alt.Tooltip("side:N"), alt.Tooltip("layer:Q"), alt.Tooltip("statistic:N"),
                 alt.Tooltip("norm:Q", format=",.1f"), alt.Tooltip("n_over:Q", title="tokens over threshold")],
    ).properties(
        title=_title("Token norms per layer (outlier diagnostic)",
                     ([source] if source else []) + ["median, 99th percentile and largest token norm, "
                                                     "and the outlier threshold"]),
        width="container", height=320, autosize=_FIT_WIDTH)


def novelty_title(metric: str, start: int, end: int) -> str:
    """The heading of the novelty-window table: its window (states, 0 = embeddings) and metric."""
    return (f"Novelty window: {_metric_title(metric)} over layers {start}–{end} "
            f"(states, 0 = embeddings), mean / min / max per source")


# --------------------------------------------------------------------------- trajectories


def _pc_titles(variance: pd.DataFrame, source: str) -> tuple[str, str]:
    ratios = variance[variance["source"] == source].sort_values("component")["ratio"].astype(float).tolist()
    titles = []
    for i in range(2):
        if i < len(ratios) and _finite(ratios[i]):
            titles.append(f"PC{i + 1} ({100 * ratios[i]:.1f}% var)")
        else:
            titles.append(f"PC{i + 1}")
    return titles[0], titles[1]


#: Labels with the same text closer than this share of the plot's extent (either axis) are drawn once.
LABEL_CELL = 0.04


def _declutter_tags(data: pd.DataFrame) -> pd.Series:
    """``data.tag`` with repeats of one label in the same small cell of the plot blanked: paths
    that end (or start) close together get one "L<n>" between them, not a pile of them."""
    tags = data["tag"].copy()
    spans = [max(float(data[c].max() - data[c].min()), 1e-12) for c in ("pc1", "pc2")]
    seen = set()
    for i in np.flatnonzero(tags.to_numpy() != ""):
        cell = (tags.iat[i], *(int(np.floor((data[c].iat[i] - data[c].min()) / (LABEL_CELL * span)))
                                for c, span in zip(("pc1", "pc2"), spans)))
        if cell in seen:
            tags.iat[i] = ""
        seen.add(cell)
    return tags


def trajectory_chart(paths: pd.DataFrame, variance: pd.DataFrame, unit: str,
                     unit_ids: list[int] | None = None, source: str | None = None,
                     representation: str | None = None) -> alt.LayerChart:
    """PCA paths through the layers: one colour per token (or sequence), one line per (side, unit)
    connecting layers in order (baseline solid, trained dashed), points growing with the layer, and
    each path's start (layer 0) and end (last layer) labelled "L0" / "L<n>".  Axis titles carry the
    explained variance of the source's PC1/PC2; the subtitle names ``representation``.

    ``paths`` is ``RunReader.trajectories()``, ``variance`` ``RunReader.pca_variance()`` (component
    0 = PC1), both already filtered to one representation.  Rows are filtered to ``unit`` ('token' /
    'sequence') and ``unit_ids`` when given.  The PCA basis is per source, so with several sources
    in ``paths`` pass ``source``.  If more than :data:`MAX_ROWS` rows remain, only the first unit ids
    are drawn (the subtitle says so)."""
    _require(paths, PATH_COLUMNS, "trajectory_chart")
    _require(variance, VARIANCE_COLUMNS, "trajectory_chart (variance)")
    data = paths[paths["unit"] == unit]
    if source is None:
        sources = data["source"].unique()
        if len(sources) > 1:
            raise ValueError(f"trajectory_chart: paths hold several sources ({', '.join(map(str, sources))}); "
                             "pass source=")
        source = sources[0] if len(sources) else None
    data = data[data["source"] == source]
    if unit_ids is not None:
        data = data[data["unit_id"].isin(list(unit_ids))]
    data = data[["side", "unit_id", "label", "layer", "pc1", "pc2"]].dropna(subset=["pc1", "pc2"]).copy()
    data["unit_id"] = _int_column(data["unit_id"])
    data["layer"] = _int_column(data["layer"])
    data["label"] = data["label"].fillna("").astype(str)

    ids = np.sort(data["unit_id"].unique())
    subtitle = [_with_representation(f"{source} · {unit}s · baseline solid, trained dashed; "
                                     "points grow with the layer", representation)]
    if len(data) > MAX_ROWS and len(ids):
        per_unit = max(1, len(data) // len(ids))
        keep = ids[: max(1, MAX_ROWS // per_unit)]
        data = data[data["unit_id"].isin(keep)]
        subtitle.append(f"showing the first {len(keep)} of {len(ids)} {unit}s (row limit)")
    data["path"] = data["side"].astype(str) + ":" + data["unit_id"].astype(str)
    data = data.sort_values(["path", "layer"]).reset_index(drop=True)
    first = data.groupby("path")["layer"].transform("min")
    last = data.groupby("path")["layer"].transform("max")
    is_end = ((data["layer"] == first) & (data["side"] == SIDES[0])) | (data["layer"] == last)
    data["tag"] = np.where(is_end, "L" + data["layer"].astype(str), "")
    data["tag"] = _declutter_tags(data)

    x_title, y_title = _pc_titles(variance, source)
    x = alt.X("pc1:Q", title=x_title, scale=alt.Scale(zero=False))
    y = alt.Y("pc2:Q", title=y_title, scale=alt.Scale(zero=False))
    # tableau10: ten distinct hues (the theme's default pairs light and dark shades of one hue).
    colour = alt.Color("label:N", title=unit, sort=alt.SortField("unit_id"), scale=alt.Scale(scheme="tableau10"),
                       legend=alt.Legend(orient="bottom", columns=2, labelLimit=0, symbolType="circle"))
    tooltip = [alt.Tooltip("label:N", title=unit), alt.Tooltip("unit_id:Q", title="id"), alt.Tooltip("side:N"),
               alt.Tooltip("layer:Q"), alt.Tooltip("pc1:Q", format=".3f"), alt.Tooltip("pc2:Q", format=".3f")]
    base = alt.Chart(data)
    lines = base.mark_line(strokeWidth=1.6, opacity=0.8).encode(
        x=x, y=y, color=colour, detail="path:N", order=alt.Order("layer:Q", sort="ascending"),
        strokeDash=alt.StrokeDash("side:N", title="side",
                                  scale=alt.Scale(domain=list(SIDES), range=[[1, 0], [5, 3]])),
        tooltip=tooltip)
    points = base.mark_point(filled=True, opacity=0.9).encode(
        x=x, y=y, color=colour,
        size=alt.Size("layer:Q", title=STATES_AXIS, scale=alt.Scale(range=[10, 120])),
        shape=alt.Shape("side:N", title="side", scale=alt.Scale(domain=list(SIDES), range=["circle", "triangle"])),
        tooltip=tooltip)
    labels = base.transform_filter("datum.tag != ''").mark_text(dx=7, dy=-7, fontSize=11, fontWeight="bold").encode(
        x=x, y=y, text="tag:N",
        color=alt.Color("label:N", sort=alt.SortField("unit_id"), scale=alt.Scale(scheme="tableau10"), legend=None))
    return alt.layer(lines, points, labels).properties(
        title=_title("Trajectories through the layers (PCA)", subtitle), width="container", height=520,
        autosize=_FIT_WIDTH)


# --------------------------------------------------------------------------- tap weights and gates


#: Columns (logged steps) per tap-weight panel before steps are thinned.
MAX_TAP_STEPS = 80


def _tap_steps(taps: pd.DataFrame, what: str):
    """The tap weights thinned to at most :data:`MAX_TAP_STEPS` steps: (rows, kept steps, their
    colour domain, subtitle lines, distances)."""
    _require(taps, TAP_COLUMNS, what)
    data = taps[list(TAP_COLUMNS)].dropna().copy()
    for col in ("step", "layer", "distance"):
        data[col] = _int_column(data[col])
    total = int(data["step"].nunique())
    keep = _even_steps(data["step"], MAX_TAP_STEPS) if total else np.array([], dtype=int)
    data = data[data["step"].isin(keep)]
    domain = _observed_domain(data["weight"])
    subtitle = ["x: training step; y: block (layer); one panel per skip distance; " + _range_note(domain)]
    if len(keep) < total:
        subtitle.append(f"showing {len(keep)} of {total} logged steps (evenly subsampled, first and last kept)")
    distances = sorted(data["distance"].unique()) or [0]
    data = data.sort_values(["distance", "layer", "step"]).reset_index(drop=True)
    return data, keep, domain, subtitle, distances


def _tap_panel(data: pd.DataFrame, keep, domain, panel: int, height: int) -> alt.Chart:
    label_every = max(1, int(np.ceil(max(1, len(keep)) / max(1, panel // 40))))
    shown_steps = [int(v) for v in list(keep)[::label_every]]
    return alt.Chart(data).mark_rect().encode(
        x=alt.X("step:O", title="step", axis=alt.Axis(values=shown_steps, labelAngle=0)),
        y=alt.Y("layer:O", title=BLOCKS_AXIS, sort="ascending"),
        color=alt.Color("weight:Q", title="tap weight", scale=alt.Scale(domain=domain, scheme=HEATMAP_SCHEME)),
        tooltip=[alt.Tooltip("layer:O", title="block"), alt.Tooltip("distance:O"), alt.Tooltip("step:Q"),
                 alt.Tooltip("weight:Q", format=".4f")],
    ).properties(width=panel, height=height)


def _tap_height(data: pd.DataFrame) -> int:
    return int(min(480, max(120, 14 * max(1, int(data["layer"].nunique())))))


def tap_weight_evolution(taps: pd.DataFrame) -> alt.Chart:
    """Tap weight over training as one layer x step heatmap per skip distance (side by side,
    sized to fit :data:`PAGE_WIDTH` together), colour = weight on its observed range (named in
    the subtitle): the export's chart; the page draws :func:`tap_weight_panels`.

    A block's weights over its available distances sum to 1, so reading one column across the
    panels shows how that block splits its mix at that step; cells are empty where a block has
    no tap at that distance.  ``taps`` is ``RunReader.tap_weights()``.  Steps are thinned to at
    most :data:`MAX_TAP_STEPS` evenly spaced ones (first and last kept; the subtitle says so).
    A single-distance run has weight 1 everywhere: the page says so instead of drawing this."""
    data, keep, domain, subtitle, distances = _tap_steps(taps, "tap_weight_evolution")
    panel = int(max(100, min(420, (PAGE_WIDTH - 20 * (len(distances) - 1)) / len(distances))))
    return _tap_panel(data, keep, domain, panel, _tap_height(data)).facet(
        column=alt.Column("distance:O", title="skip distance", sort=distances),
    ).properties(title=_title("Tap weights over training", subtitle))


def tap_weight_panels(taps: pd.DataFrame) -> list[alt.Chart]:
    """:func:`tap_weight_evolution` as one chart per skip distance, each at its container's
    width (:func:`fit_width`) on the shared colour domain, for a page to lay out in columns."""
    data, keep, domain, subtitle, distances = _tap_steps(taps, "tap_weight_panels")
    height = _tap_height(data)
    return [fit_width(_tap_panel(data[data["distance"] == d], keep, domain, 300, height).properties(
        title=_title(f"Tap weights over training: distance {d}", subtitle))) for d in distances]


def _final_step(df: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    df = df.dropna()
    if df.empty:
        return df, None
    last = int(df["step"].max())
    return df[df["step"] == last], last


def _final_step_heatmap(df: pd.DataFrame, columns: Sequence[str], x: str, value: str, title: str,
                        empty: str) -> alt.Chart:
    """The last logged step of a (step, layer, x, value) series as a layer x ``x`` heatmap,
    coloured on the values' observed range (named in the subtitle)."""
    data, last = _final_step(df[list(columns)])
    data = data.copy()
    for col in ("step", "layer", x):
        data[col] = _int_column(data[col])
    domain = _observed_domain(data[value])
    sub = f"step {last}; {_range_note(domain)}" if last is not None else empty
    return _heatmap(data[["layer", x, value]], x, x, "layer", BLOCKS_AXIS, value, value, domain,
                    _title(title, sub)).properties(autosize=NATURAL_SIZE)


def tap_weight_heatmap(taps: pd.DataFrame) -> alt.Chart:
    """The final step's tap weights: x = distance, y = layer, colour = weight on its observed range."""
    _require(taps, TAP_COLUMNS, "tap_weight_heatmap")
    return _final_step_heatmap(taps, TAP_COLUMNS, "distance", "weight", "Final tap weights", "no tap weights logged")


def gate_alpha_heatmap(gates: pd.DataFrame) -> alt.Chart:
    """The final step's per-head gate alphas: x = head, y = layer, colour = alpha on its observed
    range (named in the subtitle)."""
    _require(gates, GATE_COLUMNS, "gate_alpha_heatmap")
    return _final_step_heatmap(gates, GATE_COLUMNS, "head", "alpha", "Final per-head gate alphas",
                               "no gate alphas logged")


# --------------------------------------------------------------------------- dosing / entropy


#: Height of one intensity row in the entropy heatmaps (readable, room for a label).
ENTROPY_ROW_PX = 28


def _intensity_label(x: float) -> str:
    """An intensity as charts name it: its number, and the preset's name where it is one
    (``0.1 (micro-dose)``), as the page's picker does the other way round."""
    name = next((k for k, v in DOSE_PRESETS.items() if v == float(x)), None)
    return f"{float(x):g}" + (f" ({name})" if name else "")


def entropy_heatmap(tokens: pd.DataFrame) -> alt.Chart:
    """Per-token next-token entropy (bits): x = position, y = intensity, tooltip with the token.

    ``tokens`` is ``RunReader.token_entropy()`` joined with ``generations()`` for ``intensity``
    (and, where a run has bio rows, a ``label`` naming each row, used instead of the intensity).
    When several generations share an intensity each gets its own row ("intensity · #gen_id").
    Beyond :data:`MAX_ROWS` cells only the first positions are kept (the subtitle says so)."""
    _require(tokens, TOKEN_COLUMNS, "entropy_heatmap")
    named = "label" in tokens.columns
    data = tokens[list(TOKEN_COLUMNS) + (["label"] if named else [])].dropna(subset=["gen_id", "intensity", "pos"]).copy()
    data["gen_id"] = _int_column(data["gen_id"])
    data["pos"] = _int_column(data["pos"])
    data["intensity"] = data["intensity"].astype(float)
    data["token_text"] = data["token_text"].fillna("").astype(str)
    if not named:
        data["label"] = data["intensity"].map(_intensity_label)

    gens = data[["intensity", "gen_id", "label"]].drop_duplicates(["gen_id"]).sort_values(["intensity", "gen_id"])
    shared = gens["label"].duplicated(keep=False)
    labels = {(i, g): (lab + (f" · #{g}" if s else ""))
              for i, g, lab, s in zip(gens["intensity"], gens["gen_id"], gens["label"], shared)}
    order = [labels[(i, g)] for i, g in zip(gens["intensity"], gens["gen_id"])]
    data["row"] = [labels[(i, g)] for i, g in zip(data["intensity"], data["gen_id"])]

    subtitle = "x: generated token position; y: intensity"
    n_pos = data["pos"].nunique()
    if len(data) > MAX_ROWS and len(gens):
        max_pos = int(np.sort(data["pos"].unique())[max(1, MAX_ROWS // len(gens)) - 1])
        data = data[data["pos"] <= max_pos]
        subtitle = [subtitle, f"showing positions up to {max_pos} of {n_pos} (row limit)"]
    data = data[["row", "gen_id", "intensity", "pos", "token_text", "entropy"]].sort_values(["row", "pos"])

    width = int(min(PAGE_WIDTH + 60, max(300, 14 * data["pos"].nunique())))  # legend on top: room for 60 more
    height = ENTROPY_ROW_PX * max(1, len(order))
    return alt.Chart(data.reset_index(drop=True)).mark_rect().encode(
        x=alt.X("pos:O", title="token position", sort="ascending",
                axis=alt.Axis(labelOverlap=True, labelAngle=0)),
        y=alt.Y("row:O", title="row" if named else "intensity", sort=order, axis=alt.Axis(labelLimit=0)),
        color=alt.Color("entropy:Q", title="next-token entropy (bits)", scale=alt.Scale(scheme="inferno", zero=True),
                        legend=alt.Legend(orient="top", direction="horizontal", gradientLength=220, titleLimit=0)),
        tooltip=[alt.Tooltip("token_text:N", title="token"), alt.Tooltip("entropy:Q", title="entropy (bits)", format=".3f"),
                 alt.Tooltip("intensity:Q", format="g"), alt.Tooltip("pos:Q", title="position"),
                 alt.Tooltip("gen_id:Q", title="generation")],
    ).properties(title=_title("Per-token next-token entropy (bits)", subtitle), width=width, height=height,
                 autosize=NATURAL_SIZE)


def dose_overview(gens: pd.DataFrame) -> alt.Chart:
    """Mean next-token entropy (bits) of every prompt (row) at every intensity (column).

    ``gens`` has one row per continuation: prompt_line, prompt, intensity, mean_entropy (as
    ``RunReader.generations()``; several seeds of a prompt and intensity are averaged).  Row
    labels are the prompt's first characters; the tooltip has the whole prompt. Where a run has
    bio rows, ``gens`` has a ``label`` per row and the columns are those rows."""
    _require(gens, ("prompt_line", "prompt", "intensity", "mean_entropy"), "dose_overview")
    named = "label" in gens.columns
    data = gens[["prompt_line", "prompt", "intensity", "mean_entropy"] + (["label"] if named else [])].copy()
    data["prompt_line"] = _int_column(data["prompt_line"])
    data["intensity"] = data["intensity"].astype(float)
    if not named:
        data["label"] = data["intensity"].map(_intensity_label)
    data = data.groupby(["prompt_line", "prompt", "intensity", "label"], as_index=False)["mean_entropy"].mean()
    data["dose"] = data["label"]
    prompts = data[["prompt_line", "prompt"]].drop_duplicates().sort_values("prompt_line")
    labels = {}
    for k, (line, text) in enumerate(zip(prompts["prompt_line"], prompts["prompt"]), 1):
        short = " ".join(str(text).split())
        labels[(line, text)] = f"{k}. " + (short if len(short) <= 40 else short[:39] + "…")
    data["row"] = [labels[(line, text)] for line, text in zip(data["prompt_line"], data["prompt"])]
    doses = list(dict.fromkeys(data.sort_values("intensity", kind="stable")["dose"]))
    finite = data["mean_entropy"].astype(float)
    finite = finite[np.isfinite(finite)]
    domain = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if domain[0] == domain[1]:
        domain = (domain[0], domain[0] + 1e-6)
    return alt.Chart(data[["row", "prompt", "dose", "intensity", "mean_entropy"]]).mark_rect().encode(
        x=alt.X("dose:O", title="row" if named else "intensity", sort=doses,
                axis=alt.Axis(labelAngle=-30, labelLimit=0)),  # "0.3 (double dose)" labels collide flat
        y=alt.Y("row:O", title="prompt", sort=list(labels.values()), axis=alt.Axis(labelLimit=320)),
        color=alt.Color("mean_entropy:Q", title="mean entropy (bits)",
                        scale=alt.Scale(domain=list(domain), scheme="inferno")),
        tooltip=[alt.Tooltip("prompt:N"), alt.Tooltip("intensity:Q", format="g"),
                 alt.Tooltip("mean_entropy:Q", title="mean entropy (bits)", format=".3f")],
    ).properties(title=_title("Mean next-token entropy per prompt and intensity (bits)"),
                 width=int(min(PAGE_WIDTH - 400, max(160, 90 * len(doses)))),
                 height=ENTROPY_ROW_PX * max(1, len(labels)), autosize=NATURAL_SIZE)


def layer_entropy_profile(layers: pd.DataFrame) -> alt.Chart:
    """Mean hidden-state entropy (bits) per layer, one line per intensity.  ``layers`` may be per token (e.g.
    ``RunReader.layer_entropy()`` joined with intensity) or already averaged: rows are averaged per
    (intensity, layer) here either way (per ``label`` too where a run has bio rows)."""
    _require(layers, LAYER_ENTROPY_COLUMNS, "layer_entropy_profile")
    named = "label" in layers.columns
    keys = ["intensity"] + (["label"] if named else [])
    data = layers[list(LAYER_ENTROPY_COLUMNS) + (["label"] if named else [])].dropna()
    data = data.groupby(keys + ["layer"], as_index=False)["entropy"].mean()
    data["layer"] = _int_column(data["layer"])
    data["intensity"] = data["intensity"].astype(float)
    data = data.sort_values(keys + ["layer"]).reset_index(drop=True)
    color = (alt.Color("label:N", title="row", sort=list(dict.fromkeys(data["label"])), legend=alt.Legend(orient="right"))
             if named else alt.Color("intensity:O", title="intensity", scale=alt.Scale(scheme="plasma"),
                                     legend=alt.Legend(orient="right")))
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("layer:Q", title=STATES_AXIS, axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("entropy:Q", title="mean entropy (bits)", scale=alt.Scale(zero=False)),
        color=color,
        tooltip=[alt.Tooltip("intensity:Q", format="g"), alt.Tooltip("layer:Q"),
                 alt.Tooltip("entropy:Q", title="mean entropy (bits)", format=".3f")],
    ).properties(title=_title("Hidden-state entropy through the layers (bits)",
                        "entropy of h[l]^2 / sum(h[l]^2), mean over generated tokens"),
                 width="container", height=300)

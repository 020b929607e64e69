"""Altair charts of the bio-inspired interventions: their state during generation and their
evaluation. Same conventions as :mod:`psilonet.app.charts`: DataFrames in, a chart out, no I/O,
required columns checked first (``ValueError`` naming the missing ones)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from psilonet.app.charts import BLOCKS_AXIS, _heatmap, _int_column, _require, _title

POOL_COLUMNS = ("label", "layer", "head", "level", "attended")
FAST_NORM_COLUMNS = ("label", "layer", "norm")
EVAL_COLUMNS = ("corpus", "mechanism", "strength", "n", "loss_diff", "loss_ci_low", "loss_ci_high",
                "entropy_diff", "entropy_ci_low", "entropy_ci_high")


def pool_heatmap(pool: pd.DataFrame, label: str, value: str = "attended") -> alt.Chart:
    """Synaptic fatigue of one generation per layer (y) and head (x), averaged over its generated
    tokens: ``attended``, the pool level of the keys the head attends to (1 = it reads rested
    keys), or ``level``, the mean pool level over all keys (nearly the same in every head, since
    each query spends the same total; see :class:`psilonet.generation.bio.Bio`)."""
    if value not in ("attended", "level"):
        raise ValueError(f"value: 'attended' or 'level', got {value!r}")
    _require(pool, POOL_COLUMNS, "pool_heatmap")
    data = pool[pool["label"] == label][["layer", "head", value]].dropna().copy()
    data["layer"], data["head"] = _int_column(data["layer"]), _int_column(data["head"])
    low = float(data[value].min()) if len(data) else 0.0
    domain = (min(low, 0.999), 1.0)
    what = "pool of the attended keys" if value == "attended" else "mean pool over keys"
    return _heatmap(data, "head", "head", "layer", "layer", value, "pool level", domain,
                    _title(f"Readily-releasable pool: {label}", f"{what}, mean over generated tokens"),
                    scheme="magma")


def fast_norm_chart(norms: pd.DataFrame) -> alt.Chart:
    """Hebbian fast weights: Frobenius norm of each block's fast weight, averaged over the
    generated tokens, one line per generation (log scale: late layers write far larger outputs)."""
    _require(norms, FAST_NORM_COLUMNS, "fast_norm_chart")
    data = norms[list(FAST_NORM_COLUMNS)].dropna().copy()
    data = data[data["norm"] > 0]
    data["layer"] = _int_column(data["layer"])
    return alt.Chart(data.reset_index(drop=True)).mark_line(point=True).encode(
        x=alt.X("layer:Q", title=BLOCKS_AXIS, axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("norm:Q", title="|W_fast| (Frobenius)", scale=alt.Scale(type="log")),
        color=alt.Color("label:N", title="generation", legend=alt.Legend(labelLimit=0)),
        tooltip=[alt.Tooltip("label:N", title="generation"), alt.Tooltip("layer:Q"),
                 alt.Tooltip("norm:Q", title="|W_fast|", format=".3f")],
    ).properties(title=_title("Hebbian fast-weight norm per layer", "mean over generated tokens"),
                 width="container", height=280)


def _bio_eval_layers(summary: pd.DataFrame, value: str, what: str):
    """(the mechanisms' rows, the layered chart without data, its title) for ``value``."""
    if value not in ("loss", "entropy"):
        raise ValueError(f"value: 'loss' or 'entropy', got {value!r}")
    _require(summary, EVAL_COLUMNS, what)
    data = summary[summary["mechanism"] != "sober"][
        ["corpus", "mechanism", "strength", "n", f"{value}_diff", f"{value}_ci_low", f"{value}_ci_high"]].copy()
    data.columns = ["corpus", "mechanism", "strength", "n", "diff", "low", "high"]
    data["n"] = _int_column(data["n"])
    unit = "nats" if value == "loss" else "bits"
    title = "next-token loss" if value == "loss" else "next-token entropy"
    base = alt.Chart().encode(
        x=alt.X("strength:Q", title="strength"),
        color=alt.Color("mechanism:N", title="mechanism"))
    tooltip = [alt.Tooltip("mechanism:N"), alt.Tooltip("strength:Q", format="g"),
               alt.Tooltip("diff:Q", title=f"mean difference ({unit})", format="+.4f"),
               alt.Tooltip("low:Q", title="95% CI low", format="+.4f"),
               alt.Tooltip("high:Q", title="95% CI high", format="+.4f"), alt.Tooltip("n:Q", title="windows")]
    lines = base.mark_line(point=True).encode(y=alt.Y("diff:Q", title=f"{title} minus sober ({unit})"),
                                              tooltip=tooltip)
    bars = base.mark_errorbar(ticks=True).encode(y=alt.Y("low:Q", title=""), y2="high:Q")
    zero = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(0))
    return data.reset_index(drop=True), (zero, bars, lines), f"Bio mechanisms: {title} against sober"


_EVAL_SUBTITLE = "paired by window; mean and Student-t 95% CI over windows"


def bio_eval_chart(summary: pd.DataFrame, value: str = "loss") -> alt.FacetChart:
    """Paired difference with sober (mean and 95% CI over windows) against strength, one line per
    mechanism, one panel per corpus. ``value`` is ``loss`` (nats) or ``entropy`` (bits). The
    export's chart; the page draws :func:`bio_eval_panels`."""
    data, layers, title = _bio_eval_layers(summary, value, "bio_eval_chart")
    return alt.layer(*layers, data=data).properties(width=300, height=240).facet(
        column=alt.Column("corpus:N", title=None)
    ).properties(title=_title(title, _EVAL_SUBTITLE))


def bio_eval_panels(summary: pd.DataFrame, value: str = "loss") -> list[alt.LayerChart]:
    """:func:`bio_eval_chart` as one chart per corpus (a page fits each to its column)."""
    data, layers, title = _bio_eval_layers(summary, value, "bio_eval_panels")
    return [alt.layer(*layers, data=data[data["corpus"] == c]).properties(
        height=240, title=_title(f"{title}: {c}", _EVAL_SUBTITLE)) for c in dict.fromkeys(data["corpus"])]

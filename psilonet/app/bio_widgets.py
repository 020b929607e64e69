"""The Dosed generation page's bio-intervention section: strength pickers and state charts.

Kept out of the page so that the page adds the mechanisms with a few calls: :func:`controls`
draws the two strength pickers (presets and a custom value, synced with the URL;
:func:`psilonet.generation.dosing.combine_rows` makes the batch rows of them and the
intensities), :func:`state_charts` draws the mechanisms' state of a live or stored run and
returns the charts for the HTML export.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from psilonet.app import bio_charts, charts, helpers as app, layout, presets
from psilonet.generation import bio

MAX_ROWS = 16  # rows of one page generation (intensities x fatigue x hebbian)


def _strengths(title: str, key: str, help: str) -> list[float]:
    names = list(bio.PRESETS)
    named, custom = presets.split(key, app.param(key, [0.0], app.float_list, lo=0.0, hi=bio.MAX_STRENGTH),
                                  bio.PRESETS, None)
    chosen = st.multiselect(title, names, default=named or (None if custom else ["off"]), key=f"bio_{key}",
                            help=help, format_func=presets.label(bio.PRESETS))
    custom = st.slider(f"Custom {title.lower()} (added when > 0)", 0.0, bio.MAX_STRENGTH, custom, 0.05,
                       key=f"bio_{key}_custom")
    values = sorted({bio.PRESETS[n] for n in chosen} | ({float(custom)} if custom > 0 else set()))
    return values or [0.0]


def controls() -> tuple[list[float], list[float]]:
    """(fatigue strengths, hebbian strengths) chosen on the page; ``[0.0]`` means off."""
    fp, hp = bio.FatigueParams(), bio.HebbianParams()
    with st.expander("Bio-inspired interventions (beside the doses)"):
        st.caption("Every combination of an intensity, a fatigue and a Hebbian strength is one row of the batch. "
                   "Details and measured costs: the Bio interventions page.")
        fatigue = _strengths("Synaptic fatigue", "fatigue",
                             f"Heads tire of keys they attend to: logit + s·log(max(r, {fp.eps:g})), pool r used at "
                             f"{fp.k_use:g}·p per step and refilled with tau_rrp = {fp.tau_rrp:g} steps.")
        hebbian = _strengths("Hebbian fast weights", "hebbian",
                             f"Each block's MLP output + s·(x̂ W_fast), W_fast a decaying (lambda = {hp.decay:g}) "
                             f"rank-{hp.rank} trace of recent input/output pairs, gated by the block's activity.")
    app.set_params(fatigue=fatigue if any(fatigue) else None, hebbian=hebbian if any(hebbian) else None)
    return fatigue, hebbian


def state_charts(pool: pd.DataFrame, norms: pd.DataFrame, labels: dict[int, str]) -> list[tuple[str, object]]:
    """Draw the bio state of the generations in ``labels`` (gen_id -> row label): their pool
    levels and fast-weight norms as stored (``RunReader.bio_pool()``/``bio_fast_norm()``, or
    ``dose_frames.bio_frames`` live). Returns ``(title, chart)`` pairs for the export."""
    pool = pool[pool.gen_id.isin(list(labels))].assign(label=lambda d: d.gen_id.map(labels))
    norms = norms[norms.gen_id.isin(list(labels))].assign(label=lambda d: d.gen_id.map(labels))
    if pool.empty and norms.empty:
        return []
    st.subheader("Bio-intervention state")
    out = []
    if not pool.empty:
        heatmaps = [bio_charts.pool_heatmap(pool, label) for label in pool["label"].unique()]
        combined = heatmaps[0] if len(heatmaps) == 1 else charts.side_by_side(heatmaps)
        layout.draw_panels(heatmaps)
        out.append(("Synaptic fatigue: pool level per layer and head", combined))
    if not norms.empty:
        chart = bio_charts.fast_norm_chart(norms)
        st.altair_chart(chart, width="stretch")
        out.append(("Hebbian fast-weight norm per layer", chart))
    return out

"""Similarity: baseline vs trained representations per layer, per head and across layers."""

from functools import partial

import streamlit as st

from psilonet.analysis import representation as rep
from psilonet.app import charts, layout
from psilonet.app import helpers as app
from psilonet.app import old_runs

METRICS = charts.METRIC_TITLES

st.title("Similarity")
st.caption("CKA compares the token-by-token similarity structure of two representations (1 = the same "
           "up to rotation and scale); debiased CKA removes the small-sample bias (independent data gives ~0). "
           "SVCCA keeps the top singular directions (99% variance) and averages canonical correlations; "
           "PWCCA weights canonical correlations by how much of the baseline's neurons they explain.")
run = app.run_picker("Analysis run", ("analysis",))
if run is not None:
    representation = st.radio(
        "Representation", list(rep.REPRESENTATIONS), format_func=rep.LABELS.get, horizontal=True,
        index=list(rep.REPRESENTATIONS).index(app.param("rep", rep.DEFAULT, str, list(rep.REPRESENTATIONS))),
        help="rms: each token's state divided by its root-mean-square (what the next block's RMSNorm reads); "
             "raw: as captured, dominated by a few attention-sink tokens of huge norm; no-sink: raw without "
             f"the tokens whose norm exceeds {rep.SINK_RATIO:g}x the layer's median at any layer.")
    sim = app.read(run.name, "similarity", None, None, representation)
    if sim is not None and sim.empty:
        old_runs.no_results_under(run, representation, "results")
    elif sim is not None:
        sources = list(dict.fromkeys(sim.source))
        names = {s: f"{s} · {sim[sim.source == s].dataset.iloc[0]}" for s in sources}
        metric = st.radio("Metric", list(METRICS), format_func=METRICS.get, horizontal=True,
                          index=list(METRICS).index(app.param("metric", "cka", str, list(METRICS))))
        shown = st.multiselect("Sources (side by side)", sources, format_func=names.get, default=app.known_items(
            "sources", [s for s in app.param("sources", ",".join(sources)).split(",") if s], sources) or sources)
        per_layer = sim[(sim.view == "layer") & sim.source.isin(shown)]
        n_layers = int(sim.layer.max()) + 1 if sim.layer.notna().any() else 1
        lo, hi = app.param("layers", (n_layers // 3, 2 * n_layers // 3), app.int_pair, lo=0, hi=n_layers - 1)
        window = st.slider("Novelty window (states, 0 = embeddings)", 0, max(n_layers - 1, 1), (lo, hi))
        app.set_params(rep=representation, metric=metric, sources=shown if set(shown) != set(sources) else None,
                       layers=list(window))
        # Charts are drawn from specs cached per (run, choices) (app.chart): the keys name every choice.
        picked = tuple(shown)
        exported = []
        if not per_layer.empty:
            curve = partial(charts.layer_similarity_curve, per_layer, metric, representation)
            app.chart(("similarity-curve", run.name, representation, metric, picked), curve, width="stretch")
            st.markdown(f"**{charts.novelty_title(metric, *window)}**")
            st.dataframe(charts.novelty_stats(per_layer, metric, *window), hide_index=True)
            exported.append((f"{METRICS[metric]} per layer ({representation})", curve))
        else:
            st.caption("Baseline-only captures have no baseline-vs-trained curve; see the cross-layer matrix.")
        head_metric = metric if metric in ("cka", "cka_debiased") else "cka"
        heads = sim[(sim.view == "head") & (sim.metric == head_metric) & sim.source.isin(shown)]
        if not heads.empty:
            st.subheader(f"Per head ({METRICS[head_metric]})")
            if representation == "rms":
                st.caption("Head outputs are compared as captured: nothing normalises them in the model and they "
                           "carry no sink outlier, so this grid equals the raw one.")
            panels = partial(charts.head_heatmap_panels, heads, head_metric, picked, representation)
            layout.chart_panels(("similarity-heads", run.name, representation, head_metric, picked),
                                lambda: [charts.fit_width(c) for c in panels()], heads.source.nunique())
            grid = partial(charts.head_heatmaps, heads, head_metric, picked, representation)
            exported.append((f"{METRICS[head_metric]} per head ({representation})", grid))
        cross = sim[(sim.view == "cross_layer") & sim.source.isin(shown)]
        if not cross.empty:
            st.subheader("Cross-layer CKA")
            panels = partial(charts.cross_layer_panels, cross, picked, representation)
            layout.chart_panels(("similarity-cross", run.name, representation, picked),
                                lambda: [charts.fit_width(c) for c in panels()], cross.source.nunique())
            matrix = partial(charts.cross_layer_heatmaps, cross, picked, representation)
            exported.append((f"Cross-layer linear CKA ({representation})", matrix))
        st.caption("Look for layers where CKA drops below 1: that is where the skip pathways changed the "
                   "representation. In the heatmaps, a bright diagonal means layers still correspond one to one; "
                   "off-diagonal brightness means a trained layer resembles an earlier or later baseline layer.")

        st.subheader("Outlier tokens (attention sinks)")
        st.caption(f"Per layer, the distribution of token norms in each capture; a token is an outlier above "
                   f"{rep.SINK_RATIO:g}x the layer's median norm. The no-sink representation drops every token "
                   "that is an outlier at any layer.")
        sinks = app.read(run.name, "sink_tokens")
        for source in shown:
            stats = app.read_optional(source, "norm_stats")
            if stats is None or stats.empty:
                st.caption(f"`{source}` was captured before the outlier diagnostic existed; capture it again "
                           "to see its token norms.")
                continue
            profile = partial(charts.token_norm_profile, stats, names[source])
            app.chart(("token-norms", source, names[source]), profile, width="stretch")
            exported.append((f"Token norms per layer: {names[source]}", profile))
            table = app.outlier_table(source)
            st.dataframe(table, hide_index=True, column_config={
                "median norm": st.column_config.NumberColumn(format="%.1f"),
                "p99 norm": st.column_config.NumberColumn(format="%.1f"),
                "max norm": st.column_config.NumberColumn(format="%.0f")})
            if sinks is not None and not sinks.empty:
                dropped = sinks[sinks.source == source]
                st.caption(f"no-sink dropped {len(dropped)} tokens of `{source}` "
                           f"(window positions: {', '.join(map(str, sorted(set(dropped.pos))[:8]))}).")
        app.export_button("Similarity", exported, {"run": run.name, "representation": representation,
                                                   "metric": metric, "layers": f"{window[0]}-{window[1]}"})

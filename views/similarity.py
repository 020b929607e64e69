"""Similarity: baseline vs trained representations per layer, per head and across layers."""

import streamlit as st

from psilonet.app import charts, helpers as app

METRICS = {"cka": "linear CKA", "cka_debiased": "debiased CKA", "svcca": "SVCCA", "pwcca": "PWCCA"}

st.title("Similarity")
st.caption("CKA compares the token-by-token similarity structure of two representations (1 = the same "
           "up to rotation and scale); debiased CKA removes the small-sample bias (independent data gives ~0). "
           "SVCCA keeps the top singular directions (99% variance) and averages canonical correlations; "
           "PWCCA weights canonical correlations by how much of the baseline's neurons they explain.")
run = app.run_picker("Analysis run", ("analysis",))
if run is not None:
    sim = app.read(run.name, "similarity")
    if sim is not None and sim.empty:
        st.info("This analysis has no similarity results.")
    elif sim is not None:
        sources = list(dict.fromkeys(sim.source))
        names = {s: f"{s} · {sim[sim.source == s].dataset.iloc[0]}" for s in sources}
        metric = st.radio("Metric", list(METRICS), format_func=METRICS.get, horizontal=True,
                          index=list(METRICS).index(app.param("metric", "cka", str, list(METRICS))))
        shown = st.multiselect("Sources (side by side)", sources, format_func=names.get,
                               default=[s for s in app.param("sources", ",".join(sources)).split(",") if s in sources]
                               or sources)
        per_layer = sim[(sim.view == "layer") & sim.source.isin(shown)]
        n_layers = int(sim.layer.max()) + 1 if sim.layer.notna().any() else 1
        lo, hi = app.param("layers", (n_layers // 3, 2 * n_layers // 3), app.int_pair)
        lo, hi = max(0, min(lo, n_layers - 1)), max(0, min(hi, n_layers - 1))
        window = st.slider("Novelty window (layers, 0 = embeddings)", 0, max(n_layers - 1, 1), (lo, min(max(hi, lo), n_layers - 1)))
        app.set_params(metric=metric, sources=shown if set(shown) != set(sources) else None, layers=list(window))
        exported = []
        if not per_layer.empty:
            curve = charts.layer_similarity_curve(per_layer, metric)
            st.altair_chart(curve, width="stretch")
            st.dataframe(charts.novelty_stats(per_layer, metric, *window), hide_index=True)
            exported.append((f"Per-layer {METRICS[metric]}", curve))
        else:
            st.caption("Baseline-only captures have no baseline-vs-trained curve; see the cross-layer matrix.")
        head_metric = metric if metric in ("cka", "cka_debiased") else "cka"
        heads = sim[(sim.view == "head") & (sim.metric == head_metric) & sim.source.isin(shown)]
        if not heads.empty:
            st.subheader(f"Per head ({METRICS[head_metric]})")
            domain = charts.similarity_domain(heads, "head", head_metric)
            grid = charts.side_by_side([charts.head_heatmap(heads, head_metric, s, domain)
                                        for s in shown if (heads.source == s).any()])
            st.altair_chart(grid)
            exported.append(("Per-head CKA", grid))
        cross = sim[(sim.view == "cross_layer") & sim.source.isin(shown)]
        if not cross.empty:
            st.subheader("Cross-layer CKA")
            domain = charts.similarity_domain(cross, "cross_layer", "cka")
            matrix = charts.side_by_side([charts.cross_layer_heatmap(cross, s, domain)
                                          for s in shown if (cross.source == s).any()])
            st.altair_chart(matrix)
            exported.append(("Cross-layer CKA", matrix))
        st.caption("Look for layers where CKA drops below 1: that is where the skip pathways changed the "
                   "representation. In the heatmaps, a bright diagonal means layers still correspond one to one; "
                   "off-diagonal brightness means a trained layer resembles an earlier or later baseline layer.")
        app.export_button("Similarity", exported, {"run": run.name, "metric": metric, "layers": f"{window[0]}-{window[1]}"})

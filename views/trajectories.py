"""Trajectories: PCA paths of tokens and sequences through the layers, baseline vs trained."""

import streamlit as st

from psilonet.app import charts, helpers as app

st.title("Trajectories")
st.caption("One PCA is fitted on hidden states pooled over all layers and both models; each path shows how "
           "a token's (or a sequence's mean) state moves from the embeddings (layer 0) to the last layer.")
run = app.run_picker("Analysis run", ("analysis",))
if run is not None:
    paths, variance = app.read(run.name, "trajectories"), app.read(run.name, "pca_variance")
    if paths is not None and variance is not None and not paths.empty:
        sources = list(dict.fromkeys(paths.source))
        source = st.selectbox("Capture", sources, index=sources.index(app.param("source", sources[0], str, sources)))
        unit = st.radio("Unit", ["token", "sequence"], horizontal=True,
                        index=["token", "sequence"].index(app.param("unit", "token", str, ["token", "sequence"])))
        mine = paths[(paths.source == source) & (paths.unit == unit)]
        labels = mine.drop_duplicates("unit_id").set_index("unit_id").label
        wanted = [int(x) for x in app.param("ids", "", str).split(",") if x.strip().isdigit() and int(x) in labels.index]
        ids = st.multiselect(f"{unit.title()}s", list(labels.index), default=wanted or list(labels.index[:4]),
                             format_func=lambda i: labels[i])
        app.set_params(source=source, unit=unit, ids=ids)
        chart = charts.trajectory_chart(paths[paths.source == source], variance[variance.source == source], unit, ids)
        st.altair_chart(chart, width="stretch")
        ratio = variance[variance.source == source].ratio
        st.caption(f"Explained variance: PC1 {ratio.iloc[0]:.1%}, PC2 {ratio.iloc[1]:.1%} "
                   f"(first {len(ratio)} components: {ratio.sum():.1%}).")
        app.export_button("Trajectories", [("PCA trajectories", chart)],
                          {"run": run.name, "source": source, "unit": unit, "ids": ids})

"""Trajectories: PCA paths of tokens and sequences through the layers, baseline vs trained."""

from functools import partial

import streamlit as st

from psilonet.analysis import representation as rep
from psilonet.app import charts
from psilonet.app import helpers as app
from psilonet.app import old_runs

UNITS = ["token", "sequence"]
# Each unit keeps its own selection in the URL, so that switching unit never reuses token ids.
ID_PARAMS = {"token": "tokens", "sequence": "seqs"}

st.title("Trajectories")
st.caption("One PCA per representation is fitted on hidden states pooled over all layers and both models; each "
           "path shows how a token's (or a sequence's mean) state moves from the embeddings (L0) to the last "
           "layer. On raw states the first principal component is the attention-sink direction, so paths "
           "collapse onto a line; the RMS-normalised states show the structure.")
run = app.run_picker("Analysis run", ("analysis",))
if run is not None:
    representation = st.radio(
        "Representation", list(rep.REPRESENTATIONS), format_func=rep.LABELS.get, horizontal=True,
        index=list(rep.REPRESENTATIONS).index(app.param("rep", rep.DEFAULT, str, list(rep.REPRESENTATIONS))))
    paths = app.read(run.name, "trajectories", representation)
    variance = app.read(run.name, "pca_variance", representation)
    if paths is not None and variance is not None and paths.empty:
        old_runs.no_results_under(run, representation, "trajectories")
    elif paths is not None and variance is not None:
        sources = list(dict.fromkeys(paths.source))
        source = st.selectbox("Capture", sources, index=sources.index(app.param("source", sources[0], str, sources)))
        unit = st.radio("Unit", UNITS, horizontal=True, index=UNITS.index(app.param("unit", "token", str, UNITS)))
        mine = paths[(paths.source == source) & (paths.unit == unit)]
        labels = mine.drop_duplicates("unit_id").set_index("unit_id").label
        key = ID_PARAMS[unit]
        wanted = app.known_items(key, [int(x) if x.strip().isdigit() else x for x in app.param(key, "", str).split(",")
                                       if x.strip()], list(labels.index))
        ids = st.multiselect(f"{unit.title()}s", list(labels.index), default=wanted or list(labels.index[:6]),
                             format_func=lambda i: labels[i], key=f"ids_{unit}")
        app.set_params(rep=representation, source=source, unit=unit, **{key: ids})
        # Drawn from a spec cached per (run, choices) (app.chart): the key names every choice.
        chart = partial(charts.trajectory_chart, paths[paths.source == source], variance[variance.source == source],
                        unit, tuple(ids), representation=representation)
        app.chart(("trajectories", run.name, representation, source, unit, tuple(ids)), chart, width="stretch")
        ratio = variance[variance.source == source].ratio
        st.caption(f"Explained variance ({rep.LABELS[representation]}): PC1 {ratio.iloc[0]:.1%}, "
                   f"PC2 {ratio.iloc[1]:.1%} (first {len(ratio)} components: {ratio.sum():.1%}).")
        app.export_button("Trajectories", [(f"PCA trajectories ({representation})", chart)],
                          {"run": run.name, "representation": representation, "source": source, "unit": unit,
                           key: ids})

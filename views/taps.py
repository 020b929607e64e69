"""Tap weights: which skip distance each block prefers, over training; per-head gate alphas."""

from functools import partial

import streamlit as st

from psilonet.app import charts, helpers as app, layout

st.title("Tap weights")
st.caption("Each block mixes its skip taps (history distances) with a softmax over the distances available "
           "at its depth.")
run = app.run_picker("Training run", ("train",), help="Starts on the newest run with several skip distances.",
                     prefer=lambda r: len(app.config_of(r).get("skip", {}).get("distances", [])) > 1)
if run is not None:
    taps, gates = app.read(run.name, "tap_weights"), app.read(run.name, "gate_alphas")
    exported = []
    distances = sorted(taps["distance"].dropna().unique()) if taps is not None and not taps.empty else []
    if len(distances) == 1:
        st.info(f"This run has a single skip distance ({int(distances[0])}): every block's only tap has weight 1 "
                "at every step, so there is nothing to evolve." + (" Its per-head gates are below." if
                                                                   gates is not None and not gates.empty else ""))
    elif distances:
        # Drawn from specs cached per run (app.chart): a published run never changes.
        layout.chart_panels(("tap-evolution", run.name), partial(charts.tap_weight_panels, taps), len(distances))
        evolution = partial(charts.tap_weight_evolution, taps)
        final = partial(charts.tap_weight_heatmap, taps)
        app.chart(("tap-final", run.name), final, width="content")
        exported += [("Tap weights over training", evolution), ("Final tap weights", final)]
    else:
        st.info("This run logged no tap weights.")
    if gates is not None and not gates.empty:
        st.subheader("Per-head gate alphas")
        st.caption("alpha_h = sigmoid(gate logit) x dial, at the final step and dial 1.")
        gate_chart = partial(charts.gate_alpha_heatmap, gates)
        app.chart(("gate-alphas", run.name), gate_chart, width="content")
        exported.append(("Gate alphas", gate_chart))
    elif run.config.get("skip", {}).get("gates"):
        st.info("This run has gates but logged no alphas.")
    app.export_button("Tap weights", exported, {"run": run.name})

"""Tap weights: which skip distance each block prefers, over training; per-head gate alphas."""

import streamlit as st

from psilonet.app import charts, helpers as app

st.title("Tap weights")
st.caption("Each block mixes its skip taps (history distances) with a softmax over the distances available "
           "at its depth; single-distance runs have one tap per block with weight 1.")
run = app.run_picker("Training run", ("train",))
if run is not None:
    taps, gates = app.read(run.name, "tap_weights"), app.read(run.name, "gate_alphas")
    exported = []
    if taps is not None and not taps.empty:
        evolution = charts.tap_weight_evolution(taps)
        st.altair_chart(evolution)
        final = charts.tap_weight_heatmap(taps)
        st.altair_chart(final)
        exported += [("Tap-weight evolution", evolution), ("Final tap weights", final)]
    if gates is not None and not gates.empty:
        st.subheader("Per-head gate alphas")
        st.caption("alpha_h = sigmoid(gate logit) x dial, at the final step and dial 1.")
        gate_chart = charts.gate_alpha_heatmap(gates)
        st.altair_chart(gate_chart)
        exported.append(("Gate alphas", gate_chart))
    elif run.config.get("skip", {}).get("gates"):
        st.info("This run has gates but logged no alphas.")
    app.export_button("Tap weights", exported, {"run": run.name})

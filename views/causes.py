"""Causes: which skip component carries the trained adapter's gain (ablations), and which
block's parts push a prediction (direct logit attribution)."""

import streamlit as st

from psilonet.analysis import ablation
from psilonet.app import cause_charts, charts, cause_widgets, helpers as app

st.title("Causes")
st.caption("Each component of a trained skip adapter turned off in turn (its blend weight set to 0: a block's "
           "alpha, a tap's weight, a head's gate alpha), every one a row of the same batch over the same held-out "
           "windows; Δ loss is paired by window, with a 95% Student-t CI. Make a run with "
           "`python -m jobs.ablate --run TRAIN_RUN`.")
run = app.run_picker("Ablation run", ("ablation",))
if run is not None:
    table = app.read(run.name, "ablation")
    if table is not None and not table.empty:
        ref = table.set_index("component").loss
        parent = run.get("parent")
        st.caption(f"Trained model (none off): {ref.get('none off', float('nan')):.4f} nats; every skip block off "
                   f"(the frozen baseline): {ref.get('all off', float('nan')):.4f} nats; "
                   f"{int(table.n.max())} windows of training run `{parent}`.")
        exported = []
        taps = app.read(parent, "tap_weights") if parent else None
        gates = app.read(parent, "gate_alphas") if parent else None
        for kind, learned, chart_fn in (("tap", taps, charts.tap_weight_heatmap),
                                        ("head", gates, charts.gate_alpha_heatmap)):
            if not (table.kind == kind).any():
                continue
            left, right = st.columns(2)
            with left:
                effect = cause_charts.ablation_heatmap(table, kind)
                st.altair_chart(charts.fit_width(effect), width="stretch")
                exported.append((f"Δ loss per {kind}", effect))
            if learned is not None and not learned.empty:
                with right:
                    st.altair_chart(chart_fn(learned))
        scatter = cause_charts.learned_vs_effect(table)
        st.altair_chart(scatter)
        st.caption(cause_widgets.correlation_line(ablation.weight_effect_correlation(table)))
        exported.append(("Learned weight against effect", scatter))
        st.subheader("Ranked")
        st.dataframe(table.sort_values("rank", na_position="first"), hide_index=True, width="stretch")
        app.export_button("Causes", exported, {"run": run.name})

st.header("Direct logit attribution")
cause_widgets.dla_view()

"""Training: loss curves against the frozen baseline; sweeps with their therapeutic window."""

from functools import partial

import pandas as pd
import streamlit as st

from psilonet.app import charts, helpers as app

st.title("Training")
run = app.run_picker("Training or sweep run", ("train", "sweep"))
if run is not None:
    run_id, summary = run.name, run.summary or {}
    exported = []
    if run.kind == "train":
        cols = st.columns(4)
        cols[0].metric("baseline val loss", f"{summary.get('base_loss', float('nan')):.4f}")
        cols[1].metric("skip val loss", f"{summary.get('skip_loss', float('nan')):.4f}")
        cols[2].metric("improvement", f"{summary.get('improvement_pct', float('nan')):+.2f}%",
                       help="100 x (baseline - skip) / baseline, on the same validation windows")
        cols[3].metric("trainable parameters", f"{summary.get('trainable_params', 0) / 1e6:.1f}M")
        metrics = app.read(run_id, "metrics")
        if metrics is not None and not metrics.empty:
            # Drawn from specs cached per run (app.chart): a published run never changes.
            loss = partial(charts.loss_curves, metrics, summary.get("base_loss"))
            app.chart(("loss-curves", run_id), loss, width="stretch")
            grad = partial(charts.grad_norm_chart, metrics)
            app.chart(("grad-norm", run_id), grad, width="stretch")
            exported = [("Loss curves", loss), ("Gradient norm", grad)]
        with st.expander("Configuration"):
            st.json(run.config)
    else:
        configs = app.read(run_id, "sweep_configs")
        if configs is not None and not configs.empty:
            st.caption("Per config: mean, std and 95% Student-t CI of the validation improvement over seeds; "
                       "p_vs_best is a paired t-test (over shared seeds) against the best config.")
            st.dataframe(configs.drop(columns=["config_key"]), hide_index=True, width="stretch")
            window = partial(charts.therapeutic_window, configs)
            app.chart(("therapeutic-window", run_id), window, width="stretch")
            exported = [("Therapeutic window", window)]
            per_run = app.read(run_id, "sweep_runs")
            if per_run is not None:
                with st.expander("Every run of the sweep"):
                    st.dataframe(per_run, hide_index=True, width="stretch")
    app.export_button("Training", exported, {"run": run_id})

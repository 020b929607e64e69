"""Runs: every run in the catalog with its state, model, dataset, config and key metrics."""

import streamlit as st

from psilonet.app import helpers as app

st.title("Runs")
runs = app.runs()
if runs is not None and runs.empty:
    st.info(app.EMPTY_STORE_HELP.format(data_dir=app.data_dir()))
elif runs is not None:
    kinds = sorted(runs["kind"].unique())
    chosen = [k for k in app.param("kinds", "", str).split(",") if k in kinds] or kinds
    chosen = st.multiselect("Kind", kinds, default=chosen, key="kinds_filter")
    app.set_params(kinds=chosen if set(chosen) != set(kinds) else None)
    view = runs[runs["kind"].isin(chosen)]
    st.caption(f"{len(view)} of {len(runs)} runs. Runs still being written show as running; "
               "killed runs never show partial data.")
    st.dataframe(
        view[["run_id", "kind", "state", "model", "dataset", "created", "progress", "parent", "summary", "config", "error"]],
        hide_index=True, width="stretch",
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
    )

"""Runs: every run in the catalog with its state, model and dataset; one selected run's summary,
configuration and error in full; dose runs open in the Dosed generation page."""

import streamlit as st

from psilonet.app import helpers as app

st.title("Runs")
runs = app.runs()
if runs is not None and runs.empty:
    st.info(app.EMPTY_STORE_HELP.format(data_dir=app.data_dir_label()))
elif runs is not None:
    kinds = sorted(runs["kind"].unique())
    chosen = app.param("kinds", kinds, app.choice_list(kinds))
    chosen = st.multiselect("Kind", kinds, default=chosen, key="kinds_filter")
    app.set_params(kinds=chosen if set(chosen) != set(kinds) else None)
    view = runs[runs["kind"].isin(chosen)].reset_index(drop=True)
    st.caption(f"{len(view)} of {len(runs)} runs. Runs still being written show as running; "
               "killed runs never show partial data. Select a row for its details.")
    table = st.dataframe(
        view[["run_id", "kind", "state", "dataset", "created", "progress", "parent"]],
        hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row", key="runs_table",
        column_config=app.RUNS_TABLE_COLUMNS,
    )
    rows = table.selection.rows if table is not None and hasattr(table, "selection") else []
    ids = list(view.run_id)
    wanted = app.param("run", None, str, ids) if not rows else None
    selected = view.iloc[rows[0]] if rows else (view.set_index("run_id").loc[wanted].rename(wanted) if wanted else None)
    if selected is not None:
        run_id = selected["run_id"] if "run_id" in selected else selected.name
        app.set_params(run=run_id)
        st.subheader(f"Run `{run_id}`")
        st.caption(f"{selected['kind']} · {selected['state']} · model `{selected['model']}` · "
                   f"dataset `{selected['dataset']}` · created {selected['created']}")
        if selected["kind"] == "dose" and selected["state"] == "complete":
            st.page_link("views/dose.py", label="Open its texts, entropies and charts", icon=":material/science:",
                         query_params={"view": "stored", "dose_run": run_id})
        if selected.get("error"):
            st.error(f"Error: {selected['error']}")
        left, right = st.columns(2)
        with left:
            st.markdown("**Summary**")
            st.json(selected["summary"] or {}, expanded=True)
        with right:
            st.markdown("**Configuration**")
            st.json(selected["config"] or {}, expanded=1)
    else:
        app.set_params(run=None)

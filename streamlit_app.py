"""psilonet explorer: the entry point only routes between pages and draws the shared sidebar."""

import psilonet  # noqa: F401  (fast BLAS before anything imports mlx)
import streamlit as st

from psilonet import app

st.set_page_config(page_title="psilonet", layout="wide")
app.sidebar()
page = st.navigation([
    st.Page("pages/runs.py", title="Runs", icon=":material/list:", default=True),
    st.Page("pages/training.py", title="Training", icon=":material/trending_down:"),
    st.Page("pages/similarity.py", title="Similarity", icon=":material/grid_on:"),
    st.Page("pages/trajectories.py", title="Trajectories", icon=":material/timeline:"),
    st.Page("pages/taps.py", title="Tap weights", icon=":material/tune:"),
    st.Page("pages/dose.py", title="Dosed generation", icon=":material/science:"),
])
app.guarded(page.run)

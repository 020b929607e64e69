"""psilonet explorer: the entry point only routes between pages and draws the shared sidebar."""

import psilonet  # noqa: F401  (fast BLAS before anything imports mlx)
import streamlit as st

from psilonet import app

st.set_page_config(page_title="psilonet", layout="wide")
app.sidebar()
st.navigation([
    st.Page("pages/runs.py", title="Runs", icon=":material/list:", default=True),
]).run()

"""psilonet explorer: the entry point only routes between pages and draws the shared sidebar."""

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import streamlit as st

from psilonet.app import helpers as app, links, serving

st.set_page_config(page_title="psilonet", layout="wide")
page = st.navigation([
    st.Page("views/runs.py", title="Runs", icon=":material/list:", default=True),
    st.Page("views/training.py", title="Training", icon=":material/trending_down:"),
    st.Page("views/similarity.py", title="Similarity", icon=":material/grid_on:"),
    st.Page("views/trajectories.py", title="Trajectories", icon=":material/timeline:"),
    st.Page("views/taps.py", title="Tap weights", icon=":material/tune:"),
    st.Page("views/causes.py", title="Causes", icon=":material/call_split:"),
    st.Page("views/lens.py", title="Lens", icon=":material/visibility:"),
    st.Page("views/attention.py", title="Attention", icon=":material/center_focus_strong:"),
    st.Page("views/dose.py", title="Dosed generation", icon=":material/science:"),
    st.Page("views/bio.py", title="Bio interventions", icon=":material/neurology:"),
], position=serving.nav_position())
serving.gate()  # the shared password, if one is set: nothing below runs without it
app.check_data_dir()
app.sidebar()
links.begin(page)  # the link's warnings go to the top of the page
app.guarded(page.run)
links.tidy()  # the URL keeps only the state this page read or wrote (never a password)
serving.sidebar(page)  # sign out and the viewer-mode notice
links.copy_link(page)  # the link to this view

"""Lens: what each layer would predict next (logit or tuned lens), for a stored capture's window
and for a typed prompt under doses and bio interventions."""

import streamlit as st

from psilonet.app import helpers as app, lens_widgets

VIEWS = {"stored": "Stored capture", "live": "Your prompt"}

st.title("Lens")
st.caption("Every layer's residual state (0 = the embeddings, then after each block) goes through the model's own "
           "final norm and unembedding: the next-token distribution the model would give if it stopped there. "
           "**KL to final**: how far that read-out is from the last layer's (nats). **Rank**: where the token that "
           "really comes next ranks in it (1 = top). Also `python -m jobs.lens`.")
view = st.segmented_control("Show", list(VIEWS), format_func=VIEWS.get, required=True, key="lens_view",
                            default=app.param("view", "stored", str, list(VIEWS)))
app.set_params(view=None if view == "stored" else view)
if view == "stored":
    lens_widgets.stored_view()
else:
    lens_widgets.live_view()

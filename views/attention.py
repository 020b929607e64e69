"""Attention: where each head of a block looks (base attention beside each skip tap) and per-head
summaries over a capture (entropy, sink share, distance), baseline beside trained."""

import streamlit as st

from psilonet.app import attention_widgets

st.title("Attention")
st.caption("Attention probabilities of a stored capture's first window: each query position (row) over the keys it "
           "may see (columns). A trained skip block also reads the keys of an earlier state l-d through each skip "
           "tap; its tap weight and per-head gate alpha scale what the tap adds. Also `python -m jobs.attention`.")
attention_widgets.stored_view()

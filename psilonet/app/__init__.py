"""The Streamlit explorer's library side: page helpers (store access, cached queries, URL state),
Altair charts and the HTML export."""

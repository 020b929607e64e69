"""`make share`'s entry point: the explorer (streamlit_app.py) served as an ``st.App``.

The only addition is the HTTP route that remembers a browser's login (serving.routes), so that
a collaborator's new tabs do not ask for the password again; everything else is the app.
Run it as `make share` does: ``streamlit run shared_app.py --server.address ...``.
"""

import psilonet  # noqa: F401  (fast BLAS before anything imports mlx)
import streamlit as st

from psilonet.app import serving

app = st.App("streamlit_app.py", routes=serving.routes())

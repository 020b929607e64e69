"""`make share`'s entry point: the explorer (streamlit_app.py) served as an ``st.App``.

The only addition is the HTTP route that remembers a browser's login (serving.routes), so that
a collaborator's new tabs do not ask for the password again; everything else is the app.
Run it as `make share` does: ``streamlit run shared_app.py --server.address ...``.
"""

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import streamlit as st

from psilonet.app import serving

app = st.App("streamlit_app.py", routes=serving.routes())

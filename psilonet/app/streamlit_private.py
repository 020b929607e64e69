"""Every private Streamlit name the app uses, in one place (Streamlit is pinned in requirements.txt).

Streamlit has no public API for these three jobs, and each name has moved or changed before, so
``tests/test_streamlit_private.py`` runs each one against the real, installed Streamlit: an
upgrade that breaks one fails there, loudly, instead of silently in a page.

* :func:`altair_spec`: Streamlit's own Altair conversion (what ``st.altair_chart`` sends): it
  holds Altair's global theme and data-transformer switches under Streamlit's lock, validates the
  spec and stores the data as Arrow bytes, so a cached spec costs only a copy of those bytes.
* :func:`session_id`: the browser session running this script (``st.context`` has none).
* :func:`session_active`: whether a session is still connected (Streamlit keeps a script running
  after its tab closes; the session only turns inactive).
"""

from __future__ import annotations

from typing import Any

from streamlit import runtime as _runtime
from streamlit.elements.vega_charts import _convert_altair_to_vega_lite_spec
from streamlit.runtime.scriptrunner import get_script_run_ctx


def altair_spec(chart: Any) -> dict:
    """The Vega-Lite spec ``st.altair_chart`` would send for an Altair chart (``st.vega_lite_chart`` draws it)."""
    return _convert_altair_to_vega_lite_spec(chart)


def session_id() -> str | None:
    """This script's browser session, or None outside a script run (plain Python, a job)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def session_active(session_id: str) -> bool | None:
    """True while the session is connected, False once it is gone, None without a server
    (AppTest, plain scripts: there is no session to lose)."""
    if not _runtime.exists():
        return None
    return _runtime.get_instance().is_active_session(session_id)

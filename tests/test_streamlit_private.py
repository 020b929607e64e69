"""Each private Streamlit name of psilonet.app.streamlit_private, run against the real, installed
Streamlit (no stand-in), so that an upgrade that moves or changes one fails here."""

from __future__ import annotations

import asyncio

from streamlit import runtime as st_runtime
from streamlit.runtime import Runtime, RuntimeConfig
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.session_manager import SessionClient
from streamlit.testing.v1 import AppTest

from psilonet.app import helpers, streamlit_private


def _cached_and_direct_chart(log_path: str) -> None:
    """An AppTest script: one chart drawn through app.chart (its spec cached) and the same chart
    drawn by st.altair_chart."""
    import altair as alt
    import pandas as pd
    import streamlit as st

    from psilonet.app import charts, helpers as app

    frame = pd.DataFrame({"step": [1, 2, 3, 1, 2, 3], "split": ["train"] * 3 + ["val"] * 3,
                          "name": ["loss"] * 6, "value": [3.0, 2.5, 2.2, 3.1, 2.7, 2.4]})

    def build() -> alt.LayerChart:
        with open(log_path, "a") as log:
            log.write("built\n")
        return charts.loss_curves(frame, 3.3)

    app.chart(("test-loss", "run-x"), build, width="stretch")
    st.altair_chart(charts.loss_curves(frame, 3.3), width="stretch")


def test_cached_chart_sends_what_altair_chart_sends_and_builds_once(tmp_path, monkeypatch):
    """app.chart relies on Streamlit's private Altair conversion (pinned streamlit): the element
    it sends must equal st.altair_chart's, and the chart is built once per key, not per rerun."""
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    log = tmp_path / "builds.txt"
    at = AppTest.from_function(_cached_and_direct_chart, args=(str(log),), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    cached, direct = (c.proto for c in at.get("vega_lite_chart"))
    assert cached.spec and cached.datasets and all(d.data.data for d in cached.datasets)
    assert cached.SerializeToString() == direct.SerializeToString()  # spec, Arrow datasets, theme
    at.run()
    assert not at.exception and log.read_text() == "built\n"  # the rerun drew it from the cache
    assert at.get("vega_lite_chart")[0].proto.spec == direct.spec


def _report_session(out_path: str) -> None:
    """An AppTest script: write the session id this script run belongs to."""
    from psilonet.app import streamlit_private

    with open(out_path, "w") as out:
        out.write(str(streamlit_private.session_id()))


def test_session_id_names_the_running_script_and_is_none_outside_one(tmp_path):
    out = tmp_path / "session.txt"
    at = AppTest.from_function(_report_session, args=(str(out),), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert out.read_text() not in ("", "None")
    assert streamlit_private.session_id() is None  # plain Python: no script run


class _Client(SessionClient):
    def write_forward_msg(self, msg) -> None:
        pass


def test_session_active_follows_a_real_runtime_session(tmp_path):
    """A real Streamlit runtime (started, no HTTP server): a connected session is active, and
    turns inactive when its browser disconnects; without a runtime the answer is None."""
    assert streamlit_private.session_active("any") is None
    assert helpers.session_gone()() is False  # no server: nothing to lose
    script = tmp_path / "page.py"
    script.write_text("import streamlit as st\n")

    async def lifecycle() -> list:
        rt = Runtime(RuntimeConfig(script_path=str(script), media_file_storage=MemoryMediaFileStorage("/media"),
                                   uploaded_file_manager=MemoryUploadedFileManager("/upload")))
        try:
            await rt.start()
            session = rt.connect_session(_Client(), user_info={})
            seen = [streamlit_private.session_active(session), streamlit_private.session_active("unknown")]
            rt.disconnect_session(session)
            seen.append(streamlit_private.session_active(session))
            rt.stop()
            await rt.stopped
            return seen
        finally:
            Runtime._instance = None  # the runtime is a process-wide singleton: leave none behind

    assert asyncio.run(lifecycle()) == [True, False, False]
    assert not st_runtime.exists()

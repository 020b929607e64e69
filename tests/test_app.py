"""The Streamlit app, run headless with AppTest on an empty store and on a store with runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from psilonet.store import Store

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    return tmp_path


def run_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    return at


def test_runs_page_on_empty_store_explains_what_to_do(data_dir):
    at = run_app()
    assert any("No runs yet" in i.value for i in at.info)
    assert any("jobs.check_model" in i.value for i in at.info)


def test_runs_page_lists_runs_with_their_state(data_dir):
    store = Store(data_dir)
    with store.begin_run("model_check", config={"model": "default"}, model="default", dataset="reference") as w:
        w.log_metrics(0, {"paragraph_loss": 2.6})
        w.finish({"paragraph_loss": 2.6})
    with pytest.raises(RuntimeError):
        with store.begin_run("train", config={"alpha": 0.5}, model="default", dataset="python-docs"):
            raise RuntimeError("out of memory")
    at = run_app()
    table = at.dataframe[0].value
    assert set(table["state"]) == {"complete", "failed"}
    assert "out of memory" in " ".join(table["error"].dropna())

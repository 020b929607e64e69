"""Every page of the Streamlit app, headless with AppTest: on an empty store and on a store
filled by real jobs on a tiny model; query parameters round-trip; no exception ever."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from psilonet.store import Store

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGES = ["runs", "training", "similarity", "trajectories", "taps", "dose"]


def open_page(page: str, params: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_an_empty_store(tmp_path, monkeypatch, page):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_page(page)
    if page != "dose":
        assert any("No " in i.value for i in at.info), [i.value for i in at.info]


def test_runs_page_lists_every_run_with_its_state(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("runs")
    table = at.dataframe[0].value
    assert {"train", "sweep", "capture", "analysis", "dose"} <= set(table.kind)
    assert set(table.state) == {"complete"}
    at = open_page("runs", {"kinds": "sweep"})
    assert set(at.dataframe[0].value.kind) == {"sweep"}


def test_training_page_for_a_run_and_a_sweep(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("training", {"run": train_id})
    assert at.selectbox[0].value == train_id
    assert len(charts(at)) == 2 and len(at.metric) == 4
    assert at.query_params["run"] == train_id
    sweep_id = Store(data).list_runs(kind="sweep").run_id.iloc[0]
    at = open_page("training", {"run": sweep_id})
    assert len(at.dataframe[0].value) == 4  # 2 distances x 2 alphas
    assert len(charts(at)) == 1
    assert at.get("download_button")


def test_similarity_page_and_its_permalink(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("similarity", {"metric": "svcca", "layers": "1,4"})
    assert at.radio[1].value == "svcca"
    assert at.slider[0].value == (1, 4)
    assert len(charts(at)) == 4  # layer curve, head heatmaps, cross-layer matrix, token norms
    assert at.query_params["metric"] == "svcca" and at.query_params["layers"] == "1,4"
    at.radio[1].set_value("pwcca").run()
    assert at.query_params["metric"] == "pwcca"


def test_malformed_query_parameters_warn_instead_of_failing(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("similarity", {"metric": "nonsense", "layers": "x,y", "run": "analysis-19990101-000000-abcdef"})
    assert len(at.warning) >= 2
    assert at.radio[1].value == "cka"
    at = open_page("dose", {"seed": "-5x", "doses": "a,b"})
    assert at.warning


def test_trajectories_and_taps_pages(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("trajectories", {"unit": "sequence"})
    assert at.radio[1].value == "sequence" and len(charts(at)) == 1
    at = open_page("taps", {"run": train_id})
    assert len(charts(at)) == 3  # evolution, final heatmap, gate alphas


def test_dose_page_generates_with_a_trained_run_and_saves(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("dose", {"run": train_id, "doses": "0.0,0.3", "max": "4", "chat": "0"})
    assert at.selectbox[0].value == train_id
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    results = at.dataframe[0].value
    assert list(results.intensity) == [0.0, 0.3] and (results.tokens > 0).all()
    assert len(charts(at)) == 2
    before = len(Store(data).list_runs(kind="dose"))
    next(b for b in at.button if b.label == "Save to the store").click().run()
    assert len(Store(data).list_runs(kind="dose")) == before + 1
    assert any("Saved as run" in s.value for s in at.success)


@pytest.mark.parametrize("page", ["runs", "training", "similarity", "trajectories", "taps"])
def test_every_page_on_the_demo_data_shows_a_chart_and_no_empty_state(filled, monkeypatch, page):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page(page)
    assert charts(at) or page == "runs", page  # the runs page is a table
    assert not [i.value for i in at.info if i.value.startswith("No ")]


def test_representation_round_trips_through_the_url_and_names_every_chart(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("similarity")
    assert at.radio[0].value == "rms" and at.query_params["rep"] == "rms"  # the default
    at = open_page("similarity", {"rep": "raw"})
    assert at.radio[0].value == "raw"
    assert all("raw states" in c.proto.spec for c in charts(at) if "Token norms" not in c.proto.spec)
    at.radio[0].set_value("no-sink").run()
    assert at.query_params["rep"] == "no-sink"
    assert "without the sink tokens" in charts(at)[0].proto.spec
    at = open_page("trajectories", {"rep": "no-sink", "unit": "sequence"})
    assert at.radio[0].value == "no-sink" and "without the sink tokens" in charts(at)[0].proto.spec
    assert all(o.startswith("sequence") for o in at.multiselect[0].options)  # sequences, not token ids
    at = open_page("similarity", {"rep": "centred"})
    assert at.radio[0].value == "rms" and at.warning

"""A link holds the page's state and nothing else: unknown keys (a password above all) leave
the URL on the first render, and every value the page cannot keep is warned about at the top
of the page, shortened, never changed silently (AppTest; the browser side is in test_serving)."""

from __future__ import annotations

import pytest

from psilonet.store import Store

from conftest import open_app_page


def warnings(at) -> list[str]:
    return [w.value for w in at.warning]


def test_unknown_keys_and_a_password_leave_the_url(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_app_page("training", {"password": "hunter2", "run": train_id, "rep": "rms", "zzz": "1"})
    assert not at.exception
    assert dict(at.query_params) == {"run": train_id}
    assert not warnings(at)


def test_every_page_keeps_only_keys_it_reads(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_app_page("similarity", {"metric": "svcca", "layers": "1,4", "password": "x", "unit": "token"})
    assert at.query_params["metric"] == "svcca" and "password" not in at.query_params
    assert "unit" not in at.query_params  # a Trajectories key
    at = open_app_page("dose", {"view": "stored", "prompt": "hello", "password": "x"})
    assert set(at.query_params) <= {"view", "dose_run", "p"}, dict(at.query_params)


def test_custom_intensities_from_a_link_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_app_page("dose", {"doses": "0,0.1,0.3,0.6"})
    assert not warnings(at), warnings(at)
    assert at.multiselect[0].value == ["sober", "micro-dose", "double dose"]
    assert at.slider[0].value == 0.6
    assert at.query_params["doses"] == "0.0,0.1,0.3,0.6"
    assert at.multiselect[0].proto.options[1] == "micro-dose (0.1)"  # a preset shows its number
    at = open_app_page("dose", {"doses": "0.45,0.6"})
    assert any("dropping 0.6" in w for w in warnings(at)), warnings(at)
    assert at.slider[0].value == 0.45


def test_bio_strength_warnings_are_outside_the_expander(tmp_path, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_app_page("dose", {"fatigue": "9", "hebbian": "abc"})
    top = [w.value for w in at.main.children[0].warning]  # the box links.begin opens above the page
    assert any("fatigue=9" in t for t in top) and any("hebbian=abc" in t for t in top), warnings(at)


SIMILARITY_CASES = {
    "reversed": ({"layers": "4,1"}, "layers=4,1"),
    "outside": ({"layers": "-5,999"}, "layers=-5,999"),
    "sources": ({"sources": "capture-nope"}, "capture-nope"),
}


@pytest.mark.parametrize("case", list(SIMILARITY_CASES))
def test_similarity_link_values_warn(filled, monkeypatch, case):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    params, words = SIMILARITY_CASES[case]
    at = open_app_page("similarity", params)
    assert not at.exception
    assert sum(words in w for w in warnings(at)) == 1, warnings(at)


def test_trajectories_runs_dose_and_bio_link_values_warn(filled, monkeypatch):
    data, _ = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_app_page("trajectories", {"tokens": "99999,abc"})
    assert any("`tokens`" in w and "99999" in w for w in warnings(at)), warnings(at)
    at = open_app_page("runs", {"kinds": ["train", "dose"]})
    assert any("gives `kinds` 2 times" in w for w in warnings(at)), warnings(at)
    dose_run = Store(data).list_runs(kind="dose").run_id.iloc[0]
    at = open_app_page("dose", {"view": "stored", "dose_run": dose_run, "p": "999"})
    assert any("p=999" in w for w in warnings(at)), warnings(at)
    at = open_app_page("bio", {"run": "x" * 3000})
    assert [w for w in warnings(at) if "from the link is not here" in w], warnings(at)
    assert all(len(w) < 300 for w in warnings(at)), warnings(at)  # a long value is shortened


PUBLIC = "https://lab.example.org/psi"


def widget_state(at) -> list:
    """Every input widget's (kind, label, value) on the page: what "the same view" means."""
    kinds = ("selectbox", "radio", "multiselect", "slider", "text_area", "number_input", "toggle")
    return [(k, w.label, w.value) for k in kinds for w in getattr(at, k)]


def export_permalink(at) -> str:
    buttons = at.get("download_button")
    assert buttons, "no Export HTML button"
    return buttons[0].proto.help.split("Its link back to this view: `")[1].rstrip("`")


def test_each_export_permalink_reopens_the_same_view(filled, monkeypatch):
    """Every page's export names an absolute link (PSILONET_PUBLIC_URL here) with exactly the
    keys the page reads; opened in the app it gives the same widgets and the same URL."""
    from urllib.parse import parse_qsl, urlsplit

    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    monkeypatch.setenv("PSILONET_PUBLIC_URL", PUBLIC)
    store = Store(data)
    analysis = store.list_runs(kind="analysis").run_id.iloc[0]
    cases = {
        "training": {"run": train_id, "zzz": "1"},
        "similarity": {"run": analysis, "metric": "svcca", "layers": "1,4", "rep": "raw"},
        "trajectories": {"run": analysis, "unit": "sequence", "rep": "raw"},
        "taps": {"run": train_id},
        "dose": {"view": "stored", "dose_run": store.list_runs(kind="dose").run_id.iloc[-1]},  # the fixture's own
    }
    for page, params in cases.items():
        at = open_app_page(page, params)
        assert not at.exception and not warnings(at), (page, warnings(at))
        link = export_permalink(at)
        parts = urlsplit(link)
        assert link.startswith(f"{PUBLIC}/{page}?"), link
        query = dict(parse_qsl(parts.query))
        assert query == dict(at.query_params), (page, query, dict(at.query_params))
        assert "zzz" not in query
        again = open_app_page(page, query)
        assert widget_state(again) == widget_state(at), page
        assert dict(again.query_params) == query and export_permalink(again) == link

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

"""The app meets bad input (links with bad parameters, a broken data folder, damaged runs) with
one message naming the problem, never an exception, and leaves the catalog as it was."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from psilonet.store import Store

from conftest import open_app_page



open_page = open_app_page  # no assertions here: these pages are meant to show a message


def messages(at: AppTest) -> list[str]:
    return [m.value for m in [*at.error, *at.warning]]


def assert_one_message(at: AppTest, *words: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    found = [m for m in messages(at) if all(w in m for w in words)]
    assert len(found) == 1, messages(at)
    assert len(found[0].strip().splitlines()) == 1, found[0]
    assert "Traceback" not in found[0]


def assert_one_message_each(at: AppTest, cases: list[tuple[str, ...]]) -> None:
    for words in cases:
        assert_one_message(at, *words)


# Bad link parameters on a store filled by real jobs: one page run per page, every bad
# parameter in it named by exactly one one-line message (each parameter is one case).
LINK_CASES = {
    "dose": ({"run": "nope", "seed": "abc", "max": "many", "temp": "hot", "custom": "x", "chat": "maybe",
              "doses": "a,b"},
             [("run=nope",), ("seed=abc",), ("max=many",), ("temp=hot",), ("custom=x",), ("chat=maybe",),
              ("doses=a,b",)]),
    "similarity": ({"metric": "nope", "layers": "a-b"}, [("metric=nope",), ("layers=a-b",)]),
    "trajectories": ({"unit": "words"}, [("unit=words",)]),
    "training": ({"run": "dose-20260101-000000-abcdef"}, [("dose-20260101-000000-abcdef", "not a complete")]),
    "taps": ({"run": "nope"}, [("`nope`", "not a complete")]),
    "trajectories-run": ({"run": "nope"}, [("`nope`", "not a complete")]),
    "similarity-run": ({"run": "nope"}, [("`nope`", "not a complete")]),
}


@pytest.mark.parametrize("case", list(LINK_CASES))
def test_bad_link_parameters(filled, monkeypatch, case):
    data, _ = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    params, expected = LINK_CASES[case]
    before = Store(data).list_runs()[["run_id", "state"]]
    at = open_page(case.split("-")[0], params)
    assert_one_message_each(at, expected)
    assert Store(data).list_runs()[["run_id", "state"]].equals(before)


@pytest.mark.parametrize("page", ["runs", "dose"])
def test_empty_data_folder_setting(monkeypatch, page):
    monkeypatch.setenv("PSILONET_DATA", "")
    assert_one_message(open_page(page), "PSILONET_DATA: is set but empty")


@pytest.mark.parametrize("page", ["runs", "training"])
def test_data_folder_setting_naming_a_file(tmp_path, monkeypatch, page):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path / "f"))
    assert_one_message(open_page(page), "PSILONET_DATA:", "is a file, not a folder")


@pytest.mark.parametrize("page", ["runs", "dose"])
def test_damaged_catalog(tmp_path, monkeypatch, page):
    (tmp_path / "catalog.duckdb").write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    assert_one_message(open_page(page), "The run catalog cannot be read right now")
    assert (tmp_path / "catalog.duckdb").read_bytes() == b"this is not a database" * 100


def test_published_run_folder_deleted(filled, tmp_path, monkeypatch):
    data = tmp_path / "copy"
    shutil.copytree(filled[0], data)
    train_id = filled[1]
    shutil.rmtree(data / "runs" / train_id)
    monkeypatch.setenv("PSILONET_DATA", str(data))
    assert_one_message(open_page("training", {"run": train_id}), train_id, "is missing")

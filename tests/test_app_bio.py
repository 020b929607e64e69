"""The Bio interventions page, headless: empty store, and a stored evaluation run."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def open_bio_page(data: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("views/bio.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_bio_page_on_an_empty_store_and_with_an_evaluation(tiny_model_dir, tmp_path, monkeypatch):
    from jobs import bio_eval as job

    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_bio_page(tmp_path)
    assert any("No complete bio_eval run" in i.value for i in at.info)
    assert job.main(["--model", str(tiny_model_dir), "--windows", "2", "--seq-len", "8", "--strengths", "0.5", "1",
                     "--data-dir", str(tmp_path)]) == 0
    at = open_bio_page(tmp_path)
    assert len(at.get("vega_lite_chart")) == 2 and at.get("download_button")
    table = at.dataframe[0].value
    assert set(zip(table.mechanism, table.strength)) >= {("fatigue", 0.5), ("hebbian", 1.0), ("sober", 0.0)}
    assert set(table.corpus) == {"python-docs", "smol-stories"}

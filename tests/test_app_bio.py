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
    assert len(at.get("vega_lite_chart")) == 4 and at.get("download_button")  # loss and entropy, per corpus
    table = at.dataframe[0].value
    assert set(zip(table.mechanism, table.strength)) >= {("fatigue", 0.5), ("hebbian", 1.0), ("sober", 0.0)}
    assert set(table.corpus) == {"python-docs", "smol-stories"}


def test_dose_page_runs_bio_rows_beside_doses_and_saves_their_state(filled, monkeypatch):
    from psilonet.store import Store

    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in {"run": train_id, "doses": "0.0", "fatigue": "0,1", "hebbian": "0.5", "max": "4",
                       "chat": "0"}.items():
        at.query_params[key] = value
    at.switch_page("views/dose.py")
    at.run()
    next(b for b in at.button if b.label == "Generate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    results = at.dataframe[0].value
    assert set(results.label) == {"intensity 0 + hebbian 0.5", "intensity 0 + fatigue 1 + hebbian 0.5"}
    assert len(at.get("vega_lite_chart")) == 4  # entropies (2), pool heatmap, fast-weight norms
    next(b for b in at.button if b.label == "Save to the store").click().run()
    store = Store(data)
    run = store.list_runs(kind="dose").iloc[0]
    assert run.config["fatigue"] == [0.0, 1.0] and run.config["hebbian"] == [0.5]
    with store.open_run(run.run_id) as reader:
        assert set(reader.bio_pool().gen_id) == {1} and set(reader.bio_fast_norm().gen_id) == {0, 1}
    # Reopened from the store: the same rows, labels and state charts.
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["view"], at.query_params["dose_run"] = "stored", run.run_id
    at.switch_page("views/dose.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert set(at.dataframe[0].value.label) == set(results.label)
    assert len(at.get("vega_lite_chart")) == 4

"""Old runs still read: a catalog and an analysis run stored in the layout from before schema
versions and representations (tests/fixtures/schema_v1/*.sql) read through the documented
default (``raw``), on the store and on the Similarity page."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from psilonet.store import Store
from psilonet.store import tables as T
from psilonet.store.catalog import CATALOG_FILE
from psilonet.store.runs import RUN_DB_FILE

from conftest import open_app_page

FIXTURE = Path(__file__).with_name("fixtures") / "schema_v1"
OLD_RUN = "analysis-20250101-120000-abc123"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A data folder holding the version-1 catalog and analysis run, built from the stored SQL."""
    run_dir = tmp_path / "runs" / OLD_RUN
    run_dir.mkdir(parents=True)
    for sql, db in (("catalog.sql", tmp_path / CATALOG_FILE), ("run.sql", run_dir / RUN_DB_FILE)):
        con = duckdb.connect(str(db))
        con.execute((FIXTURE / sql).read_text())
        con.close()
    return tmp_path


def test_an_old_analysis_reads_as_raw_and_says_its_version(old_store: Path) -> None:
    store = Store(old_store)
    assert store.schema_version() == 1
    with store.open_run(OLD_RUN) as r:
        assert r.schema_version() == 1
        sim = r.similarity()
        assert list(sim.columns) == list(T.SIMILARITY.names)
        assert set(sim.representation) == {"raw"} and len(sim) == 3
        layer = r.similarity(view="layer", metric="cka", representation="raw")
        assert list(layer.layer) == [0, 1] and list(layer.value) == [1.0, 0.5]  # declared order
        assert r.similarity(representation="rms").empty
        assert list(r.trajectories(representation="raw").pc1) == [0.1, 0.3]
        assert r.pca_variance().representation.tolist() == ["raw", "raw"]
        assert r.metrics().empty  # tables without a default read as stored


def test_new_catalog_and_runs_record_the_current_version(tmp_path: Path, old_store: Path) -> None:
    store = Store(tmp_path / "new")
    assert store.schema_version() is None  # nothing on disk yet
    with store.begin_run("analysis", config={}) as w:
        w.write_similarity([("s", "d", "layer", "cka", 0, None, None, 1.0, "rms")])
        run_id = w.run_id
    assert store.schema_version() == T.SCHEMA_VERSION
    with store.open_run(run_id) as r:
        assert r.schema_version() == T.SCHEMA_VERSION
        assert r.similarity().representation.tolist() == ["rms"]
    # A new run in the old catalog: the catalog is then current, the old run stays version 1.
    old = Store(old_store)
    with old.begin_run("analysis", config={}):
        pass
    assert old.schema_version() == T.SCHEMA_VERSION
    with old.open_run(OLD_RUN) as r:
        assert r.schema_version() == 1


def test_a_table_missing_a_column_without_a_default_is_refused() -> None:
    with pytest.raises(ValueError, match="no default"):
        T.SIMILARITY.legacy_missing([n for n in T.SIMILARITY.names if n != "value"])


def test_the_similarity_page_shows_an_old_analysis_as_raw(old_store: Path, monkeypatch) -> None:
    monkeypatch.setenv("PSILONET_DATA", str(old_store))
    at = open_app_page("similarity", {"rep": "raw"})
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.get("vega_lite_chart")
    at = open_app_page("similarity", {"rep": "rms"})
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    words = " ".join(i.value for i in at.info)
    assert "raw" in words and "jobs.analyze --captures capture-20250101-110000-def456" in words
    at = open_app_page("trajectories", {"rep": "raw", "unit": "sequence"})
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.get("vega_lite_chart")

"""A run is complete iff its folder is published, whatever crashes or locks happen in between:
real second processes hold the catalog or die between publishing and telling the catalog."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from psilonet.store import Store, StoreLockedError
from psilonet.store.catalog import CATALOG_FILE
from tests.test_store import workers  # noqa: F401  (fixture: store_worker.py subprocesses)


def raw_status(data: Path, run_id: str) -> str:
    import duckdb

    con = duckdb.connect(str(data / CATALOG_FILE), read_only=True)
    try:
        return con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
    finally:
        con.close()


def test_sigkill_between_publish_and_catalog_leaves_a_complete_run(tmp_path, workers):  # noqa: F811
    writer = workers(str(tmp_path), "publish-and-hang")
    run_id = writer.wait_for("PUBLISHED").split()[1]
    writer.proc.send_signal(signal.SIGKILL)
    writer.proc.wait()
    assert raw_status(tmp_path, run_id) == "running"  # the catalog was never told

    store = Store(tmp_path)
    run = store.get_run(run_id)  # reconciled from the run's own files
    assert run["state"] == "complete" and run["summary"] == {"steps": 1, "loss": 0.5}
    with store.open_run(run_id) as reader:
        assert reader.metrics(["loss"]).value.tolist() == [0.5]
    assert raw_status(tmp_path, run_id) == "complete"  # and the repair was written back
    assert store.list_runs().state.tolist() == ["complete"]


def test_catalog_locked_at_publish_waits_then_lands(tmp_path, workers):  # noqa: F811
    store = Store(tmp_path, lifecycle_timeout=20.0)
    with store.begin_run("train", config={}) as w:
        w.log_metrics(1, {"loss": 0.5})
        holder = workers(str(tmp_path), "hold-catalog", "2")
        holder.wait_for("HOLDING")
        w.finish({"steps": 1})  # waits out the lock instead of failing the job
    assert raw_status(tmp_path, w.run_id) == "complete"
    assert store.get_run(w.run_id)["summary"] == {"steps": 1}


def test_catalog_locked_past_the_wait_still_leaves_a_complete_run(tmp_path, workers):  # noqa: F811
    store = Store(tmp_path, lifecycle_timeout=0.5)
    w = store.begin_run("train", config={})
    w.log_metrics(1, {"loss": 0.5})
    holder = workers(str(tmp_path), "hold-catalog", "3")
    holder.wait_for("HOLDING")
    with pytest.raises(StoreLockedError, match="is published and complete, but the catalog could not be told"):
        with w:
            w.finish({"steps": 1})
    holder.finish()
    assert (tmp_path / "runs" / w.run_id / "run.duckdb").is_file()
    assert store.get_run(w.run_id)["state"] == "complete"
    assert raw_status(tmp_path, w.run_id) == "complete"


def test_progress_writes_never_wait_for_a_locked_catalog(tmp_path, workers):  # noqa: F811
    store = Store(tmp_path, lock_timeout=15.0)
    with store.begin_run("train", config={}) as w:
        holder = workers(str(tmp_path), "hold-catalog", "2")
        holder.wait_for("HOLDING")
        t0 = time.monotonic()
        w._last_progress = float("-inf")
        w.set_progress(0.5)  # skipped: the catalog is held
        assert time.monotonic() - t0 < 1.0
        holder.finish()
        w._last_progress = float("-inf")
        w.set_progress(0.7)  # lands once the lock is gone
        assert store.get_run(w.run_id)["progress"] == pytest.approx(0.7)
    assert store.get_run(w.run_id)["state"] == "complete"

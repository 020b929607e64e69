"""Tests for psilonet.store, using real second processes (tests/store_worker.py)."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from psilonet.store import RUN_COLUMNS, RunNotFoundError, Store, StoreLockedError
from psilonet.store import tables as T

WORKER = Path(__file__).with_name("store_worker.py")


class Worker:
    """A store_worker.py subprocess whose stdout lines can be awaited with a timeout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        # A thread, because a blocking readline() could hang the test forever.
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        self.proc.kill()
        raise AssertionError(f"no {prefix!r} line; stderr:\n{self.proc.stderr.read()}")

    def finish(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout)
        assert rc == 0, f"worker exited {rc}; stderr:\n{self.proc.stderr.read()}"
        return rc


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        w = Worker(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()


def write_run(store: Store, steps: int = 3, **kwargs) -> str:
    kwargs.setdefault("config", {"lr": 0.01})
    with store.begin_run("train", **kwargs) as w:
        for step in range(steps):
            w.log_metrics(step, {"loss": 1.0 / (step + 1), "acc": step / steps})
        w.log_metrics(steps, {"loss": 0.5}, split="val")
    return w.run_id


def test_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    config = {"lr": 0.01, "layers": [1, 2], "nested": {"a": True}}
    with store.begin_run("train", config=config, model="tiny-lm", dataset="wiki") as w:
        assert w.dir == store.staging_dir / w.run_id
        (w.dir / "artifact.txt").write_text("hello")
        for step in range(5):
            w.log_metrics(step, {"loss": 1.0 / (step + 1), "acc": step / 5})
        w.log_metrics(5, {"loss": 0.3}, split="val")
        w.set_progress(0.5)
        w.finish({"final_loss": 0.2})

    runs = store.list_runs()
    assert list(runs.columns) == RUN_COLUMNS + ["state"]
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["run_id"] == w.run_id and row["kind"] == "train"
    assert row["status"] == "complete" and row["state"] == "complete"
    assert row["config"] == config
    assert row["summary"] == {"final_loss": 0.2}
    assert row["model"] == "tiny-lm" and row["dataset"] == "wiki"
    assert row["progress"] == 1.0
    assert not store.staging_dir.joinpath(w.run_id).exists()
    assert (store.run_dir(w.run_id) / "artifact.txt").read_text() == "hello"

    with store.open_run(w.run_id) as r:
        m = r.metrics()
        assert len(m) == 11
        loss = r.metrics(["loss"], split="train")
        assert loss["step"].tolist() == [0, 1, 2, 3, 4]
        assert loss["value"].tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
        assert r.metrics(split="val")["value"].tolist() == [0.3]
        assert r.meta()["run_id"] == w.run_id

    assert len(store.list_runs(kind="train", status="complete")) == 1
    assert len(store.list_runs(kind="sweep")) == 0


def test_exception_marks_failed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        with store.begin_run("analysis", config={}) as w:
            w.log_metrics(0, {"x": 1.0})
            raise ValueError("boom")

    run = store.get_run(w.run_id)
    assert run["status"] == "failed" and run["state"] == "failed"
    assert run["error"] == "ValueError: boom"
    assert run["finished"] is not None
    with pytest.raises(RunNotFoundError, match="failed"):
        store.open_run(w.run_id)
    # Nothing can continue a failed analysis: its partial files are gone, holding no disk.
    assert not (store.staging_dir / w.run_id).exists()
    with pytest.raises(ValueError, match="boom"):
        with store.begin_run("train", config={}) as t:
            raise ValueError("boom")
    # A training run is left in staging so that --resume can continue it.
    assert (store.staging_dir / t.run_id / "run.duckdb").exists()
    with pytest.raises(RunNotFoundError):
        store.get_run("train-20000101-000000-abcdef")


def test_killed_writer(tmp_path: Path, workers) -> None:
    store = Store(tmp_path)
    worker = workers(str(tmp_path), "write-forever")
    run_id = worker.wait_for("STARTED").split()[1]
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(5)

    runs = store.list_runs()
    row = runs[runs["run_id"] == run_id].iloc[0]
    assert row["status"] == "running"
    assert row["state"] == "killed"
    with pytest.raises(RunNotFoundError, match="killed"):
        store.open_run(run_id)
    assert not (store.runs_dir / run_id).exists()

    fresh = write_run(store)
    with store.open_run(fresh) as r:
        assert len(r.metrics(["loss"])) == 4


def test_reader_during_write(tmp_path: Path, workers) -> None:
    store = Store(tmp_path)
    done_before = write_run(store)

    writer = workers(str(tmp_path), "write-slow")
    slow_id = writer.wait_for("STARTED").split()[1]
    reader = workers(str(tmp_path), "read-loop", done_before)

    # The test process reads too, so three processes contend for the catalog.
    reads = 0
    progress_seen = set()
    while writer.proc.poll() is None:
        runs = store.list_runs()
        progress_seen.update(runs.loc[runs["run_id"] == slow_id, "progress"].dropna())
        with store.open_run(done_before) as r:
            assert len(r.metrics()) == 7
        reads += 1

    writer.finish()
    assert int(reader.wait_for("OK").split()[1]) > 0
    reader.finish()
    assert reads > 0
    assert any(0 < p < 1 for p in progress_seen), progress_seen

    run = store.get_run(slow_id)
    assert run["state"] == "complete" and run["summary"] == {"steps": 30}
    with store.open_run(slow_id) as r:
        m = r.metrics()
        assert len(m) == 60
        assert sorted(m.loc[m["name"] == "loss", "step"]) == list(range(30))


def test_parameters_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    nasty = "it's \"quoted\" '; DROP TABLE runs; --"
    run_id = write_run(store, config={"prompt": nasty, nasty: [nasty]}, dataset=nasty, model=nasty)
    run = store.get_run(run_id)
    assert run["dataset"] == nasty and run["model"] == nasty
    assert run["config"] == {"prompt": nasty, nasty: [nasty]}
    assert len(store.list_runs(kind=nasty)) == 0
    assert len(store.list_runs()) == 1
    with pytest.raises(RunNotFoundError):
        store.open_run(nasty)
    with store.open_run(run_id) as r:
        assert r.metrics([nasty]).empty


def test_locked_catalog(tmp_path: Path, workers) -> None:
    store = Store(tmp_path, lock_timeout=1.0)
    holder = workers(str(tmp_path), "hold-catalog", "4")
    holder.wait_for("HOLDING")
    t0 = time.monotonic()
    with pytest.raises(StoreLockedError) as info:
        store.list_runs()
    assert 0.9 < time.monotonic() - t0 < 3.0
    assert str(store.catalog_path) in str(info.value)
    assert "another process" in str(info.value)


def test_missing_data_dir(tmp_path: Path) -> None:
    store = Store(tmp_path / "does-not-exist")
    runs = store.list_runs()
    assert runs.empty
    assert list(runs.columns) == RUN_COLUMNS + ["state"]
    assert not store.data_dir.exists()  # readers create nothing
    with pytest.raises(RunNotFoundError):
        store.get_run("train-20000101-000000-abcdef")


def test_declared_table_round_trip_and_filters(tmp_path: Path) -> None:
    """A table declared in tables.py is written and read back with no other code: the one-place change."""
    extra = T.Table("extra_rows", (("layer", "INTEGER"), ("name", "VARCHAR"), ("value", "DOUBLE")),
                    order_by="layer DESC, name")
    store = Store(tmp_path)
    with store.begin_run("test", config={}) as w:
        w.write_rows(extra, [(0, "a", 1.0), (1, "b", float("nan")), (2, "a", 3.0)])
    with store.open_run(w.run_id) as r:
        rows = r.rows(extra)
        assert list(rows.columns) == ["layer", "name", "value"]
        assert list(rows["layer"]) == [2, 1, 0]
        assert rows["value"].isna().tolist() == [False, True, False]  # NaN stored as NULL
        assert list(r.rows(extra, name="a", layer=None)["layer"]) == [2, 0]
        assert list(r.rows(extra, layer=[0, 1])["layer"]) == [1, 0]
        assert r.rows(extra, layer=[]).empty
        with pytest.raises(ValueError, match="cannot filter on 'value; DROP'"):
            r.rows(extra, **{"value; DROP": 1})


def test_where_and_declarations_refuse_anything_but_identifiers() -> None:
    assert T.where(("a", "b"), a=1, b=None) == ("WHERE a = ?", [1])
    assert T.where(("a", "b"), a=[1, 2], b="x") == ("WHERE a IN (?, ?) AND b = ?", [1, 2, "x"])
    assert T.where(("a",), a=[]) == ("WHERE FALSE", [])
    assert T.where(("a",), a=None) == ("", [])
    for bad in (dict(name="t; DROP"), dict(columns=(("a b", "INTEGER"),)), dict(columns=(("a", "INT); --"),)),
                dict(order_by="a; DROP"), dict(order_by="missing")):
        with pytest.raises(ValueError):
            T.Table(**{"name": "t", "columns": (("a", "INTEGER"),), **bad})
    assert T.METRICS.pick("step", "value") == ("step", "value")
    with pytest.raises(ValueError, match="no column"):
        T.METRICS.pick("nope")

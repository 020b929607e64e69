"""Second-process helper for tests/test_store.py: ``store_worker.py DATA_DIR MODE [ARG]``.

Modes:
  write-forever       begin a run and log metrics until killed; prints "STARTED <run_id>"
  write-slow          log metrics for ~3 s with progress updates, then finish;
                      prints "STARTED <run_id>" then "DONE <run_id>"
  read-loop RUN_ID    for ~3 s, list runs and read RUN_ID's metrics; prints "OK <n>"
  hold-catalog SECS   open catalog.duckdb read-write, print "HOLDING", sleep SECS
  publish-and-hang    write a run and finish it, but stop right after the folder is
                      published, before the catalog is told; prints "PUBLISHED <run_id>"
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Run as a plain script by the tests, so the repo root is not on sys.path otherwise.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from psilonet.store import Store  # noqa: E402


def write_forever(store: Store) -> None:
    with store.begin_run("train", config={"mode": "forever"}) as w:
        step = 0
        while True:
            w.log_metrics(step, {"loss": 1.0 / (step + 1), "acc": step % 7 / 7})
            if step == 0:
                print(f"STARTED {w.run_id}", flush=True)
            step += 1
            time.sleep(0.005)


def write_slow(store: Store, seconds: float = 3.0, steps: int = 30) -> None:
    with store.begin_run("train", config={"mode": "slow", "steps": steps}) as w:
        print(f"STARTED {w.run_id}", flush=True)
        for step in range(steps):
            w.log_metrics(step, {"loss": 1.0 / (step + 1), "acc": step / steps})
            w.set_progress((step + 1) / steps)
            time.sleep(seconds / steps)
        w.finish({"steps": steps})
    print(f"DONE {w.run_id}", flush=True)


def read_loop(store: Store, run_id: str, seconds: float = 3.0) -> None:
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        store.list_runs()
        with store.open_run(run_id) as r:
            assert len(r.metrics()) > 0
        n += 1
    print(f"OK {n}", flush=True)


def hold_catalog(store: Store, seconds: float) -> None:
    store.data_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(store.catalog_path))
    print("HOLDING", flush=True)
    time.sleep(seconds)
    con.close()


def publish_and_hang(store: Store) -> None:
    def hang(run_id, summary, finished=None):  # the moment between publishing and the catalog
        print(f"PUBLISHED {run_id}", flush=True)
        time.sleep(600)

    store._mark_complete = hang
    with store.begin_run("train", config={"mode": "publish"}) as w:
        w.log_metrics(1, {"loss": 0.5})
        w.finish({"steps": 1, "loss": 0.5})


def main(argv: list[str]) -> None:
    data_dir, mode, *rest = argv
    store = Store(data_dir)
    if mode == "write-forever":
        write_forever(store)
    elif mode == "write-slow":
        write_slow(store)
    elif mode == "read-loop":
        read_loop(store, rest[0])
    elif mode == "publish-and-hang":
        publish_and_hang(store)
    elif mode == "hold-catalog":
        hold_catalog(store, float(rest[0]) if rest else 10.0)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

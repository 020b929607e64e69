"""The catalog of runs (``catalog.duckdb``) and each run's lifecycle: begin, progress, publish, fail, resume.

DuckDB holds an OS file lock on a database: while one process has it open read-write nobody
else can open it at all, not even read-only. So the catalog is only ever touched through
short-lived connections opened by :meth:`Store._catalog`, which retries while another
process holds the lock.

**A run is complete if and only if its folder is published** (``runs/<run_id>/run.duckdb``).
Finishing writes the summary into the run's own database first, then publishes the folder
with one atomic rename, then marks the catalog row complete. A crash or a locked catalog
between the last two steps leaves a published run whose row still says ``running`` (or
``killed``); every read of the catalog reconciles such a row from the run's own files, so it
reads ``complete`` with its summary, and the repair is written back when the catalog is free.
The other way round, a ``complete`` row whose folder was deleted reads ``missing``.

Writes differ in how long they wait for a locked catalog: progress updates give up at once
and are retried with the next update (they never end a job); the start and the end of a run
wait up to ``lifecycle_timeout`` seconds and then fail with a message saying what happened.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

from psilonet.store.db import connect, from_json, now, reason, to_json
from psilonet.store.errors import RunNotFoundError, StoreError, StoreLockedError
from psilonet.store.runs import RUN_DB_FILE, RunReader, RunWriter
from psilonet.store.tables import CATALOG_META, RUNS, SCHEMA_VERSION

CATALOG_FILE = "catalog.duckdb"
STAGING_NAME = ".staging"
RUN_COLUMNS = list(RUNS.names)

_SQL_SET_PROGRESS = "UPDATE runs SET progress = ? WHERE run_id = ?"
_SQL_MARK_COMPLETE = """
UPDATE runs SET status = 'complete', finished = ?, summary = ?, progress = 1.0
WHERE run_id = ?"""
_SQL_MARK_FAILED = "UPDATE runs SET status = ?, finished = ?, error = ? WHERE run_id = ?"
_SQL_REPAIR_COMPLETE = """
UPDATE runs SET status = 'complete', finished = ?, summary = ?, progress = 1.0
WHERE run_id = ? AND status <> 'complete'"""
_SQL_MARK_MISSING = "UPDATE runs SET status = 'missing', error = ? WHERE run_id = ? AND status = 'complete'"
_SQL_RESUME_RUN = "UPDATE runs SET status = 'running', error = NULL, finished = NULL, host = ?, pid = ? WHERE run_id = ?"
# The catalog's runs table is the same in every version, so any catalog written to reads as current.
_SQL_RECORD_VERSION = "INSERT OR IGNORE INTO catalog_meta (key, value) VALUES (?, ?)"
_SQL_INSERT_RUN = RUNS.insert(("run_id", "kind", "status", "created", "model", "dataset", "config", "parent",
                               "host", "pid"))

RESUMABLE = ("killed", "failed", "interrupted")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Run ids become directory names, so anything else is rejected before touching disk.
_RUN_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}-\d{8}-\d{6}-[0-9a-f]{6}$")


def _new_run_id(kind: str) -> str:
    return f"{kind}-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _pid_alive(pid: int) -> bool:
    """Best-effort liveness check of a process on this host.

    A recycled pid cannot be told apart from the original and counts as alive;
    a zombie (killed but not yet reaped by its parent) counts as dead.
    """
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    try:
        # /proc/<pid>/stat is "pid (comm) S ...": the state follows the last ')'.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no procfs (macOS): trust os.kill


def _run_state(status: str, host: str | None, pid: int | None) -> str:
    if status == "running" and host == socket.gethostname() and pid is not None:
        if not _pid_alive(pid):
            return "killed"
    return status


def _row_to_run(columns: list[str], row: tuple) -> dict[str, Any]:
    run = dict(zip(columns, row))
    run["config"] = from_json(run["config"])
    run["summary"] = from_json(run["summary"])
    run["state"] = _run_state(run["status"], run["host"], run["pid"])
    return run


class Store:
    """Catalog of runs plus per-run directories under ``data_dir``.

    Nothing is created on disk until the first run is begun, so a Store over a
    missing directory is valid and simply lists no runs.
    """

    def __init__(self, data_dir: str | os.PathLike, *, lock_timeout: float = 15.0,
                 lifecycle_timeout: float = 120.0, progress_timeout: float = 0.2) -> None:
        """Seconds to keep retrying while another process holds a lock: ``lock_timeout`` for
        reads and run data, ``lifecycle_timeout`` for a run's start and end (they must land),
        ``progress_timeout`` for progress updates (skipped, and retried later, when locked)."""
        self.data_dir = Path(data_dir)
        self.catalog_path = self.data_dir / CATALOG_FILE
        self.runs_dir = self.data_dir / "runs"
        self.staging_dir = self.runs_dir / STAGING_NAME
        self.lock_timeout = lock_timeout
        self.lifecycle_timeout = lifecycle_timeout
        self.progress_timeout = progress_timeout

    def __repr__(self) -> str:
        return f"Store({str(self.data_dir)!r})"

    # ---- the one way into the catalog

    @contextmanager
    def _catalog(self, *, read_only: bool, timeout: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """Short-lived catalog connection; keep the body to one statement or transaction.

        Holding it longer blocks every other process, readers included.
        """
        if not read_only:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        con = connect(self.catalog_path, read_only=read_only,
                      timeout=self.lock_timeout if timeout is None else timeout)
        try:
            if not read_only:
                con.execute(RUNS.create())
                con.execute(CATALOG_META.create())
                con.execute(_SQL_RECORD_VERSION, ["schema_version", str(SCHEMA_VERSION)])
            yield con
        except duckdb.Error as e:
            raise StoreError(f"catalog operation on {self.catalog_path} failed: {reason(e)}") from e
        finally:
            con.close()

    def _write_catalog(self, sql: str, params: list[Any], timeout: float | None = None) -> None:
        with self._catalog(read_only=False, timeout=timeout) as con:
            con.execute(sql, params)

    def _write_lifecycle(self, sql: str, params: list[Any], what: str) -> None:
        """A run's start or end: wait up to ``lifecycle_timeout`` and say plainly if it cannot land."""
        try:
            self._write_catalog(sql, params, timeout=self.lifecycle_timeout)
        except StoreLockedError as e:
            raise StoreLockedError(f"{what}: the catalog {self.catalog_path} stayed locked by another "
                                   f"process for {self.lifecycle_timeout:g} s") from e

    def _select_runs(self, **filters: Any) -> list[dict]:
        """Catalog rows as dicts, filtered by ``column=value`` (see :func:`tables.where`)."""
        if not self.catalog_path.exists():
            return []  # readers never create the catalog
        where_sql, params = RUNS.where(**filters)
        with self._catalog(read_only=True) as con:
            try:
                rows = con.execute(RUNS.select(where_sql), params).fetchall()
            except duckdb.CatalogException:
                return []  # file exists but its creator died before making the table
        runs = [self._reconcile(_row_to_run(RUN_COLUMNS, row)) for row in rows]
        # A reconciled row may no longer have the status asked for (a complete run whose folder is gone).
        return [r for r in runs if filters.get("status") is None or r["status"] == filters["status"]]

    def _reconcile(self, run: dict[str, Any]) -> dict[str, Any]:
        """A published run whose row says otherwise is complete: repaired from its own files.

        The row is fixed in memory at once and written back if the catalog is free right now
        (otherwise on a later read).
        """
        if not _RUN_ID_RE.match(run["run_id"]):
            return run
        folder = self.runs_dir / run["run_id"]
        if run["status"] == "complete":
            return run if (folder / RUN_DB_FILE).is_file() else self._gone(run, folder)
        if not (folder / RUN_DB_FILE).is_file():
            return run
        try:
            with RunReader(run["run_id"], folder, lock_timeout=1.0) as reader:
                meta = reader.meta()
        except StoreError:
            return run  # being published this very moment or unreadable: leave the row as it is
        summary = from_json(meta.get("summary"))
        finished = meta.get("finished")
        run.update(status="complete", state="complete", summary=summary, progress=1.0, error=None,
                   finished=datetime.fromisoformat(finished) if finished else now())
        try:
            self._write_catalog(_SQL_REPAIR_COMPLETE, [run["finished"], meta.get("summary"), run["run_id"]],
                                timeout=self.progress_timeout)
        except StoreError:
            pass
        return run

    def _gone(self, run: dict[str, Any], folder: Path) -> dict[str, Any]:
        """A complete row whose published folder was deleted reads ``missing``, never complete.

        Written back when the catalog is free; a folder put back reads complete again (above).
        """
        error = f"its folder {folder} is gone (deleted or moved); run the job again"
        run.update(status="missing", state="missing", error=error)
        try:
            self._write_catalog(_SQL_MARK_MISSING, [error, run["run_id"]], timeout=self.progress_timeout)
        except StoreError:
            pass
        return run

    # ---- public API

    def list_runs(self, kind: str | None = None, status: str | None = None) -> pd.DataFrame:
        """All runs, newest first, optionally filtered by ``kind`` and/or ``status``.

        Columns are :data:`RUN_COLUMNS` plus ``state``: the status, except that a
        ``running`` row of a dead process on this host reads ``killed``.
        """
        runs = self._select_runs(kind=kind, status=status)
        df = pd.DataFrame(runs, columns=RUN_COLUMNS + ["state"])
        df["created"] = pd.to_datetime(df["created"])
        df["finished"] = pd.to_datetime(df["finished"])
        df["pid"] = df["pid"].astype("Int64")
        df["progress"] = df["progress"].astype("float64")
        return df

    def schema_version(self) -> int | None:
        """The catalog's recorded ``schema_version`` (1 for a catalog made before versions were
        recorded, None where there is no catalog yet)."""
        if not self.catalog_path.exists():
            return None
        with self._catalog(read_only=True) as con:
            try:
                where_sql, params = CATALOG_META.where(key="schema_version")
                row = con.execute(CATALOG_META.select(where_sql), params).fetchone()
            except duckdb.CatalogException:
                return 1
        return int(row[1]) if row and str(row[1]).isdigit() else 1

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One catalog row as a dict (config/summary parsed, plus ``state``)."""
        runs = self._select_runs(run_id=run_id)
        if not runs:
            raise RunNotFoundError(f"unknown run id {run_id!r} in {self.catalog_path}")
        return runs[0]

    def begin_run(
        self,
        kind: str,
        *,
        config: dict,
        model: str | None = None,
        dataset: str | None = None,
        parent: str | None = None,
    ) -> RunWriter:
        """Register a new ``running`` run and open its staging directory for writing.

        Use as ``with store.begin_run(...) as w:`` so that the run is finished or
        marked failed however the block exits.
        """
        if not _KIND_RE.match(kind):
            raise StoreError(f"invalid run kind {kind!r}: use lowercase letters, digits, '_'")
        config_json = to_json(config, "config")
        run_id = _new_run_id(kind)
        created = now()
        # Catalog row first: if anything later fails the row can say so, and if the
        # process dies it shows up as 'killed' instead of leaving an orphan directory.
        self._write_lifecycle(
            _SQL_INSERT_RUN,
            [run_id, kind, "running", created, model, dataset, config_json, parent,
             socket.gethostname(), os.getpid()], f"cannot start a {kind} run",
        )  # fmt: skip
        meta = {
            "run_id": run_id, "kind": kind, "config": config_json, "model": model,
            "dataset": dataset, "parent": parent, "created": created.isoformat(),
        }  # fmt: skip
        try:
            return RunWriter(self, run_id, self.staging_dir / run_id, meta)
        except BaseException as e:
            self._write_catalog(_SQL_MARK_FAILED, ["failed", now(), f"{type(e).__name__}: {e}", run_id])
            raise

    def resume_run(self, run_id: str) -> RunWriter:
        """Reopen a killed, failed or interrupted run's staging directory to continue writing it."""
        if not _RUN_ID_RE.match(run_id):
            raise RunNotFoundError(f"unknown run id {run_id!r} (not a valid run id)")
        run = self.get_run(run_id)
        if run["state"] not in RESUMABLE:
            raise StoreError(f"run {run_id!r} is {run['state']}: only killed, failed or interrupted runs "
                             "can be resumed")
        staging = self.staging_dir / run_id
        if not (staging / RUN_DB_FILE).exists():
            raise RunNotFoundError(f"run {run_id!r} has no staging data left in {staging} to resume from")
        self._write_lifecycle(_SQL_RESUME_RUN, [socket.gethostname(), os.getpid(), run_id],
                              f"cannot resume run {run_id}")
        return RunWriter(self, run_id, staging, None, kind=run["kind"])

    def open_run(self, run_id: str) -> RunReader:
        """Read-only access to a published (complete) run."""
        return RunReader(run_id, self.run_dir(run_id), self.lock_timeout)

    def run_dir(self, run_id: str) -> Path:
        """Directory of a published run; RunNotFoundError if not (yet) published."""
        if not _RUN_ID_RE.match(run_id):
            raise RunNotFoundError(f"unknown run id {run_id!r} (not a valid run id)")
        run = self.get_run(run_id)
        if run["status"] == "missing":
            raise RunNotFoundError(f"run {run_id!r} is missing: {run['error']}")
        if run["status"] != "complete":
            raise RunNotFoundError(f"run {run_id!r} is not published (state: {run['state']})")
        path = self.runs_dir / run_id
        if not (path / RUN_DB_FILE).exists():
            raise RunNotFoundError(f"run {run_id!r} is complete but {path} is missing")
        return path

    # ---- used by RunWriter

    def _set_progress(self, run_id: str, fraction: float) -> bool:
        """Best effort: False (nothing written) while another process holds the catalog."""
        try:
            self._write_catalog(_SQL_SET_PROGRESS, [fraction, run_id], timeout=self.progress_timeout)
        except StoreLockedError:
            return False
        return True

    def _mark_complete(self, run_id: str, summary: dict | None, finished=None) -> None:
        summary_json = None if summary is None else to_json(summary, "summary")
        self._write_lifecycle(_SQL_MARK_COMPLETE, [finished or now(), summary_json, run_id],
                              f"run {run_id} is published and complete, but the catalog could not be told "
                              "(it reads complete on the next look, once the lock is gone)")

    def _mark_failed(self, run_id: str, error: str, status: str = "failed") -> None:
        self._write_lifecycle(_SQL_MARK_FAILED, [status, now(), error, run_id],
                              f"run {run_id} could not be marked {status}")

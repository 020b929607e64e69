"""Run storage for psilonet: a DuckDB catalog of runs plus one directory per run.

Layout under ``data_dir``::

    catalog.duckdb             # table `runs`: one row per run (any kind)
    runs/<run_id>/run.duckdb   # a published (complete) run; plus artifact files
    runs/.staging/<run_id>/    # a run being written, or one that failed / was killed

DuckDB holds an OS file lock on a database: while one process has it open
read-write nobody else can open it at all, not even read-only.  Two rules follow:

* The catalog is only ever touched through short-lived connections opened by
  :meth:`Store._catalog`, which retries while another process holds the lock.
* A run's own ``run.duckdb`` is private to the job writing it, in a staging
  directory, and is published with one atomic ``os.rename`` when complete.  A
  killed job therefore never leaves a half-written run visible.

All SQL of the project lives in this module; new queries are added here as named
methods so that table names stay constants and values always go through ``?``.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import socket
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator

import duckdb
import numpy as np
import pandas as pd

__all__ = [
    "Store",
    "RunWriter",
    "RunReader",
    "StoreError",
    "StoreLockedError",
    "RunNotFoundError",
    "RUN_COLUMNS",
]


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class for every error raised by the store."""


class StoreLockedError(StoreError):
    """A database stayed locked by someone else for the whole retry window."""


class RunNotFoundError(StoreError):
    """The run id is unknown, or the run exists but is not published."""


# --------------------------------------------------------------------------- SQL

CATALOG_FILE = "catalog.duckdb"
RUN_DB_FILE = "run.duckdb"
STAGING_NAME = ".staging"

RUN_COLUMNS = [
    "run_id", "kind", "status", "created", "finished", "model", "dataset",
    "config", "summary", "error", "parent", "host", "pid", "progress",
]  # fmt: skip
_RUN_SELECT = ", ".join(RUN_COLUMNS)

# config/summary are JSON text in VARCHAR columns rather than DuckDB's JSON type,
# so that reading the catalog never depends on the json extension being loadable.
_SQL_CREATE_RUNS = """
CREATE TABLE IF NOT EXISTS runs (
    run_id   VARCHAR PRIMARY KEY,
    kind     VARCHAR NOT NULL,
    status   VARCHAR NOT NULL,
    created  TIMESTAMP NOT NULL,
    finished TIMESTAMP,
    model    VARCHAR,
    dataset  VARCHAR,
    config   VARCHAR,
    summary  VARCHAR,
    error    VARCHAR,
    parent   VARCHAR,
    host     VARCHAR,
    pid      INTEGER,
    progress DOUBLE
)"""
_SQL_INSERT_RUN = """
INSERT INTO runs (run_id, kind, status, created, model, dataset, config, parent, host, pid)
VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)"""
_SQL_SET_PROGRESS = "UPDATE runs SET progress = ? WHERE run_id = ?"
_SQL_MARK_COMPLETE = """
UPDATE runs SET status = 'complete', finished = ?, summary = ?, progress = 1.0
WHERE run_id = ?"""
_SQL_MARK_FAILED = "UPDATE runs SET status = 'failed', finished = ?, error = ? WHERE run_id = ?"

_SQL_CREATE_META = "CREATE TABLE IF NOT EXISTS run_meta (key VARCHAR PRIMARY KEY, value VARCHAR)"
_SQL_INSERT_META = "INSERT INTO run_meta (key, value) VALUES (?, ?)"
_SQL_SELECT_META = "SELECT key, value FROM run_meta"
_SQL_CREATE_METRICS = """
CREATE TABLE IF NOT EXISTS metrics (
    step  INTEGER,
    split VARCHAR,
    name  VARCHAR,
    value DOUBLE,
    time  TIMESTAMP
)"""
_SQL_INSERT_METRIC = "INSERT INTO metrics (step, split, name, value, time) VALUES (?, ?, ?, ?, ?)"
# Training series: which skip distance each block prefers, and per-head gate alphas.
_SQL_CREATE_TAPS = """
CREATE TABLE IF NOT EXISTS tap_weights (step INTEGER, layer INTEGER, distance INTEGER, weight DOUBLE)"""
_SQL_INSERT_TAP = "INSERT INTO tap_weights (step, layer, distance, weight) VALUES (?, ?, ?, ?)"
_SQL_CREATE_GATES = """
CREATE TABLE IF NOT EXISTS gate_alphas (step INTEGER, layer INTEGER, head INTEGER, alpha DOUBLE)"""
_SQL_INSERT_GATE = "INSERT INTO gate_alphas (step, layer, head, alpha) VALUES (?, ?, ?, ?)"
# A sweep run: one row per config (statistics over seeds) and one per trained run.
_SQL_CREATE_SWEEP_CONFIGS = """
CREATE TABLE IF NOT EXISTS sweep_configs (
    config_key VARCHAR, label VARCHAR, distances VARCHAR, alpha DOUBLE, variant VARCHAR,
    n INTEGER, failed INTEGER, mean DOUBLE, std DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
    best BOOLEAN, n_paired INTEGER, p_vs_best DOUBLE, mean_skip_loss DOUBLE, mean_base_loss DOUBLE)"""
_SWEEP_CONFIG_COLUMNS = ["config_key", "label", "distances", "alpha", "variant", "n", "failed", "mean", "std",
                         "ci_low", "ci_high", "best", "n_paired", "p_vs_best", "mean_skip_loss", "mean_base_loss"]
_SQL_CREATE_SWEEP_RUNS = """
CREATE TABLE IF NOT EXISTS sweep_runs (
    run_id VARCHAR, config_key VARCHAR, label VARCHAR, seed INTEGER, state VARCHAR, error VARCHAR,
    base_loss DOUBLE, skip_loss DOUBLE, improvement_pct DOUBLE)"""
_SWEEP_RUN_COLUMNS = ["run_id", "config_key", "label", "seed", "state", "error", "base_loss", "skip_loss",
                      "improvement_pct"]
# A dose run: one row per continuation, plus per-token and per-layer entropies.
_SQL_CREATE_GENERATIONS = """
CREATE TABLE IF NOT EXISTS generations (
    gen_id INTEGER, prompt_line INTEGER, prompt VARCHAR, intensity DOUBLE, seed INTEGER,
    mechanisms VARCHAR, text VARCHAR, n_tokens INTEGER, mean_entropy DOUBLE, stopped BOOLEAN)"""
_SQL_INSERT_GENERATION = """
INSERT INTO generations (gen_id, prompt_line, prompt, intensity, seed, mechanisms, text, n_tokens,
                         mean_entropy, stopped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_SQL_CREATE_TOKEN_ENTROPY = """
CREATE TABLE IF NOT EXISTS token_entropy (
    gen_id INTEGER, pos INTEGER, token_id INTEGER, token_text VARCHAR, entropy DOUBLE)"""
_SQL_INSERT_TOKEN_ENTROPY = "INSERT INTO token_entropy (gen_id, pos, token_id, token_text, entropy) VALUES (?, ?, ?, ?, ?)"
_SQL_CREATE_LAYER_ENTROPY = """
CREATE TABLE IF NOT EXISTS layer_entropy (gen_id INTEGER, pos INTEGER, layer INTEGER, entropy DOUBLE)"""
_SQL_INSERT_LAYER_ENTROPY = "INSERT INTO layer_entropy (gen_id, pos, layer, entropy) VALUES (?, ?, ?, ?)"
# A capture run: which tokens were kept (the activations themselves live in Parquet files).
_SQL_CREATE_CAPTURE_TOKENS = """
CREATE TABLE IF NOT EXISTS capture_tokens (
    token_idx INTEGER, seq INTEGER, pos INTEGER, token_id INTEGER, token_text VARCHAR)"""
_SQL_INSERT_CAPTURE_TOKEN = "INSERT INTO capture_tokens (token_idx, seq, pos, token_id, token_text) VALUES (?, ?, ?, ?, ?)"
# An analysis run: every similarity number keyed by source run, metric, layer(s) and head.
_SQL_CREATE_SIMILARITY = """
CREATE TABLE IF NOT EXISTS similarity (
    source VARCHAR, dataset VARCHAR, view VARCHAR, metric VARCHAR,
    layer INTEGER, layer_b INTEGER, head INTEGER, value DOUBLE)"""
_SQL_INSERT_SIMILARITY = """
INSERT INTO similarity (source, dataset, view, metric, layer, layer_b, head, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
_SQL_CREATE_TRAJECTORIES = """
CREATE TABLE IF NOT EXISTS trajectories (
    source VARCHAR, side VARCHAR, unit VARCHAR, unit_id INTEGER, label VARCHAR, layer INTEGER,
    pc1 DOUBLE, pc2 DOUBLE)"""
_SQL_INSERT_TRAJECTORY = """
INSERT INTO trajectories (source, side, unit, unit_id, label, layer, pc1, pc2) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
_SQL_CREATE_PCA = "CREATE TABLE IF NOT EXISTS pca_variance (source VARCHAR, component INTEGER, ratio DOUBLE)"
_SQL_INSERT_PCA = "INSERT INTO pca_variance (source, component, ratio) VALUES (?, ?, ?)"
_MATRIX_SCHEMA_FIELDS = [("side", "string"), ("point", "string"), ("layer", "int32"), ("head", "int32"),
                         ("n", "int32"), ("d", "int32")]
_STEP_TABLES = ("metrics", "tap_weights", "gate_alphas")  # constants: safe in f-strings
_SQL_RESUME_RUN = "UPDATE runs SET status = 'running', error = NULL, finished = NULL, host = ?, pid = ? WHERE run_id = ?"

# --------------------------------------------------------------------------- helpers

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Run ids become directory names, so anything else is rejected before touching disk.
_RUN_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}-\d{8}-\d{6}-[0-9a-f]{6}$")

_RETRY_FIRST_SLEEP_S = 0.02
_RETRY_MAX_SLEEP_S = 0.1
_PROGRESS_MIN_INTERVAL_S = 1.0


def _now() -> datetime:
    # Local wall-clock time, matching the timestamp embedded in run ids.
    return datetime.now()


def _new_run_id(kind: str) -> str:
    return f"{kind}-{_now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} is not JSON-serialisable: {e}") from e


def _from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _is_lock_conflict(err: duckdb.Error) -> bool:
    # Another process: IOException "Could not set lock ... Conflicting lock is held".
    # This process: ConnectionException when a read-write and a read-only
    # connection to the same file overlap (e.g. two threads); equally transient.
    msg = str(err).lower()
    if isinstance(err, duckdb.IOException):
        return "lock" in msg
    if isinstance(err, duckdb.ConnectionException):
        return "different configuration" in msg
    return False


def _connect(path: Path, *, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying with backoff while another holder has it locked."""
    deadline = time.monotonic() + timeout
    sleep = _RETRY_FIRST_SLEEP_S
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            if not _is_lock_conflict(e):
                raise StoreError(f"cannot open {path}: {e}") from e
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = (
                    "another connection in this process"
                    if isinstance(e, duckdb.ConnectionException)
                    else "another process"
                )
                raise StoreLockedError(
                    f"{holder} holds a lock on {path} (still held after "
                    f"{timeout:.1f} s); retry when it is done"
                ) from e
            # Jitter so that contending processes do not retry in lockstep; the
            # low cap keeps a writer from starving behind back-to-back readers.
            time.sleep(min(sleep * random.uniform(0.5, 1.0), remaining))
            sleep = min(sleep * 2, _RETRY_MAX_SLEEP_S)


def _plain(value: Any) -> Any:
    """numpy/pandas scalars as Python values, NaN as NULL, for DuckDB parameters."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and value != value else value
    return value


def _in_clause(column: str, values: list | None) -> tuple[str, list]:
    """``WHERE column IN (?, ...)`` for a constant column name; no filter for None."""
    if values is None:
        return "", []
    if not values:
        return "WHERE FALSE", []
    return f"WHERE {column} IN ({', '.join('?' for _ in values)})", list(values)


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
    run["config"] = _from_json(run["config"])
    run["summary"] = _from_json(run["summary"])
    run["state"] = _run_state(run["status"], run["host"], run["pid"])
    return run


# --------------------------------------------------------------------------- store


class Store:
    """Catalog of runs plus per-run directories under ``data_dir``.

    Nothing is created on disk until the first run is begun, so a Store over a
    missing directory is valid and simply lists no runs.
    """

    def __init__(self, data_dir: str | os.PathLike, *, lock_timeout: float = 15.0) -> None:
        """``lock_timeout``: seconds to keep retrying while another process holds a lock."""
        self.data_dir = Path(data_dir)
        self.catalog_path = self.data_dir / CATALOG_FILE
        self.runs_dir = self.data_dir / "runs"
        self.staging_dir = self.runs_dir / STAGING_NAME
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Store({str(self.data_dir)!r})"

    # ---- the one way into the catalog

    @contextmanager
    def _catalog(self, *, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """Short-lived catalog connection; keep the body to one statement or transaction.

        Holding it longer blocks every other process, readers included.
        """
        if not read_only:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        con = _connect(self.catalog_path, read_only=read_only, timeout=self.lock_timeout)
        try:
            if not read_only:
                con.execute(_SQL_CREATE_RUNS)
            yield con
        except duckdb.Error as e:
            raise StoreError(f"catalog operation on {self.catalog_path} failed: {e}") from e
        finally:
            con.close()

    def _write_catalog(self, sql: str, params: list[Any]) -> None:
        with self._catalog(read_only=False) as con:
            con.execute(sql, params)

    def _select_runs(self, where: str = "", params: list[Any] | None = None) -> list[dict]:
        """Catalog rows as dicts; ``where`` must be built from constants and ``?`` only."""
        if not self.catalog_path.exists():
            return []  # readers never create the catalog
        sql = f"SELECT {_RUN_SELECT} FROM runs {where} ORDER BY created DESC, run_id DESC"
        with self._catalog(read_only=True) as con:
            try:
                rows = con.execute(sql, params or []).fetchall()
            except duckdb.CatalogException:
                return []  # file exists but its creator died before making the table
        return [_row_to_run(RUN_COLUMNS, row) for row in rows]

    # ---- public API

    def list_runs(self, kind: str | None = None, status: str | None = None) -> pd.DataFrame:
        """All runs, newest first, optionally filtered by ``kind`` and/or ``status``.

        Columns are :data:`RUN_COLUMNS` plus ``state``: the status, except that a
        ``running`` row of a dead process on this host reads ``killed``.
        """
        conditions, params = [], []
        if kind is not None:
            conditions.append("kind = ?")
            params.append(kind)
        if status is not None:
            conditions.append("status = ?")
            params.append(status)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        runs = self._select_runs(where, params)

        df = pd.DataFrame(runs, columns=RUN_COLUMNS + ["state"])
        df["created"] = pd.to_datetime(df["created"])
        df["finished"] = pd.to_datetime(df["finished"])
        df["pid"] = df["pid"].astype("Int64")
        df["progress"] = df["progress"].astype("float64")
        return df

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One catalog row as a dict (config/summary parsed, plus ``state``)."""
        runs = self._select_runs("WHERE run_id = ?", [run_id])
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
        config_json = _to_json(config, "config")
        run_id = _new_run_id(kind)
        created = _now()
        # Catalog row first: if anything later fails the row can say so, and if the
        # process dies it shows up as 'killed' instead of leaving an orphan directory.
        self._write_catalog(
            _SQL_INSERT_RUN,
            [run_id, kind, created, model, dataset, config_json, parent,
             socket.gethostname(), os.getpid()],
        )  # fmt: skip
        meta = {
            "run_id": run_id, "kind": kind, "config": config_json, "model": model,
            "dataset": dataset, "parent": parent, "created": created.isoformat(),
        }  # fmt: skip
        try:
            return RunWriter(self, run_id, self.staging_dir / run_id, meta)
        except BaseException as e:
            self._write_catalog(_SQL_MARK_FAILED, [_now(), f"{type(e).__name__}: {e}", run_id])
            raise

    def resume_run(self, run_id: str) -> RunWriter:
        """Reopen a killed or failed run's staging directory to continue writing it."""
        if not _RUN_ID_RE.match(run_id):
            raise RunNotFoundError(f"unknown run id {run_id!r} (not a valid run id)")
        run = self.get_run(run_id)
        if run["state"] not in ("killed", "failed"):
            raise StoreError(f"run {run_id!r} is {run['state']}: only killed or failed runs can be resumed")
        staging = self.staging_dir / run_id
        if not (staging / RUN_DB_FILE).exists():
            raise RunNotFoundError(f"run {run_id!r} has no staging data left in {staging} to resume from")
        self._write_catalog(_SQL_RESUME_RUN, [socket.gethostname(), os.getpid(), run_id])
        return RunWriter(self, run_id, staging, None)

    def open_run(self, run_id: str) -> RunReader:
        """Read-only access to a published (complete) run."""
        return RunReader(run_id, self.run_dir(run_id), self.lock_timeout)

    def run_dir(self, run_id: str) -> Path:
        """Directory of a published run; RunNotFoundError if not (yet) published."""
        if not _RUN_ID_RE.match(run_id):
            raise RunNotFoundError(f"unknown run id {run_id!r} (not a valid run id)")
        run = self.get_run(run_id)
        if run["status"] != "complete":
            raise RunNotFoundError(f"run {run_id!r} is not published (state: {run['state']})")
        path = self.runs_dir / run_id
        if not (path / RUN_DB_FILE).exists():
            raise RunNotFoundError(f"run {run_id!r} is complete but {path} is missing")
        return path

    # ---- used by RunWriter

    def _set_progress(self, run_id: str, fraction: float) -> None:
        self._write_catalog(_SQL_SET_PROGRESS, [fraction, run_id])

    def _mark_complete(self, run_id: str, summary: dict | None) -> None:
        summary_json = None if summary is None else _to_json(summary, "summary")
        self._write_catalog(_SQL_MARK_COMPLETE, [_now(), summary_json, run_id])

    def _mark_failed(self, run_id: str, error: str) -> None:
        self._write_catalog(_SQL_MARK_FAILED, [_now(), error, run_id])


# --------------------------------------------------------------------------- writer


class RunWriter:
    """Writes one run into its staging directory; publishes it on :meth:`finish`.

    ``dir`` is where the job may put artifact files next to ``run.duckdb``; after
    :meth:`finish` it points at the published directory.
    """

    def __init__(
        self, store: Store, run_id: str, staging: Path, meta: dict[str, Any] | None
    ) -> None:
        """``meta=None`` reopens an existing staging directory (resume)."""
        self.store = store
        self.run_id = run_id
        self.dir = staging
        self._done = False
        self._last_progress = float("-inf")
        # Rows are written at once by default; a fast loop sets flush_interval (seconds) to
        # batch them into one transaction, and calls flush() before it checkpoints.
        self.flush_interval = 0.0
        self._last_flush = float("-inf")
        self._pending: dict[str, tuple[str, list[tuple]]] = {}
        staging.mkdir(parents=True, exist_ok=meta is None)
        # Nobody else ever opens a staging database, so one connection for the
        # whole run is safe and avoids reopen cost on every metrics write.
        self._con: duckdb.DuckDBPyConnection | None = _connect(
            staging / RUN_DB_FILE, read_only=False, timeout=store.lock_timeout
        )
        try:
            for create in (_SQL_CREATE_META, _SQL_CREATE_METRICS, _SQL_CREATE_TAPS, _SQL_CREATE_GATES):
                self._con.execute(create)
            if meta is not None:
                rows = [(k, None if v is None else str(v)) for k, v in meta.items()]
                self._con.executemany(_SQL_INSERT_META, rows)
        except duckdb.Error as e:
            self._con.close()
            raise StoreError(f"cannot initialise {staging / RUN_DB_FILE}: {e}") from e

    def __repr__(self) -> str:
        return f"RunWriter({self.run_id!r})"

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._done:
            return False
        if exc is None:
            self.finish()
            return False
        try:
            self.fail(f"{exc_type.__name__}: {exc}")
        except StoreError:
            # Never mask the job's own exception; the row will read 'killed' once
            # this process is gone.
            pass
        return False

    def _require_open(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(f"run {self.run_id!r} is already finished or failed")
        return self._con

    def log_metrics(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        """Append one step's scalar metrics, atomically."""
        when = _now()
        rows = [(int(step), split, str(name), float(value), when) for name, value in metrics.items()]
        self._insert(_SQL_INSERT_METRIC, rows, "metrics")

    def log_tap_weights(self, step: int, weights: dict[int, dict[int, float]]) -> None:
        """One step's tap weights: ``{layer: {distance: weight}}``."""
        rows = [(int(step), int(l), int(d), float(w)) for l, taps in weights.items() for d, w in taps.items()]
        self._insert(_SQL_INSERT_TAP, rows, "tap weights")

    def log_gate_alphas(self, step: int, alphas: dict[int, list[float]]) -> None:
        """One step's per-head gate alphas: ``{layer: [alpha per head]}``."""
        rows = [(int(step), int(l), h, float(a)) for l, heads in alphas.items() for h, a in enumerate(heads)]
        self._insert(_SQL_INSERT_GATE, rows, "gate alphas")

    def log_generation(
        self, gen_id: int, *, prompt_line: int, prompt: str, intensity: float, seed: int,
        mechanisms: str, text: str, token_ids: list[int], token_texts: list[str],
        entropy: list[float], layer_entropy: list[list[float]], stopped: bool,
    ) -> None:
        """One dosed continuation with its per-token and per-layer entropies (bits)."""
        con = self._require_open()
        for create in (_SQL_CREATE_GENERATIONS, _SQL_CREATE_TOKEN_ENTROPY, _SQL_CREATE_LAYER_ENTROPY):
            con.execute(create)
        mean = float(sum(entropy) / len(entropy)) if entropy else None
        self._insert(_SQL_INSERT_GENERATION, [(gen_id, prompt_line, prompt, float(intensity), seed, mechanisms,
                                               text, len(token_ids), mean, bool(stopped))], "generations")
        self._insert(_SQL_INSERT_TOKEN_ENTROPY, [(gen_id, pos, int(t), s, float(e)) for pos, (t, s, e)
                                                 in enumerate(zip(token_ids, token_texts, entropy))], "token entropy")
        self._insert(_SQL_INSERT_LAYER_ENTROPY, [(gen_id, pos, layer, float(e)) for pos, row in enumerate(layer_entropy)
                                                 for layer, e in enumerate(row)], "layer entropy")

    def write_matrices(self, filename: str, matrices) -> Path:
        """Write ``(side, point, layer, head, array (n, d))`` records to a Parquet file in the run.

        One row (and row group) per matrix, the values as a FLOAT[] list, so that a reader
        fetches only the layers and heads it asks for (:meth:`RunReader.matrix`).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._require_open()
        if not re.match(r"^[a-z_]+\.parquet$", filename):
            raise StoreError(f"invalid matrix file name {filename!r}")
        schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _MATRIX_SCHEMA_FIELDS]
                           + [("data", pa.list_(pa.float32()))])
        path = self.dir / filename
        with pq.ParquetWriter(str(path), schema, compression="zstd") as out:
            for side, point, layer, head, array in matrices:
                flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
                data = pa.ListArray.from_arrays(pa.array([0, flat.size], type=pa.int32()), pa.array(flat))
                n, d = array.shape
                columns = [pa.array([side]), pa.array([point]), pa.array([layer], pa.int32()),
                           pa.array([head], pa.int32()), pa.array([n], pa.int32()), pa.array([d], pa.int32()), data]
                out.write_table(pa.Table.from_arrays(columns, schema=schema))
        return path

    def write_capture_tokens(self, rows: list[tuple[int, int, int, int, str]]) -> None:
        """(token_idx, seq, pos, token_id, token_text) of the captured tokens."""
        self._require_open().execute(_SQL_CREATE_CAPTURE_TOKENS)
        self._insert(_SQL_INSERT_CAPTURE_TOKEN, rows, "capture tokens")

    def write_similarity(self, rows: list[tuple]) -> None:
        """(source, dataset, view, metric, layer, layer_b, head, value) rows."""
        self._require_open().execute(_SQL_CREATE_SIMILARITY)
        self._insert(_SQL_INSERT_SIMILARITY, [tuple(_plain(v) for v in r) for r in rows], "similarity")

    def write_trajectories(self, rows: list[tuple], variance: list[tuple]) -> None:
        """PCA paths (source, side, unit, unit_id, label, layer, pc1, pc2) and (source, component, ratio)."""
        con = self._require_open()
        con.execute(_SQL_CREATE_TRAJECTORIES)
        con.execute(_SQL_CREATE_PCA)
        self._insert(_SQL_INSERT_TRAJECTORY, [tuple(_plain(v) for v in r) for r in rows], "trajectories")
        self._insert(_SQL_INSERT_PCA, [tuple(_plain(v) for v in r) for r in variance], "explained variance")

    def write_sweep(self, configs: pd.DataFrame, runs: pd.DataFrame) -> None:
        """The sweep's per-config statistics and per-run results (replacing earlier ones)."""
        con = self._require_open()
        self.flush()
        try:
            con.begin()
            for create, table, columns, frame in (
                (_SQL_CREATE_SWEEP_CONFIGS, "sweep_configs", _SWEEP_CONFIG_COLUMNS, configs),
                (_SQL_CREATE_SWEEP_RUNS, "sweep_runs", _SWEEP_RUN_COLUMNS, runs),
            ):
                con.execute(create)
                con.execute(f"DELETE FROM {table}")
                rows = [tuple(_plain(v) for v in row) for row in frame[columns].itertuples(index=False)]
                if rows:
                    marks = ", ".join("?" for _ in columns)
                    con.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise StoreError(f"cannot write the sweep summary of run {self.run_id!r}: {e}") from e

    def truncate_after(self, step: int) -> None:
        """Drop every step-indexed row after ``step`` (a resumed job replays from there)."""
        self.flush()
        con = self._require_open()
        try:
            con.begin()
            for table in _STEP_TABLES:
                con.execute(f"DELETE FROM {table} WHERE step > ?", [int(step)])
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise StoreError(f"cannot truncate run {self.run_id!r}: {e}") from e

    def _insert(self, sql: str, rows: list[tuple], what: str) -> None:
        self._require_open()
        if rows:
            self._pending.setdefault(sql, (what, []))[1].extend(rows)
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Write every buffered row in one transaction (see ``flush_interval``)."""
        con = self._require_open()
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        what = ", ".join(w for w, _ in self._pending.values())
        try:
            con.begin()
            for sql, (_, rows) in self._pending.items():
                con.executemany(sql, rows)
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise StoreError(f"cannot log {what} for run {self.run_id!r}: {e}") from e
        finally:
            self._pending = {}

    def set_progress(self, fraction: float) -> None:
        """Record progress in [0, 1] in the catalog, at most once per second.

        Each update locks the catalog briefly, so calling this every step of a
        fast loop is fine: extra calls are dropped.
        """
        self._require_open()
        now = time.monotonic()
        if now - self._last_progress < _PROGRESS_MIN_INTERVAL_S:
            return
        self._last_progress = now
        self.store._set_progress(self.run_id, min(1.0, max(0.0, float(fraction))))

    def _close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def finish(self, summary: dict | None = None) -> None:
        """Close the run database, publish the directory and mark the run complete."""
        self._require_open()
        if summary is not None:
            _to_json(summary, "summary")  # fail before publishing, not after
        self.flush()
        self._close()
        published = self.store.runs_dir / self.run_id
        try:
            # Atomic on one filesystem (staging lives inside runs/): readers see
            # either no run directory or the whole one.
            os.rename(self.dir, published)
        except OSError as e:
            self._done = True
            self.store._mark_failed(self.run_id, f"publish failed: {e}")
            raise StoreError(f"cannot publish run {self.run_id!r} to {published}: {e}") from e
        self.dir = published
        self._done = True
        self.store._mark_complete(self.run_id, summary)

    def fail(self, error: str) -> None:
        """Mark the run failed; the staging directory stays for inspection or resume."""
        try:
            if self._con is not None:
                self.flush()  # keep what was logged before the failure
        except StoreError:
            pass
        self._close()
        self._done = True
        self.store._mark_failed(self.run_id, error)


# --------------------------------------------------------------------------- reader


class RunReader:
    """Read-only view of a published run's ``run.duckdb``; use as a context manager."""

    def __init__(self, run_id: str, run_dir: Path, lock_timeout: float = 15.0) -> None:
        self.run_id = run_id
        self.dir = run_dir
        self._con: duckdb.DuckDBPyConnection | None = _connect(
            run_dir / RUN_DB_FILE, read_only=True, timeout=lock_timeout
        )

    def __repr__(self) -> str:
        return f"RunReader({self.run_id!r})"

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection (and with it the file's shared lock)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def _query(self, sql: str, params: list[Any]) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(f"reader for run {self.run_id!r} is closed")
        try:
            return self._con.execute(sql, params)
        except duckdb.Error as e:
            raise StoreError(f"query on run {self.run_id!r} failed: {e}") from e

    def meta(self) -> dict[str, str | None]:
        """The run's self-description (run_id, kind, config json, ...)."""
        return dict(self._query(_SQL_SELECT_META, []).fetchall())

    def metrics(self, names: list[str] | None = None, split: str | None = None) -> pd.DataFrame:
        """Logged metrics (step, split, name, value, time), ordered by step then name."""
        conditions: list[str] = []
        params: list[Any] = []
        if names is not None:
            if not names:
                return pd.DataFrame(columns=["step", "split", "name", "value", "time"])
            # Only the placeholders are generated; the names themselves are parameters.
            conditions.append(f"name IN ({', '.join('?' for _ in names)})")
            params.extend(names)
        if split is not None:
            conditions.append("split = ?")
            params.append(split)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        sql = f"SELECT step, split, name, value, time FROM metrics {where} ORDER BY step, name, split"
        return self._query(sql, params).fetchdf()

    def tap_weights(self) -> pd.DataFrame:
        """Tap weights over training: step, layer, distance, weight."""
        return self._query(
            "SELECT step, layer, distance, weight FROM tap_weights ORDER BY step, layer, distance", []
        ).fetchdf()

    def gate_alphas(self) -> pd.DataFrame:
        """Per-head gate alphas over training: step, layer, head, alpha."""
        return self._query(
            "SELECT step, layer, head, alpha FROM gate_alphas ORDER BY step, layer, head", []
        ).fetchdf()

    def sweep_configs(self) -> pd.DataFrame:
        """Per-config statistics of a sweep run (mean, std, 95% CI, paired p vs the best)."""
        cols = ", ".join(_SWEEP_CONFIG_COLUMNS)
        return self._query(f"SELECT {cols} FROM sweep_configs ORDER BY mean DESC NULLS LAST", []).fetchdf()

    def sweep_runs(self) -> pd.DataFrame:
        """Every run of a sweep with its seed, state and losses."""
        cols = ", ".join(_SWEEP_RUN_COLUMNS)
        return self._query(f"SELECT {cols} FROM sweep_runs ORDER BY label, seed", []).fetchdf()

    def generations(self) -> pd.DataFrame:
        """Every continuation of a dose run (prompt, intensity, seed, text, mean entropy)."""
        return self._query(
            "SELECT gen_id, prompt_line, prompt, intensity, seed, mechanisms, text, n_tokens, mean_entropy, stopped "
            "FROM generations ORDER BY prompt_line, seed, intensity", []
        ).fetchdf()

    def token_entropy(self, gen_ids: list[int] | None = None) -> pd.DataFrame:
        """Next-token entropy (bits) per generated token: gen_id, pos, token_id, token_text, entropy."""
        where, params = _in_clause("gen_id", gen_ids)
        return self._query(
            f"SELECT gen_id, pos, token_id, token_text, entropy FROM token_entropy {where} ORDER BY gen_id, pos",
            params).fetchdf()

    def layer_entropy(self, gen_ids: list[int] | None = None) -> pd.DataFrame:
        """Hidden-state entropy (bits) per token and layer: gen_id, pos, layer, entropy."""
        where, params = _in_clause("gen_id", gen_ids)
        return self._query(
            f"SELECT gen_id, pos, layer, entropy FROM layer_entropy {where} ORDER BY gen_id, pos, layer",
            params).fetchdf()

    def capture_tokens(self) -> pd.DataFrame:
        """The captured tokens: token_idx (row in every matrix), seq, pos, token_id, token_text."""
        return self._query(
            "SELECT token_idx, seq, pos, token_id, token_text FROM capture_tokens ORDER BY token_idx", []
        ).fetchdf()

    def matrix_index(self, filename: str) -> pd.DataFrame:
        """Which matrices a Parquet file of this run holds: side, point, layer, head, n, d."""
        path = self._file(filename)
        return self._query(
            "SELECT side, point, layer, head, n, d FROM read_parquet(?) ORDER BY side, point, layer, head",
            [str(path)]).fetchdf()

    def matrix(self, filename: str, side: str, point: str, layer: int, head: int = -1) -> np.ndarray:
        """One stored matrix (n, d) as float32, reading only its own row group."""
        found = self._read_matrices(filename, "AND layer = $layer AND head = $head",
                                    {"side": side, "point": point, "layer": int(layer), "head": int(head)})
        if len(found) != 1:
            raise StoreError(f"run {self.run_id!r} has no {side} {point} matrix for layer {layer}, head {head}")
        return next(iter(found.values()))

    def matrices(self, filename: str, side: str, point: str) -> dict[tuple[int, int], np.ndarray]:
        """Every ``{(layer, head): matrix}`` of one side and point, in one query."""
        return self._read_matrices(filename, "", {"side": side, "point": point})

    def _read_matrices(self, filename: str, extra_where: str, params: dict) -> dict[tuple[int, int], np.ndarray]:
        """``extra_where`` is a constant condition on named parameters; values stay parameters."""
        path = self._file(filename)
        if self._con is None:
            raise StoreError(f"reader for run {self.run_id!r} is closed")
        sql = ("SELECT layer, head, n, d, data FROM read_parquet($path) WHERE side = $side AND point = $point "
               f"{extra_where} ORDER BY layer, head")
        try:
            table = self._con.sql(sql, params={"path": str(path), **params}).to_arrow_table()
        except duckdb.Error as e:
            raise StoreError(f"query on run {self.run_id!r} failed: {e}") from e
        values = table.column("data").combine_chunks()
        flat, offsets = values.values.to_numpy(), values.offsets.to_numpy()
        meta = zip(*(table.column(c).to_pylist() for c in ("layer", "head", "n", "d")))
        return {(layer, head): flat[offsets[i] : offsets[i + 1]].reshape(n, d)
                for i, (layer, head, n, d) in enumerate(meta)}

    def _file(self, filename: str) -> Path:
        path = self.dir / filename
        if not re.match(r"^[a-z_]+\.parquet$", filename) or not path.is_file():
            raise StoreError(f"run {self.run_id!r} has no {filename}")
        return path

    def similarity(self, view: str | None = None, metric: str | None = None) -> pd.DataFrame:
        """Similarity results: source, dataset, view, metric, layer, layer_b, head, value."""
        conditions, params = [], []
        for column, value in (("view", view), ("metric", metric)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        return self._query(
            f"SELECT source, dataset, view, metric, layer, layer_b, head, value FROM similarity {where} "
            "ORDER BY source, view, metric, layer, layer_b, head", params).fetchdf()

    def trajectories(self) -> pd.DataFrame:
        """PCA paths through the layers: source, side, unit, unit_id, label, layer, pc1, pc2."""
        return self._query(
            "SELECT source, side, unit, unit_id, label, layer, pc1, pc2 FROM trajectories "
            "ORDER BY source, side, unit, unit_id, layer", []).fetchdf()

    def pca_variance(self) -> pd.DataFrame:
        return self._query("SELECT source, component, ratio FROM pca_variance ORDER BY source, component", []).fetchdf()

"""One run's own database: :class:`RunWriter` (staging, write buffer, publishing) and :class:`RunReader`.

A run's ``run.duckdb`` is private to the job writing it, in a staging directory, and is
published with one atomic ``os.rename`` when complete, so a killed job never leaves a
half-written run visible. Readers only ever open published runs, read-only.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd

from psilonet.store import matrices as _matrices
from psilonet.store import tables as T
from psilonet.store.db import connect, now, plain, reason, to_json
from psilonet.store.errors import CatalogBehind, StoreError, StoreLockedError, Terminated, disk_full

if TYPE_CHECKING:
    from psilonet.store.catalog import Store

RUN_DB_FILE = "run.duckdb"
# Kinds that continue from their staging folder (jobs.train --resume); every other kind's
# partial files are removed when it fails, so a failed capture never holds the disk it filled.
RESUMABLE_KINDS = ("train",)
_PROGRESS_MIN_INTERVAL_S = 1.0


class RunWriter:
    """Writes one run into its staging directory; publishes it on :meth:`finish`.

    ``dir`` is where the job may put artifact files next to ``run.duckdb``; after
    :meth:`finish` it points at the published directory.
    """

    def __init__(
        self, store: Store, run_id: str, staging: Path, meta: dict[str, Any] | None, kind: str | None = None
    ) -> None:
        """``meta=None`` reopens an existing staging directory (resume) of a run of ``kind``."""
        self.store = store
        self.run_id = run_id
        self.kind = meta["kind"] if meta is not None else kind
        self.dir = staging
        self._done = False
        self._last_progress = float("-inf")
        # Rows are written at once by default; a fast loop sets flush_interval (seconds) to
        # batch them into one transaction, and calls flush() before it checkpoints.
        self.flush_interval = 0.0
        self._last_flush = float("-inf")
        self._pending: dict[str, tuple[str, list[tuple]]] = {}
        self._created: set[str] = set()
        staging.mkdir(parents=True, exist_ok=meta is None)
        # Nobody else ever opens a staging database, so one connection for the
        # whole run is safe and avoids reopen cost on every metrics write.
        self._con: duckdb.DuckDBPyConnection | None = connect(
            staging / RUN_DB_FILE, read_only=False, timeout=store.lock_timeout
        )
        try:
            for table in T.EVERY_RUN:
                self._create(table)
            if meta is not None:
                meta = {**meta, "schema_version": T.SCHEMA_VERSION}
                rows = [(k, None if v is None else str(v)) for k, v in meta.items()]
                self._con.executemany(T.RUN_META.insert(), rows)
        except duckdb.Error as e:
            self._con.close()
            raise StoreError(f"cannot initialise {staging / RUN_DB_FILE}: {reason(e)}") from e

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
        # The job's last words name the run (and how to resume it) from these.
        exc.psilonet_run = (self.run_id, self.kind)
        try:
            if isinstance(exc, Terminated):
                self.fail("terminated (SIGTERM)", status="interrupted")
            elif isinstance(exc, KeyboardInterrupt):  # Ctrl-C: resumable, and not a failure
                self.fail("interrupted (Ctrl-C)", status="interrupted")
            else:
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

    def _create(self, table: T.Table) -> None:
        if table.name not in self._created:
            self._require_open().execute(table.create())
            self._created.add(table.name)

    # ---- rows of declared tables

    def write_rows(self, table: T.Table, rows: list[tuple]) -> None:
        """Append ``rows`` (values in ``table.names`` order) to ``table``, creating it if needed.

        NaN and numpy scalars are stored as NULL and plain values. Rows are buffered (see
        ``flush_interval``) and written in one transaction with the other pending rows.
        """
        self._create(table)
        self._insert(table, [tuple(plain(v) for v in r) for r in rows])

    def log_metrics(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        """Append one step's scalar metrics, atomically."""
        when = now()
        rows = [(int(step), split, str(name), float(value), when) for name, value in metrics.items()]
        self._insert(T.METRICS, rows)

    def log_tap_weights(self, step: int, weights: dict[int, dict[int, float]]) -> None:
        """One step's tap weights: ``{layer: {distance: weight}}``."""
        rows = [(int(step), int(l), int(d), float(w)) for l, taps in weights.items() for d, w in taps.items()]
        self._insert(T.TAP_WEIGHTS, rows)

    def log_gate_alphas(self, step: int, alphas: dict[int, list[float]]) -> None:
        """One step's per-head gate alphas: ``{layer: [alpha per head]}``."""
        rows = [(int(step), int(l), h, float(a)) for l, heads in alphas.items() for h, a in enumerate(heads)]
        self._insert(T.GATE_ALPHAS, rows)

    def log_generation(
        self, gen_id: int, *, prompt_line: int, prompt: str, intensity: float, seed: int,
        mechanisms: str, text: str, token_ids: list[int], token_texts: list[str],
        entropy: list[float], layer_entropy: list[list[float]], stopped: bool,
    ) -> None:
        """One dosed continuation with its per-token and per-layer entropies (bits)."""
        for table in (T.GENERATIONS, T.TOKEN_ENTROPY, T.LAYER_ENTROPY):
            self._create(table)
        mean = float(sum(entropy) / len(entropy)) if entropy else None
        self._insert(T.GENERATIONS, [(gen_id, prompt_line, prompt, float(intensity), seed, mechanisms,
                                      text, len(token_ids), mean, bool(stopped))])
        self._insert(T.TOKEN_ENTROPY, [(gen_id, pos, int(t), s, float(e)) for pos, (t, s, e)
                                       in enumerate(zip(token_ids, token_texts, entropy))])
        self._insert(T.LAYER_ENTROPY, [(gen_id, pos, layer, float(e)) for pos, row in enumerate(layer_entropy)
                                       for layer, e in enumerate(row)])

    def write_matrices(self, filename: str, matrices) -> Path:
        """Write ``(side, point, layer, head, array (n, d))`` records to a Parquet file in the run.

        One row (and row group) per matrix, so that a reader fetches only the layers and heads
        it asks for (:meth:`RunReader.matrices`).
        """
        self._require_open()
        _matrices.check_name(filename)
        return _matrices.write(self.dir / filename, matrices)

    def write_capture_tokens(self, rows: list[tuple[int, int, int, int, str]]) -> None:
        """(token_idx, seq, pos, token_id, token_text) of the captured tokens."""
        self._create(T.CAPTURE_TOKENS)
        self._insert(T.CAPTURE_TOKENS, rows)

    def write_similarity(self, rows: list[tuple]) -> None:
        """(source, dataset, view, metric, layer, layer_b, head, value, representation) rows."""
        self.write_rows(T.SIMILARITY, rows)

    def write_trajectories(self, rows: list[tuple], variance: list[tuple]) -> None:
        """PCA paths (source, side, unit, unit_id, label, layer, pc1, pc2, representation) and
        (source, component, ratio, representation)."""
        self._create(T.TRAJECTORIES)
        self._create(T.PCA_VARIANCE)
        self.write_rows(T.TRAJECTORIES, rows)
        self.write_rows(T.PCA_VARIANCE, variance)

    def write_sweep(self, configs: pd.DataFrame, runs: pd.DataFrame) -> None:
        """The sweep's per-config statistics and per-run results (replacing earlier ones)."""
        con = self._require_open()
        self.flush()
        try:
            con.begin()
            for table, frame in ((T.SWEEP_CONFIGS, configs), (T.SWEEP_RUNS, runs)):
                con.execute(table.create())
                con.execute(table.delete_all())
                rows = [tuple(plain(v) for v in row) for row in frame[list(table.names)].itertuples(index=False)]
                if rows:
                    con.executemany(table.insert(), rows)
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise StoreError(f"cannot write the sweep summary of run {self.run_id!r}: {reason(e)}") from e

    def truncate_after(self, step: int) -> None:
        """Drop every step-indexed row after ``step`` (a resumed job replays from there)."""
        self.flush()
        con = self._require_open()
        try:
            con.begin()
            for table in T.STEP_TABLES:
                con.execute(f"DELETE FROM {table.name} WHERE step > ?", [int(step)])
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise StoreError(f"cannot truncate run {self.run_id!r}: {reason(e)}") from e

    # ---- the write buffer

    def _insert(self, table: T.Table, rows: list[tuple]) -> None:
        self._require_open()
        if rows:
            self._pending.setdefault(table.insert(), (table.label, []))[1].extend(rows)
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
            raise StoreError(f"cannot log {what} for run {self.run_id!r}: {reason(e)}") from e
        finally:
            self._pending = {}

    # ---- lifecycle

    def set_progress(self, fraction: float) -> None:
        """Record progress in [0, 1] in the catalog, at most once per second.

        Each update locks the catalog briefly, so calling this every step of a
        fast loop is fine: extra calls are dropped.
        """
        self._require_open()
        t = time.monotonic()
        if t - self._last_progress < _PROGRESS_MIN_INTERVAL_S:
            return
        self._last_progress = t
        # A locked catalog skips this update (the next one carries the newer value): progress
        # is a display, and waiting for it would stall or end the job.
        self.store._set_progress(self.run_id, min(1.0, max(0.0, float(fraction))))

    def _close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def finish(self, summary: dict | None = None) -> None:
        """Record the summary in the run, publish the directory, then mark the catalog row complete.

        The run's own database holds its summary before it is published, so a crash or a locked
        catalog after the rename still leaves a run the catalog reconciles as complete.
        """
        con = self._require_open()
        summary_json = to_json(summary, "summary")  # fail before publishing, not after
        finished = now()
        self.flush()
        try:
            con.begin()
            where_sql, params = T.RUN_META.where(key=["summary", "finished"])  # a resumed run may have them
            con.execute(f"{T.RUN_META.delete_all()} {where_sql}", params)
            con.executemany(T.RUN_META.insert(), [("summary", summary_json), ("finished", finished.isoformat())])
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise StoreError(f"cannot record the summary of run {self.run_id!r}: {reason(e)}") from e
        self._close()
        published = self.store.runs_dir / self.run_id
        try:
            # Atomic on one filesystem (staging lives inside runs/): readers see
            # either no run directory or the whole one.
            os.rename(self.dir, published)
        except OSError as e:
            self._done = True
            self.store._mark_failed(self.run_id, f"publish failed: {e}")
            raise StoreError(f"cannot publish run {self.run_id!r} to {published}: {e.strerror or e}") from e
        self.dir = published
        self._done = True
        try:
            self.store._mark_complete(self.run_id, summary, finished)
        except StoreLockedError:
            raise
        except StoreError as e:  # a full disk, say: the run is complete all the same
            why = "the disk is full" if disk_full(e) else "the catalog could not be written"
            raise CatalogBehind(f"run {self.run_id} is published and complete, but the catalog could not be told "
                                f"({why}); it reads complete on the next look") from None

    def fail(self, error: str, status: str = "failed") -> None:
        """Mark the run failed (or ``interrupted``). A resumable kind's staging directory stays for
        the resume; any other kind's partial files are removed (nothing can continue them)."""
        resumable = self.kind in RESUMABLE_KINDS
        try:
            if self._con is not None and resumable:
                self.flush()  # keep what was logged before the failure
        except StoreError:
            pass
        self._close()
        self._done = True
        if not resumable:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.store._mark_failed(self.run_id, error, status)


class RunReader:
    """Read-only view of a published run's ``run.duckdb``; use as a context manager."""

    def __init__(self, run_id: str, run_dir: Path, lock_timeout: float = 15.0) -> None:
        self.run_id = run_id
        self.dir = run_dir
        self._columns: dict[str, list[str]] | None = None
        self._con: duckdb.DuckDBPyConnection | None = connect(
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

    def _open(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(f"reader for run {self.run_id!r} is closed")
        return self._con

    def _query(self, sql: str, params: list[Any]) -> duckdb.DuckDBPyConnection:
        con = self._open()
        try:
            return con.execute(sql, params)
        except duckdb.Error as e:
            raise StoreError(f"query on run {self.run_id!r} failed: {reason(e)}") from e

    def rows(self, table: T.Table, **filters: Any) -> pd.DataFrame:
        """Every row of ``table`` in its declared order, filtered by ``column=value`` (see ``where``).

        A column an older run's table lacks is read as its documented default
        (:data:`tables.LEGACY_DEFAULTS`: ``raw`` for analyses made before representations).
        """
        where_sql, params = table.where(**filters)
        stored = self._stored_columns(table) if table.name in T.LEGACY_TABLES else None
        if stored:
            try:
                legacy = table.legacy_params(stored)
            except ValueError as e:
                raise StoreError(f"run {self.run_id!r} cannot be read: {e}") from None
            return self._query(table.select(where_sql, stored), legacy + params).fetchdf()
        return self._query(table.select(where_sql), params).fetchdf()

    def _stored_columns(self, table: T.Table) -> list[str]:
        """The columns ``table`` has in this run's file (empty where the run never wrote it)."""
        if self._columns is None:
            self._columns = {}
        if table.name not in self._columns:
            found = self._query("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                                [table.name]).fetchall()
            self._columns[table.name] = [c for (c,) in found]
        return self._columns[table.name]

    def meta(self) -> dict[str, str | None]:
        """The run's self-description (run_id, kind, config json, schema_version, ...)."""
        return dict(self._query(T.RUN_META.select(), []).fetchall())

    def schema_version(self) -> int:
        """The layout the run was written in: its recorded ``schema_version``, or 1 for a run made
        before versions were recorded (see :data:`tables.SCHEMA_VERSION`)."""
        value = self.meta().get("schema_version")
        return int(value) if value and value.isdigit() else 1

    def metrics(self, names: list[str] | None = None, split: str | None = None) -> pd.DataFrame:
        """Logged metrics (step, split, name, value, time), ordered by step then name."""
        return self.rows(T.METRICS, name=names, split=split)

    def tap_weights(self) -> pd.DataFrame:
        """Tap weights over training: step, layer, distance, weight."""
        return self.rows(T.TAP_WEIGHTS)

    def gate_alphas(self) -> pd.DataFrame:
        """Per-head gate alphas over training: step, layer, head, alpha."""
        return self.rows(T.GATE_ALPHAS)

    def sweep_configs(self) -> pd.DataFrame:
        """Per-config statistics of a sweep run (mean, std, 95% CI, paired p vs the best)."""
        return self.rows(T.SWEEP_CONFIGS)

    def sweep_runs(self) -> pd.DataFrame:
        """Every run of a sweep with its seed, state and losses."""
        return self.rows(T.SWEEP_RUNS)

    def generations(self) -> pd.DataFrame:
        """Every continuation of a dose run (prompt, intensity, seed, text, mean entropy)."""
        return self.rows(T.GENERATIONS)

    def token_entropy(self, gen_ids: list[int] | None = None) -> pd.DataFrame:
        """Next-token entropy (bits) per generated token: gen_id, pos, token_id, token_text, entropy."""
        return self.rows(T.TOKEN_ENTROPY, gen_id=gen_ids)

    def layer_entropy(self, gen_ids: list[int] | None = None) -> pd.DataFrame:
        """Hidden-state entropy (bits) per token and layer: gen_id, pos, layer, entropy."""
        return self.rows(T.LAYER_ENTROPY, gen_id=gen_ids)

    def _rows_if_stored(self, table: T.Table, **filters: Any) -> pd.DataFrame:
        """Like :meth:`rows`, but an empty frame where the run never wrote ``table`` (older runs)."""
        found = self._query("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                            [table.name]).fetchone()[0]
        if not found:
            return pd.DataFrame(columns=list(table.names))
        return self.rows(table, **filters)

    def bio_strengths(self) -> pd.DataFrame:
        """Fatigue and Hebbian strengths per generation of a dose run (empty without any)."""
        return self._rows_if_stored(T.BIO_STRENGTHS)

    def bio_pool(self, gen_ids: list[int] | None = None) -> pd.DataFrame:
        """Fatigue pool per generation, layer and head: gen_id, layer, head, level (mean over
        keys), attended (pool of the keys the head attends to)."""
        return self._rows_if_stored(T.BIO_POOL, gen_id=gen_ids)

    def bio_fast_norm(self, gen_ids: list[int] | None = None) -> pd.DataFrame:
        """Mean fast-weight norm per generation and layer: gen_id, layer, norm."""
        return self._rows_if_stored(T.BIO_FAST_NORM, gen_id=gen_ids)

    def bio_eval(self) -> pd.DataFrame:
        """Per-window loss and entropy of a bio evaluation run: corpus, window_idx, mechanism,
        strength, loss, entropy."""
        return self._rows_if_stored(T.BIO_EVAL)

    def steering_vector(self) -> pd.DataFrame:
        """The steering vector of a steering run or a dose run with steering rows: layer, dim,
        value (empty for other runs)."""
        return self._rows_if_stored(T.STEERING_VECTOR)

    def steering_rows(self) -> pd.DataFrame:
        """Each generation's steering strength: gen_id, strength (empty without steering)."""
        return self._rows_if_stored(T.STEERING_ROWS)

    def ablation(self) -> pd.DataFrame:
        """Per component of an ablation run: the paired loss change with it off, CI, rank and
        learned weight (empty for other runs)."""
        return self._rows_if_stored(T.ABLATION)

    def capture_tokens(self) -> pd.DataFrame:
        """The captured tokens: token_idx (row in every matrix), seq, pos, token_id, token_text."""
        return self.rows(T.CAPTURE_TOKENS)

    def similarity(self, view: str | None = None, metric: str | None = None,
                   representation: str | None = None) -> pd.DataFrame:
        """Similarity results: source, dataset, view, metric, layer, layer_b, head, value, representation."""
        return self.rows(T.SIMILARITY, view=view, metric=metric, representation=representation)

    def trajectories(self, representation: str | None = None) -> pd.DataFrame:
        """PCA paths through the layers: source, side, unit, unit_id, label, layer, pc1, pc2, representation."""
        return self.rows(T.TRAJECTORIES, representation=representation)

    def pca_variance(self, representation: str | None = None) -> pd.DataFrame:
        return self.rows(T.PCA_VARIANCE, representation=representation)

    def sink_tokens(self) -> pd.DataFrame:
        """The tokens an analysis's no-sink representation dropped, per source (none for an
        analysis made before representations existed)."""
        return self._rows_if_stored(T.SINK_TOKENS)

    def norm_stats(self) -> pd.DataFrame:
        """A capture's token-norm distribution per side and layer (median, p99, max, threshold, n_over)."""
        return self.rows(T.NORM_STATS)

    def norm_outliers(self) -> pd.DataFrame:
        """A capture's tokens above the outlier threshold: side, layer, token_idx, norm, ratio."""
        return self.rows(T.NORM_OUTLIERS)

    def outlier_dims(self) -> pd.DataFrame:
        """The dimensions holding most of the outlier tokens' squared norm, per side and layer."""
        return self.rows(T.OUTLIER_DIMS)

    # ---- matrices (Parquet files next to run.duckdb)

    def matrices(self, filename: str, side: str, point: str) -> dict[tuple[int, int], np.ndarray]:
        """Every ``{(layer, head): float32 matrix (n, d)}`` of one side and point, in one query."""
        path = self._file(filename)
        try:
            return _matrices.read(self._open(), path, side=side, point=point)
        except duckdb.Error as e:
            raise StoreError(f"query on run {self.run_id!r} failed: {reason(e)}") from e

    def lens_summary(self) -> pd.DataFrame:
        """A capture's corpus lens per side and state (empty for captures made before it existed)."""
        return self._rows_if_stored(T.LENS_SUMMARY)

    def attention_summary(self) -> pd.DataFrame:
        """A capture's attention summaries per side, tap, block and head (empty for older captures)."""
        return self._rows_if_stored(T.ATTENTION_SUMMARY)

    def lens_grid(self) -> pd.DataFrame:
        """A capture's layer x position lens grid of its first window (empty for older captures)."""
        return self._rows_if_stored(T.LENS_GRID)

    def stored_matrices(self, filename: str, side: str, point: str) -> dict[tuple[int, int], np.ndarray]:
        """Like :meth:`matrices`, but empty where the run has no ``filename`` (older runs)."""
        if not (self.dir / filename).is_file():
            return {}
        return self.matrices(filename, side, point)

    def _file(self, filename: str) -> Path:
        path = self.dir / filename
        if not _matrices.valid_name(filename) or not path.is_file():
            raise StoreError(f"run {self.run_id!r} has no {filename}")
        return path

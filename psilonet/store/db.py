"""DuckDB connections that wait out another process's lock, and values as DuckDB parameters."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from psilonet.store.errors import StoreError, StoreLockedError

_RETRY_FIRST_SLEEP_S = 0.02
_RETRY_MAX_SLEEP_S = 0.1


def now() -> datetime:
    # Local wall-clock time, matching the timestamp embedded in run ids.
    return datetime.now()


def to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} is not JSON-serialisable: {e}") from e


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def plain(value: Any) -> Any:
    """numpy/pandas scalars as Python values, NaN as NULL, for DuckDB parameters."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and value != value else value
    return value


_REASONS = (  # DuckDB's own words -> ours (the original stays the exception's cause)
    ("no space left on device", "the disk is full"),
    ("disk quota exceeded", "the disk is full (quota)"),
    ("not a valid duckdb database", "it is not a DuckDB database (damaged, or another kind of file)"),
    ("permission denied", "permission denied"),
    ("read-only file system", "the file system is read-only"),
    ("checksum", "it is damaged (a checksum does not match)"),
    ("corrupt", "it is damaged"),
    ("serialization error", "it is damaged or was written by another DuckDB version"),
    ("storage version", "it was written by another DuckDB version"),
)


def reason(err: BaseException) -> str:
    """A DuckDB error in our words (the file it concerns is named by the caller)."""
    text = str(err).lower()
    for needle, ours in _REASONS:
        if needle in text:
            return ours
    return f"a database error ({type(err).__name__})"


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


def connect(path: Path, *, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying with backoff while another holder has it locked."""
    deadline = time.monotonic() + timeout
    sleep = _RETRY_FIRST_SLEEP_S
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            if not _is_lock_conflict(e):
                raise StoreError(f"cannot open {path}: {reason(e)}") from e
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

"""The store's errors: every failure of the store raises a :class:`StoreError`."""

from __future__ import annotations

import errno


class StoreError(Exception):
    """Base class for every error raised by the store."""


class StoreLockedError(StoreError):
    """A database stayed locked by someone else for the whole retry window."""


class RunNotFoundError(StoreError):
    """The run id is unknown, or the run exists but is not published."""


class CatalogBehind(StoreError):
    """A run is published (so complete), but the catalog could not be told; the next read repairs it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the jobs' handler so that a run ends as after Ctrl-C (marked interrupted)."""


# MLX's safetensors writer reports a short write without an errno: on a data folder that passed
# the jobs' write check, that is a full disk.
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "Unable to write")


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk.

    DuckDB reports it as its own IOException text, not as an OSError, so the text counts too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False

"""The store's errors: every failure of the store raises a :class:`StoreError`."""


class StoreError(Exception):
    """Base class for every error raised by the store."""


class StoreLockedError(StoreError):
    """A database stayed locked by someone else for the whole retry window."""


class RunNotFoundError(StoreError):
    """The run id is unknown, or the run exists but is not published."""

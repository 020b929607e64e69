"""Run storage: a DuckDB catalog of runs plus one directory per run. All SQL of the project lives here.

Layout under ``data_dir``::

    catalog.duckdb             # table `runs`: one row per run (any kind)
    runs/<run_id>/run.duckdb   # a published (complete) run; plus artifact files (Parquet matrices)
    runs/.staging/<run_id>/    # a run being written, or one that failed / was killed

Modules, one job each:

* :mod:`~psilonet.store.catalog`: :class:`Store`, the catalog and each run's lifecycle;
* :mod:`~psilonet.store.runs`: :class:`RunWriter` (staging, write buffer, publishing) and
  :class:`RunReader` of one run's database;
* :mod:`~psilonet.store.tables`: every table declared once (name, typed columns, read order),
  from which CREATE, INSERT and SELECT are generated, and :func:`~psilonet.store.tables.where`,
  the one builder of filters;
* :mod:`~psilonet.store.matrices`: matrices as Parquet files;
* :mod:`~psilonet.store.db`: connections that wait out another process's lock.

**Adding a table for a kind of run is a one-place change**: declare a
:class:`~psilonet.store.tables.Table` in ``tables.py``; then ``writer.write_rows(TABLE, rows)``
stores rows and ``reader.rows(TABLE, column=value, ...)`` reads them back, filtered and in the
declared order. Table and column names only ever come from those declarations; every value goes
through a ``?`` parameter.
"""

from psilonet.store.catalog import RUN_COLUMNS, Store
from psilonet.store.errors import RunNotFoundError, StoreError, StoreLockedError
from psilonet.store.runs import RunReader, RunWriter

__all__ = [
    "Store",
    "RunWriter",
    "RunReader",
    "StoreError",
    "StoreLockedError",
    "RunNotFoundError",
    "RUN_COLUMNS",
]

"""Matrices of a run as Parquet files: one row (and row group) per ``(side, point, layer, head)``.

Each row holds the matrix's shape ``n, d`` and its values as a FLOAT[] list, so a reader
fetches only the layers and heads it asks for. Capture runs store their activations this way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import duckdb
import numpy as np

from psilonet.store.errors import StoreError
from psilonet.store.tables import where

# File names become paths inside a run directory: nothing but lowercase words.
_FILE_RE = re.compile(r"^[a-z_]+\.parquet$")
_SCHEMA_FIELDS = [("side", "string"), ("point", "string"), ("layer", "int32"), ("head", "int32"),
                  ("n", "int32"), ("d", "int32")]
INDEX_COLUMNS = tuple(name for name, _ in _SCHEMA_FIELDS)


def valid_name(filename: str) -> bool:
    return bool(_FILE_RE.match(filename))


def check_name(filename: str) -> None:
    if not valid_name(filename):
        raise StoreError(f"invalid matrix file name {filename!r}")


def write(path: Path, matrices: Iterable[tuple[str, str, int, int, np.ndarray]]) -> Path:
    """Write ``(side, point, layer, head, array (n, d))`` records to the Parquet file ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_name(path.name)
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _SCHEMA_FIELDS]
                       + [("data", pa.list_(pa.float32()))])
    with pq.ParquetWriter(str(path), schema, compression="zstd") as out:
        for side, point, layer, head, array in matrices:
            flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
            data = pa.ListArray.from_arrays(pa.array([0, flat.size], type=pa.int32()), pa.array(flat))
            n, d = array.shape
            columns = [pa.array([side]), pa.array([point]), pa.array([layer], pa.int32()),
                       pa.array([head], pa.int32()), pa.array([n], pa.int32()), pa.array([d], pa.int32()), data]
            out.write_table(pa.Table.from_arrays(columns, schema=schema))
    return path


def read(con: duckdb.DuckDBPyConnection, path: Path, **filters: Any) -> dict[tuple[int, int], np.ndarray]:
    """``{(layer, head): float32 matrix (n, d)}`` of the rows matching ``filters`` (see ``where``)."""
    where_sql, params = where(INDEX_COLUMNS, **filters)
    # con.sql, not execute: Arrow output from a DB-API result costs an extra copy of the rows.
    table = con.sql(f"SELECT layer, head, n, d, data FROM read_parquet(?) {where_sql} ORDER BY layer, head",
                    params=[str(path), *params]).to_arrow_table()
    values = table.column("data").combine_chunks()
    flat, offsets = values.values.to_numpy(), values.offsets.to_numpy()
    meta = zip(*(table.column(c).to_pylist() for c in ("layer", "head", "n", "d")))
    return {(layer, head): flat[offsets[i] : offsets[i + 1]].reshape(n, d)
            for i, (layer, head, n, d) in enumerate(meta)}

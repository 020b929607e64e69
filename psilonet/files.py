"""What a named file really is, checked before any work: never "does not exist" for a folder.

:func:`path_problem` says in words why a path is not a readable regular file (missing, a folder,
a FIFO, a symlink loop, a dangling link, a device); :func:`safetensors_problem` and
:func:`json_problem` find a truncated or corrupt weights, checkpoint or state file from its
header alone, so a job refuses it by name instead of passing a library's error on.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from pathlib import Path


def path_problem(path: str | os.PathLike, want: str = "file") -> str | None:
    """None if ``path`` is a regular file (``want="file"``) or a folder (``"folder"``), else why not.

    The reason reads after the path: ``f"{path} {problem}"``.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        if p.is_symlink():
            return f"is a broken symlink (to {os.readlink(p)})"
        if exc.errno == errno.EACCES:
            return "cannot be read (permission denied)"
        return "does not exist"
    if stat.S_ISDIR(st.st_mode):
        return None if want == "folder" else "is a folder, not a file"
    if want == "folder":
        return "is a file, not a folder"
    if stat.S_ISFIFO(st.st_mode):
        return "is a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(st.st_mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "is a device, not a regular file"
    if not os.access(p, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """None if ``path`` is a whole safetensors file, else why not (from its header and size).

    The format is an 8-byte little-endian header length, a JSON header giving every tensor's
    byte range, then the data: a file shorter than the last range is truncated.
    """
    problem = path_problem(path)
    if problem:
        return problem
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "is truncated (no safetensors header)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return "is truncated or not a safetensors file (its header runs past the end)"
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError):
        return "is corrupt (its safetensors header is not JSON)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not isinstance(header, dict):
        return "is corrupt (its safetensors header is not a table)"
    ends = [t["data_offsets"][1] for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and isinstance(t.get("data_offsets"), list)]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None


def json_problem(path: str | os.PathLike) -> str | None:
    """None if ``path`` is a readable JSON file, else why not."""
    problem = path_problem(path)
    if problem:
        return problem
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "is corrupt (not valid JSON)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


def parquet_problem(path: str | os.PathLike) -> str | None:
    """None if ``path`` is a Parquet file whose footer reads, else why not (truncated, not Parquet)."""
    problem = path_problem(path)
    if problem:
        return problem
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})" if exc.strerror else "is truncated or corrupt (its Parquet footer does not read)"
    except Exception:  # pyarrow raises ArrowInvalid (a ValueError) for a damaged footer
        return "is truncated or corrupt (its Parquet footer does not read)"
    return None

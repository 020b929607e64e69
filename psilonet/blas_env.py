"""The BLAS environment variables, read and checked in one place (used by :mod:`psilonet.runtime`).

A bad value never passes silently and never stops the work: each is named in one warning
line and read as its default, so ``PSILONET_BLAS=OpenBLAS`` means openblas, and
``PSILONET_BLAS=nonsense`` says so instead of silently running the reference BLAS.

* ``PSILONET_BLAS``: ``auto`` (default), ``openblas``, ``blis``, ``mkl``, ``reference``
  (case does not matter) or the absolute path of an existing shared library.
* ``PSILONET_WORKLOAD``: ``decode`` (default) or ``training``.
* ``PSILONET_BLAS_CHOICE``: the record file of ``python -m jobs.choose_blas``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from psilonet.files import path_problem

log = logging.getLogger("psilonet.runtime")

NAMES = ("auto", "openblas", "blis", "mkl", "reference")
WORKLOADS = ("decode", "training")
_warned: set[str] = set()


def _warn(key: str, message: str) -> None:
    if key not in _warned:  # once per process, however often the value is read
        _warned.add(key)
        log.warning("warning: %s", message)


def blas_setting() -> str:
    """``PSILONET_BLAS`` as one of :data:`NAMES` or an existing library path; ``auto`` for a bad value."""
    raw = os.environ.get("PSILONET_BLAS", "")
    value = raw.strip()
    if not value or value.lower() in NAMES:
        return value.lower() or "auto"
    if os.path.isabs(value) and not path_problem(value):
        return value
    why = f"{value} {path_problem(value)}" if os.path.isabs(value) else f"{value!r} is not a known name"
    _warn("blas", f"PSILONET_BLAS: {why}; give one of {', '.join(NAMES)} or the absolute path of a "
                  "CBLAS library. Using auto")
    return "auto"


def workload_setting() -> str:
    """``PSILONET_WORKLOAD`` as one of :data:`WORKLOADS`; ``decode`` for a bad value."""
    value = os.environ.get("PSILONET_WORKLOAD", "").strip().lower()
    if value in WORKLOADS:
        return value
    if value:
        _warn("workload", f"PSILONET_WORKLOAD: {value!r} is not decode or training; using decode")
    return "decode"


def read_choice(path: Path, explicit: bool) -> dict | None:
    """The record of ``jobs.choose_blas`` at ``path``, or None with a warning naming what is wrong.

    A missing default record (before ``make setup`` measured) is only worth a warning when
    ``PSILONET_BLAS_CHOICE`` named it (``explicit``).
    """
    problem = path_problem(path)
    if problem == "does not exist" and not explicit:
        return None
    if problem:
        _warn("choice", f"PSILONET_BLAS_CHOICE: {path} {problem}; using the default order "
                        "(run python -m jobs.choose_blas to measure)")
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("choice"), (str, type(None))) \
            or not isinstance(record.get("by_workload") or {}, dict):
        _warn("choice", f"BLAS choice file {path} is corrupt; using the default order "
                        "(run python -m jobs.choose_blas to measure again)")
        return None
    return record

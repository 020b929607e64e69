"""Shared plumbing for the Streamlit pages: the store, cached queries and friendly errors.

Pages stay thin: they call these helpers, draw with :mod:`psilonet.charts` and hold no SQL.
Queries are cached with ``st.cache_data`` keyed on the catalog file's modification time, so a
run published by a job shows up on the next rerun without serving stale results.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from psilonet import runtime
from psilonet.store import Store, StoreError

EMPTY_STORE_HELP = (
    "No runs yet in `{data_dir}`. Create one from the repository folder with\n\n"
    "```\nmake demo            # fetch the default model and record a model check\n"
    ".venv/bin/python -m jobs.check_model --model default\n```"
)


def data_dir() -> Path:
    return Path(runtime.data_dir())


def store() -> Store:
    return Store(data_dir())


def catalog_version(s: Store) -> int:
    """Changes whenever a job writes the catalog: the cache key for catalog queries."""
    try:
        return os.stat(s.catalog_path).st_mtime_ns
    except FileNotFoundError:
        return 0


@st.cache_data(show_spinner=False)
def _runs(data_dir_str: str, version: int) -> pd.DataFrame:
    return Store(data_dir_str).list_runs()


def runs() -> pd.DataFrame | None:
    """Every run in the catalog (newest first), or None after showing why it can't be read."""
    s = store()
    try:
        return _runs(str(s.data_dir), catalog_version(s))
    except StoreError as exc:
        st.error(f"The run catalog cannot be read right now: {exc}")
        return None


def sidebar() -> None:
    blas = runtime.active_blas()
    st.sidebar.caption(f"Data folder: `{data_dir()}`")
    st.sidebar.caption(f"BLAS: {blas.name}" + ("" if blas.fast else " (slow: install libopenblas0-pthread)"))

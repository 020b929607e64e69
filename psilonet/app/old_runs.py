"""What a page says when an analysis holds nothing under the chosen representation.

Analyses made before representations existed (schema version 1) are read as ``raw``
(``psilonet.store.tables.LEGACY_DEFAULTS``), so they show under raw and hold nothing under
the others; re-analysing their captures makes every representation.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from psilonet.app import helpers as app


def reanalyse_command(run: pd.Series) -> str:
    """The command that re-analyses ``run``'s captures into every representation."""
    return f".venv/bin/python -m jobs.analyze --captures {' '.join(app.config_of(run).get('captures', []))}"


def no_results_under(run: pd.Series, representation: str, what: str) -> None:
    """An info box: ``run`` has no ``what`` under ``representation``, how to see it and how to fill it."""
    st.info(f"This analysis has no {what} under the {representation} representation. Analyses made before "
            "representations existed are read as raw (pick raw above); to get every representation, "
            f"re-analyse its captures with `{reanalyse_command(run)}`.")

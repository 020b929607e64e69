"""Charts side by side that still fit a narrow window.

A chart of several panels (an Altair hconcat or facet) has a fixed pixel width, which a narrow
window cuts. Pages draw such charts as separate panels instead, each at its column's width
(``charts.fit_width``), in rows of :data:`PER_ROW`: from 800 to 1600 px they shrink or grow
with the window and never overflow. The HTML export keeps the joined chart.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st

from psilonet.app import charts, helpers as app

#: Panels per row: two heatmaps stay readable in the main column of an 800 px window.
PER_ROW = 2


def _cells(count: int, per_row: int):
    """(column, index) for ``count`` panels, ``per_row`` columns to a row (one alone: full width)."""
    for start in range(0, count, per_row):
        cols = st.columns(per_row) if count > 1 else [st.container()]
        yield from zip(cols, range(start, min(start + per_row, count)))


def chart_panels(key: tuple, build: Callable[[], list], count: int, per_row: int = PER_ROW) -> None:
    """Draw the ``count`` charts ``build()`` returns, ``per_row`` to a row, each filling its
    column; every panel's spec is cached under ``(*key, k)`` (see ``helpers.chart``)."""
    for col, k in _cells(count, per_row):
        with col:
            app.chart((*key, k), lambda k=k: build()[k], width="stretch")


def draw_panels(panels: list, per_row: int = PER_ROW) -> None:
    """Draw ready single-view charts as :func:`chart_panels` does (for a live, uncached result)."""

    for col, k in _cells(len(panels), per_row):
        with col:
            st.altair_chart(charts.fit_width(panels[k]), width="stretch")

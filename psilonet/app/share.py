"""Sharing a view: query-string permalinks and standalone HTML exports of a page's charts.

A page's state lives in ``st.query_params``, so its URL is the permalink; :func:`permalink`
builds the same query string for a report. :func:`export_html` writes one self-contained HTML
file (Vega, Vega-Lite and vega-embed inlined through ``vl-convert-python``, the data embedded
in the spec) that opens offline in any browser.
"""

from __future__ import annotations

import html
import io
from datetime import datetime
from urllib.parse import urlencode

import altair as alt


def permalink(page: str, state: dict) -> str:
    """``page?key=value&...`` with the state's non-empty values (lists joined by commas)."""
    params = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
              for k, v in state.items() if v not in (None, "", [], ())}
    return f"{page}?{urlencode(params)}" if params else page


def export_html(title: str, charts: list[tuple[str, alt.TopLevelMixin]], state: dict | None = None,
                notes: list[str] | None = None) -> str:
    """One standalone HTML document with every chart (caption, chart) and the view's state."""
    if not charts:
        raise ValueError("nothing to export: the page shows no chart")
    sections = [alt.vconcat(chart.properties(title=caption) if caption else chart)
                for caption, chart in charts]
    combined = alt.vconcat(*sections).properties(title=title).resolve_scale(color="independent")
    buf = io.StringIO()
    combined.save(buf, format="html", inline=True)
    page = buf.getvalue()
    lines = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Exported from psilonet on {datetime.now():%Y-%m-%d %H:%M}.</p>"]
    if state:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in state.items() if v not in (None, ""))
        lines.append(f"<table>{rows}</table>")
    lines += [f"<p>{html.escape(n)}</p>" for n in notes or []]
    header = "<div style='font-family: sans-serif'>" + "".join(lines) + "</div>"
    return page.replace("<body>", "<body>" + header, 1)

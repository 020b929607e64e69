"""Sharing a view: query-string permalinks and standalone HTML exports of a page's charts.

A page's state lives in ``st.query_params``, so its URL is the permalink (the report names it:
``links.permalink``, absolute, with exactly the page's keys). :func:`export_html` writes one self-contained HTML
file (Vega, Vega-Lite and vega-embed inlined from ``vl-convert-python``, the data embedded in
each chart's spec) that opens offline in any browser.

Safety: a report is shared, so nothing in it may run code from its content. User content
(prompts, generated text, file and run names) reaches the file only as HTML-escaped text in
the header, or inside the charts' JSON specs, which sit in ``<script type="application/json">``
blocks with ``<``, ``>`` and ``&`` written as JSON escapes (so no ``</script>`` can close the
block) and are read with ``JSON.parse``; no user text is ever part of JavaScript source.
"""

from __future__ import annotations

import functools
import html
import json
from datetime import datetime
from typing import Callable

import altair as alt

#: Width given to charts that fill their container in the app ("container" has no meaning in a
#: file that may be opened in any window): wide enough for every layer of a 30-layer model.
EXPORT_WIDTH = 1100

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: sans-serif; margin: 24px; color: #222; }}
  header table {{ border-collapse: collapse; margin: 8px 0; }}
  header th, header td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top;
                          white-space: pre-wrap; word-break: break-word; max-width: 900px; }}
  header p {{ overflow-wrap: anywhere; max-width: 1100px; }}
  section {{ margin: 28px 0; overflow-x: auto; }}
  pre {{ white-space: pre-wrap; overflow-wrap: anywhere; max-width: 1100px; background: #f6f6f6; padding: 8px; }}
  .psilonet-error {{ color: #b00; }}
</style>
<script>
{bundle}
</script>
</head>
<body>
<header>
{header}
</header>
<main>
{sections}
</main>
<script>
document.querySelectorAll("script[data-chart]").forEach(function (node) {{
  var target = document.getElementById(node.getAttribute("data-chart"));
  vegaEmbed(target, JSON.parse(node.textContent), {{"actions": false}}).catch(function (err) {{
    target.textContent = "This chart could not be drawn: " + err;
    target.className = "psilonet-error";
  }});
}});
</script>
</body>
</html>
"""


def safe_json(value) -> str:
    """JSON that can sit inside an HTML ``<script>`` element whatever strings it holds."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _fixed_width(spec):
    """The spec with every ``"width": "container"`` replaced by :data:`EXPORT_WIDTH`."""
    if isinstance(spec, dict):
        return {k: (EXPORT_WIDTH if k == "width" and v == "container" else _fixed_width(v)) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_fixed_width(v) for v in spec]
    return spec


@functools.lru_cache(maxsize=1)
def _bundle() -> str:
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    js = vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())
    return js.replace("</script", "<\\/script")  # never close our element early


#: What a dose export's header shows of a run's settings (config key -> row name).
DOSE_SETTINGS = {"model": "model", "skip_run": "skip run", "intensities": "intensities", "seeds": "seeds",
                 "mechanisms": "mechanisms", "max_tokens": "max tokens", "temperature": "temperature",
                 "top_p": "top p", "chat": "chat template", "fatigue": "fatigue strengths",
                 "hebbian": "Hebbian strengths"}


def dose_settings(config: dict, model: str | None = None) -> dict:
    """The header rows of a dose export from a dose config (live or stored): model or run,
    intensities, mechanisms, strengths, max tokens, sampling; lists joined by commas."""
    merged = {**config, **({"model": model} if model and not config.get("model") else {})}
    return {name: ", ".join(map(str, merged[key])) if isinstance(merged[key], (list, tuple)) else merged[key]
            for key, name in DOSE_SETTINGS.items() if merged.get(key) not in (None, "", [])}


def export_html(title: str, charts: list[tuple[str, alt.TopLevelMixin | Callable[[], alt.TopLevelMixin]]],
                state: dict | None = None, notes: list[str] | None = None,
                texts: list[tuple[str, str]] | None = None) -> str:
    """One standalone HTML document: a header (title, date, the view's state, notes such as the
    permalink, then each (label, text) of ``texts`` as literal text, e.g. generated continuations)
    followed by every (caption, chart) at its full size; a chart may also be given as the
    function that builds it (called here, when the file is asked for)."""
    if not charts:
        raise ValueError("nothing to export: the page shows no chart")
    lines = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Exported from psilonet on {datetime.now():%Y-%m-%d %H:%M}.</p>"]
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in (state or {}).items() if v not in (None, ""))
    if rows:
        lines.append(f"<table>{rows}</table>")
    lines += [f"<p>{html.escape(n)}</p>" for n in notes or []]
    lines += [f"<h3>{html.escape(str(label))}</h3><pre>{html.escape(str(text))}</pre>" for label, text in texts or []]
    sections = []
    for k, (caption, chart) in enumerate(charts):
        if not isinstance(chart, alt.TopLevelMixin) and callable(chart):
            chart = chart()  # a page passes the builder of a chart it drew from the spec cache
        spec = _fixed_width(chart.to_dict())
        sections.append(
            f'<section><h2>{html.escape(caption)}</h2><div id="chart-{k}"></div>'
            f'<script type="application/json" data-chart="chart-{k}">{safe_json(spec)}</script></section>')
    return _PAGE.format(title=html.escape(title), bundle=_bundle(), header="\n".join(lines),
                        sections="\n".join(sections))

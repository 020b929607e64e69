"""Permalinks and the standalone HTML export."""

from __future__ import annotations

import altair as alt
import pandas as pd
import pytest

from psilonet.app import share


def test_permalink_joins_lists_and_drops_empty_values():
    assert share.permalink("similarity", {"run": "a", "layers": [3, 9], "x": None, "y": ""}) == \
        "similarity?run=a&layers=3%2C9"
    assert share.permalink("runs", {}) == "runs"


def test_export_is_standalone_and_escapes_the_state():
    line = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    heat = alt.Chart(pd.DataFrame({"a": ["p"], "b": ["q"], "v": [0.5]})).mark_rect().encode(x="a:O", y="b:O", color="v:Q")
    page = share.export_html("Similarity", [("line", line), ("heat", heat)], {"prompt": "<script>x</script>"})
    assert "cdn.jsdelivr" not in page and "vega-lite" in page.lower()  # the libraries are inlined
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    with pytest.raises(ValueError, match="nothing to export"):
        share.export_html("Empty", [], {})

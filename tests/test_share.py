"""Permalinks and the standalone HTML export."""

from __future__ import annotations

import shutil
import time

import altair as alt
import pandas as pd
import pytest

from conftest import headless_chromium

from psilonet.app import share


def test_dose_export_carries_texts_and_settings():
    line = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    config = {"intensities": [0.0, 0.3], "seeds": [0], "mechanisms": ["noise", "bleed"], "max_tokens": 32,
              "temperature": 0.0, "fatigue": [0.0, 0.5], "hebbian": [0.0], "skip_run": "train-x", "prompts": 1}
    state = share.dose_settings(config, model="SmolLM2")
    assert state["model"] == "SmolLM2" and state["mechanisms"] == "noise, bleed" and state["max tokens"] == 32
    assert state["fatigue strengths"] == "0.0, 0.5" and state["skip run"] == "train-x" and "prompts" not in state
    page = share.export_html("Dosed generation", [("line", line)], state,
                             texts=[("intensity 0.3", "a <b>continuation</b>")])
    assert "<h3>intensity 0.3</h3><pre>a &lt;b&gt;continuation&lt;/b&gt;</pre>" in page
    assert "<th>max tokens</th><td>32</td>" in page


def test_export_is_standalone_and_escapes_the_state():
    line = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    heat = alt.Chart(pd.DataFrame({"a": ["p"], "b": ["q"], "v": [0.5]})).mark_rect().encode(x="a:O", y="b:O", color="v:Q")
    page = share.export_html("Similarity", [("line", line), ("heat", heat)], {"prompt": "<script>x</script>"})
    assert "cdn.jsdelivr" not in page and "vega-lite" in page.lower()  # the libraries are inlined
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    built = []  # a page may pass the function that builds a chart: it runs when the file is made
    lazy = share.export_html("Similarity", [("line", lambda: built.append(1) or line)], {})
    assert built == [1] and lazy.count('data-chart="chart-') == 1
    assert '"line"' in lazy.split('data-chart="chart-0">')[1].split("</script>")[0]
    with pytest.raises(ValueError, match="nothing to export"):
        share.export_html("Empty", [], {})


HOSTILE = ["`", "${document.title=7*7}", "</script><script>document.title='pwned'</script>",
           "<img src=x onerror=\"document.title='img'\">", "<b>bold</b> & \u2028 line"]


def test_hostile_content_is_escaped_in_the_file():
    chart = alt.Chart(pd.DataFrame({"x": range(len(HOSTILE)), "t": HOSTILE})).mark_bar().encode(x="x:O", y="x:Q",
                                                                                              tooltip="t:N")
    page = share.export_html("Dosed <generation>", [(HOSTILE[2], chart)], {"prompt": HOSTILE[2], "file": HOSTILE[3]},
                             notes=[HOSTILE[1]])
    body = page[page.index("<body>\n<header>"):]  # the inlined Vega bundle above holds its own "<body>"
    assert "<script>document.title" not in body and "<img src=x" not in body
    assert body.count("</script>") == 2  # the JSON block and our loader, nothing from the data
    assert "&lt;/script&gt;&lt;script&gt;" in body  # the header shows the prompt as text


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver")
def test_export_renders_offline_and_runs_nothing_from_hostile_prompts(tmp_path):
    """Opened from disk in headless Chromium with no network: every chart draws, the header is
    visible, the page title is untouched (no injected code ran) and charts keep their full width."""
    from psilonet.app import charts

    tokens = pd.DataFrame([dict(gen_id=g, intensity=i, pos=p, token_text=HOSTILE[(p + g) % len(HOSTILE)],
                                entropy=0.1 * p + i) for g, i in enumerate([0.0, 0.1, 0.2, 0.3]) for p in range(24)])
    layers = pd.DataFrame([dict(intensity=i, layer=l, entropy=5 + 0.01 * l + i) for i in [0.0, 0.3] for l in range(31)])
    exported = [(HOSTILE[0], charts.entropy_heatmap(tokens)), (HOSTILE[1], charts.layer_entropy_profile(layers))]
    path = tmp_path / "export.html"
    path.write_text(share.export_html("Dosed generation", exported, {"prompt": " ".join(HOSTILE)},
                                      notes=[f"Permalink: http://h/dose?prompt={'x' * 3000}{HOSTILE[1]}"]),
                    encoding="utf-8")
    driver = _chromium()
    try:
        driver.get(path.as_uri())
        deadline = time.time() + 30
        while time.time() < deadline and len(driver.find_elements("css selector", "main svg, main canvas")) < 2:
            time.sleep(0.2)
        assert driver.title == "Dosed generation"
        assert driver.find_element("css selector", "header h1").is_displayed()
        assert "${document.title=7*7}" in driver.find_element("css selector", "header").text
        assert not driver.find_elements("css selector", ".psilonet-error, main img")
        drawn = driver.find_elements("css selector", "main section > div svg, main section > div canvas")
        assert len(drawn) == 2
        assert drawn[1].size["width"] >= share.EXPORT_WIDTH  # the layer profile is not cut
        widths = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths  # a long permalink wraps instead of widening the page
        logs = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs
    finally:
        driver.quit()


def _chromium():
    # every request outside the file goes to a dead proxy: the export must render offline
    return headless_chromium(extra_args=("--proxy-server=http://127.0.0.1:9",), browser_log=True)

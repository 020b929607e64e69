"""The app in a real browser: start it on localhost, open every page in headless Chromium
(Debian's chromium and chromium-driver, installed by `make setup` as root) at 1400 and 1000 px, assert
that no error element appears and no chart is cut or overflows the page, check the rendered
height of the dose heatmap's rows, and save a full-page screenshot of each page (the Dosed
generation page showing the newest stored dose run; the 1000 px ones are named ``*-1000px.png``).

Screenshots go to $PSILONET_SCREENSHOTS (the README's come from a run with the default model's
data: PSILONET_BROWSER_DATA=data PSILONET_SCREENSHOTS=docs/screenshots), else to a temp folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import headless_chromium

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PAGES = {"": "Runs", "training": "Training", "similarity": "Similarity", "trajectories": "Trajectories",
         "taps": "Tap weights", "dose": "Dosed generation", "dose?view=stored": "Dosed generation",
         "bio": "Bio interventions", "causes": "Causes", "lens": "Lens", "attention": "Attention"}
SHOT_NAMES = {"": "runs", "dose": "dose_form", "dose?view=stored": "dose"}
CHARTS = '[data-testid="stVegaLiteChart"]'
WIDTH = 1400
WIDTHS = (1400, 1000)  # a wide window and a narrow one: every chart must fit both
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (make setup installs them as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_data(request) -> str:
    """$PSILONET_BROWSER_DATA (e.g. a folder from scripts/demo_data.sh), else the tiny-model runs."""
    return os.environ.get("PSILONET_BROWSER_DATA") or str(request.getfixturevalue("filled")[0])


@pytest.fixture(scope="module")
def server(browser_data):
    data = browser_data
    port = free_port()
    env = {**os.environ, "PSILONET_DATA": data}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address",
                             "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the app did not start within 60 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium(WIDTH, 1600)
    yield driver
    driver.quit()


def settle(driver, title: str, timeout: float = 60) -> None:
    """Wait until the page's title is shown and the script has stopped running."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    quiet_since = None
    while time.time() < deadline:
        titles = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "h1")]
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        if title in titles and not running:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since > 1.5:
                return
        else:
            quiet_since = None
        time.sleep(0.25)
    raise AssertionError(f"page {title!r} did not finish rendering in {timeout} s")


def chart_boxes(driver) -> list[dict]:
    """Every chart's drawn size (its canvas or svg) against the room its element has."""
    return driver.execute_script("""
        const main = document.querySelector('[data-testid="stMainBlockContainer"]').getBoundingClientRect();
        return [...document.querySelectorAll(arguments[0])].map(el => {
            const drawn = el.querySelector('canvas, svg');
            const r = drawn ? drawn.getBoundingClientRect() : {width: 0, height: 0, right: 0};
            return {width: r.width, height: r.height, right: r.right, room: el.getBoundingClientRect().right,
                    page: main.right, text: el.innerText.slice(0, 60)};
        });""", CHARTS)


def full_page_screenshot(driver, path: Path, width: int = WIDTH) -> None:
    height = driver.execute_script(
        "return document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
    driver.set_window_size(width, max(900, int(height) + 120))
    time.sleep(1.0)  # charts re-lay out
    assert driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 1600)


def largest_dose_run(data: str) -> str:
    """The complete dose run with the most generations (several prompts: every chart of the page)."""
    from psilonet.store import Store

    runs = Store(data).list_runs(kind="dose").query("state == 'complete'")
    return max(runs.itertuples(), key=lambda r: (r.summary or {}).get("generations", 0)).run_id


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", list(PAGES))
def test_page_renders_without_errors(server, browser, browser_data, path, width, tmp_path_factory):
    from selenium.webdriver.common.by import By

    query = f"&dose_run={largest_dose_run(browser_data)}" if path == "dose?view=stored" else ""
    browser.set_window_size(width, 1600)
    browser.get(f"{server}/{path}{query}")
    settle(browser, PAGES[path])
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ERRORS)]
    assert not errors, errors
    boxes = chart_boxes(browser)
    for box in boxes:  # drawn, and inside the page: nothing cut on the right
        assert box["width"] > 0 and box["height"] > 0, box
        assert box["right"] <= min(box["room"], box["page"]) + 1, box
    out = Path(os.environ.get("PSILONET_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    name = SHOT_NAMES.get(path, path) + ("" if width == WIDTH else f"-{width}px")
    full_page_screenshot(browser, out / f"{name}.png", width)


def test_dose_heatmap_rows_are_readable(server, browser, browser_data):
    """The stored dose run's per-token heatmap: at least 20 px per intensity row, plus its axes."""
    from psilonet.store import Store

    run_id = largest_dose_run(browser_data)
    with Store(browser_data).open_run(run_id) as reader:
        gens = reader.generations()
    rows = len(gens[(gens.prompt_line == gens.prompt_line.iloc[0]) & (gens.prompt == gens.prompt.iloc[0])])
    browser.get(f"{server}/dose?view=stored&dose_run={run_id}")
    settle(browser, "Dosed generation")
    boxes = chart_boxes(browser)
    assert len(boxes) >= 2
    heatmap = boxes[-2]  # the page draws the token heatmap, then the layer profile
    assert heatmap["height"] >= 20 * rows + 60, (heatmap, rows)  # the rows, plus title, legend and axis


def test_a_permalink_reopens_the_same_view(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/similarity?metric=pwcca&layers=1,3")
    settle(browser, "Similarity")
    checked = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] input[type="radio"]:checked')
    labels = [e.find_element(By.XPATH, "./ancestor::label").text for e in checked]
    assert "PWCCA" in labels and "CKA" not in labels, labels
    assert "metric=pwcca" in browser.current_url

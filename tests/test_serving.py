"""Serving the explorer to others: settings, the model queue, viewer mode, and one real server.

The server tests share one server, bound to 127.0.0.2 (a non-default loopback address) under a
base path, with a password, viewer mode and a public URL, the way `make share` runs behind a
reverse proxy. Headless Chromium (Debian's chromium and chromium-driver) drives the password
screen, the copied link and the viewer-mode page, and saves screenshots to
$PSILONET_SCREENSHOTS (else a temp folder); ten visitors browse at once over the WebSocket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import headless_chromium
from streamlit.testing.v1 import AppTest

from psilonet.app import serving
from psilonet.app.model_queue import ModelQueue

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                   reason="needs Debian's chromium and chromium-driver (make setup installs them)")
ADDRESS = "127.0.0.2"
BASE = "psilonet"


# ----------------------------------------------------------------------------- settings

def test_settings_from_the_environment(tmp_path):
    assert serving.load_settings({}) == serving.Settings()
    secret = tmp_path / "pw"
    secret.write_text("open sesame\n")
    s = serving.load_settings({"PSILONET_PASSWORD_FILE": str(secret), "PSILONET_VIEWER": "1",
                               "PSILONET_VIEWER_TOKENS": "32", "PSILONET_PUBLIC_URL": "https://lab.example.org/psi/"})
    assert s.viewer and s.viewer_tokens == 32 and s.public_url == "https://lab.example.org/psi"
    assert serving.check_password("open sesame", s.password_digest)
    assert not serving.check_password("open sesame ", s.password_digest)
    assert not serving.check_password("", s.password_digest)
    assert "sesame" not in repr(s) and str(s.password_digest) not in repr(s)


@pytest.mark.parametrize("env, named", [
    ({"PSILONET_VIEWER": "maybe"}, "PSILONET_VIEWER"),
    ({"PSILONET_VIEWER_TOKENS": "-1"}, "PSILONET_VIEWER_TOKENS"),
    ({"PSILONET_VIEWER_QUEUE": "four"}, "PSILONET_VIEWER_QUEUE"),
    ({"PSILONET_PUBLIC_URL": "lab.example.org:8501"}, "PSILONET_PUBLIC_URL"),
    ({"PSILONET_PUBLIC_URL": "http://lab.example.org/?x=1"}, "PSILONET_PUBLIC_URL"),
    ({"PSILONET_PASSWORD_FILE": "/nonexistent/pw"}, "PSILONET_PASSWORD_FILE"),
    ({"PSILONET_PASSWORD": "a", "PSILONET_PASSWORD_FILE": "/x"}, "PSILONET_PASSWORD_FILE"),
])
def test_bad_settings_name_the_variable(env, named):
    with pytest.raises(serving.ServingConfigError, match=named):
        serving.load_settings(env)


def test_links_and_the_generation_budget():
    assert serving.link("http://h:1/psi/", "similarity", {"metric": "pwcca", "layers": "1,3"}) == \
        "http://h:1/psi/similarity?metric=pwcca&layers=1,3"
    assert serving.link("http://h:1", "", {}) == "http://h:1/"
    assert serving.link("http://h:1", "dose", {"prompt": "a b&c"}) == "http://h:1/dose?prompt=a%20b%26c"
    viewer = serving.Settings(viewer=True, viewer_tokens=64)
    assert serving.generation_budget_refusal(serving.Settings(), 512, 5) is None
    assert serving.generation_budget_refusal(viewer, 32, 2) is None
    assert "32 x 3 = 96" in serving.generation_budget_refusal(viewer, 32, 3)
    assert "off" in serving.generation_budget_refusal(serving.Settings(viewer=True, viewer_tokens=0), 1, 1)


# ----------------------------------------------------------------------------- viewer limits on the queue

def test_viewer_mode_bounds_the_model_queue_per_session_and_server_wide():
    """The limits read the server-wide queue (app.model_queue) as it fills with real turns."""
    queue = ModelQueue()
    viewer = serving.Settings(viewer=True, viewer_queue=1)
    release = threading.Event()
    entered = []

    def hold(name):
        with queue.turn():
            entered.append(name)
            release.wait(10)

    assert serving.turn_refusal(viewer, "a", queue.ahead(), set()) is None
    threads = [threading.Thread(target=hold, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    while queue.ahead() < 2:
        time.sleep(0.005)
    assert "already has a generation" in serving.turn_refusal(viewer, "a", queue.ahead(), {"a", "b"})
    assert "2 generations are running or waiting" in serving.turn_refusal(viewer, "c", queue.ahead(), {"a", "b"})
    assert serving.turn_refusal(serving.Settings(), "c", queue.ahead(), {"a", "b"}) is None  # not a viewer server
    release.set()
    for t in threads:
        t.join(10)
    assert entered == ["a", "b"] and queue.ahead() == 0
    assert serving.turn_refusal(viewer, "c", queue.ahead(), set()) is None


# ----------------------------------------------------------------------------- viewer mode, headless

def test_viewer_mode_refuses_saves_uploads_and_over_budget_generations(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    monkeypatch.setenv("PSILONET_VIEWER", "1")
    monkeypatch.setenv("PSILONET_VIEWER_TOKENS", "8")

    def dose(params):
        at = AppTest.from_file(APP, default_timeout=60)
        for k, v in params.items():
            at.query_params[k] = v
        at.switch_page("views/dose.py")
        return at.run()

    at = dose({"run": train_id, "doses": "0.0,0.3", "max": "8", "chat": "0"})
    assert not at.get("file_uploader") and any("Uploading prompt files is off" in c.value for c in at.caption)
    assert not [b for b in at.button if b.label == "Generate"]
    assert any("at most 8 generated tokens" in w.value and "8 x 2 = 16" in w.value for w in at.warning)

    at = dose({"run": train_id, "doses": "0.0,0.3", "max": "4", "chat": "0"})
    next(b for b in at.button if b.label == "Generate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (at.dataframe[0].value.tokens > 0).all()  # within the budget, it generates
    assert not [b for b in at.button if b.label == "Save to the store"]
    assert any("Saving to the store is off in viewer mode" in i.value for i in at.info)
    assert any("Viewer mode" in i.value for i in at.sidebar.info)


@pytest.mark.parametrize("env, shown", [({}, True), ({"PSILONET_VIEWER": "1"}, False),
                                        ({"PSILONET_PASSWORD": "open sesame"}, False)],
                         ids=["operator", "viewer mode", "password"])
def test_the_data_folder_path_is_shown_to_the_operator_only(tmp_path, monkeypatch, env, shown):
    data = tmp_path / "private-data-folder"
    monkeypatch.setenv("PSILONET_DATA", str(data))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(APP, default_timeout=60).run()
    if "PSILONET_PASSWORD" in env:
        at.text_input[0].input("open sesame")
        at.button[0].click().run()
    assert not at.exception and at.title[0].value == "Runs"
    texts = [e.value for kind in ("caption", "info", "markdown", "warning", "error") for e in getattr(at, kind)]
    assert any("No runs yet" in t for t in texts)  # the empty store's help, which names the folder
    assert any(str(data) in t for t in texts) == shown, texts
    assert any(t.startswith("Data folder:") for t in (c.value for c in at.sidebar.caption)) == shown


def test_a_bad_serving_setting_shows_only_the_error(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    monkeypatch.setenv("PSILONET_VIEWER", "perhaps")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert [e.value for e in at.error] == ["The server is misconfigured: PSILONET_VIEWER: expected 1 or 0, got 'perhaps'"]
    assert not at.title and not at.dataframe


# ----------------------------------------------------------------------------- one shared server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(filled, tmp_path_factory):
    """(url, password, pid, log path) of `make share`'s setup (shared_app.py) on 127.0.0.2 under /psilonet."""
    try:
        port = _free_port()
    except OSError:
        pytest.skip(f"{ADDRESS} is not a loopback address on this machine")
    url = f"http://{ADDRESS}:{port}/{BASE}"
    password = secrets.token_urlsafe(12)
    env = {**os.environ, "PSILONET_DATA": str(filled[0]), "PSILONET_PASSWORD": password, "PSILONET_VIEWER": "1",
           "PSILONET_PUBLIC_URL": url}
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "shared_app.py",
                                 "--server.address", ADDRESS, "--server.port", str(port), "--server.baseUrlPath", BASE,
                                 "--server.headless", "true", "--browser.gatherUsageStats", "false",
                                 "--client.showErrorDetails", "type", "--client.toolbarMode", "viewer",
                                 # SHARE_RUNNER in the Makefile
                                 "--server.fileWatcherType", "none", "--runner.postScriptGC", "false"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("the app did not start within 60 s")
            time.sleep(0.3)
    yield url, password, proc.pid, log
    proc.terminate()
    proc.wait(timeout=20)
    assert password not in log.read_text(errors="replace"), "the password reached the server log"


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium(1400, 1000)
    yield driver
    driver.quit()


def _screenshot(driver, name: str, tmp_path_factory) -> None:
    out = Path(os.environ.get("PSILONET_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(out / name))


def _wait_for(driver, check, what: str, timeout: float = 60):
    """Poll until ``check(driver)`` is truthy and Streamlit's running indicator has gone."""
    from selenium.webdriver.common.by import By

    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:  # Streamlit redraws elements while a rerun lands: a stale one means look again
            value = check(driver)
            if value and not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'):
                time.sleep(0.5)
                return check(driver) or value
        except StaleElementReferenceException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what} not shown within {timeout} s")


def _h1(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [h.text for h in driver.find_elements(By.CSS_SELECTOR, "h1")]


def _give_password(driver, password: str) -> None:
    from selenium.webdriver.common.by import By

    def form(d):
        fields = d.find_elements(By.CSS_SELECTOR, "input[type=password]")
        buttons = d.find_elements(By.CSS_SELECTOR, '[data-testid="stBaseButton-secondaryFormSubmit"]')
        return (fields[0], buttons[0]) if fields and buttons else None

    field, button = _wait_for(driver, form, "the password form")
    field.send_keys(password)
    button.click()


def _open(driver, url: str, password: str) -> None:
    """Open ``url``, giving the password if this browser is not remembered yet."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    asked = _wait_for(driver, lambda d: "password" if d.find_elements(By.CSS_SELECTOR, "input[type=password]")
                      else "page" if [h for h in _h1(d) if h != "psilonet"] else None, "the page or the password form")
    if asked == "password":
        _give_password(driver, password)


@needs_browser
def test_a_wrong_or_missing_password_gets_no_page_content(server, browser, filled, tmp_path_factory):
    from selenium.webdriver.common.by import By

    from bench.app_sessions import Session

    url, _, _, _ = server
    train_id = filled[1]
    browser.get(f"{url}/training?run={train_id}")
    _give_password(browser, "not the password")
    _wait_for(browser, lambda d: "Wrong password." in d.find_element(By.TAG_NAME, "body").text, "the refusal")
    _screenshot(browser, "password.png", tmp_path_factory)
    assert _h1(browser) == ["psilonet"]
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"], [data-testid="stDataFrame"]')
    assert train_id not in browser.page_source.replace(browser.current_url, "")
    # the same through the WebSocket, without a browser: no password, then a wrong one
    for given in (None, "wrong"):
        visitor = Session(url, given, timeout=30)
        render = visitor.open("training", f"run={train_id}")
        visitor.close()
        assert render.headings == ["psilonet"] and train_id not in render.text()
        assert not render.of("arrow_data_frame") and not render.of("vega_lite_chart")


@needs_browser
def test_the_copied_link_reopens_the_same_view(server, browser):
    from selenium.webdriver.common.by import By

    url, password, _, _ = server
    _open(browser, f"{url}/similarity?metric=pwcca", password)
    _wait_for(browser, lambda d: "Similarity" in _h1(d), "the Similarity page")
    _wait_for(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] label')
                                  if e.text == "SVCCA"], "the SVCCA choice")[0].click()

    def shared_link(d):
        codes = d.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"] [data-testid="stCode"] code')
        return next((c.text.replace("\n", "") for c in codes if "metric=svcca" in c.text.replace("\n", "")), None)

    def chosen(d):  # the checked option of every radio group on the page
        checked = d.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] input[type="radio"]:checked')
        return [e.find_element(By.XPATH, "./ancestor::label").text for e in checked]

    link = _wait_for(browser, shared_link, "the link with metric=svcca")
    assert link.startswith(f"{url}/similarity?"), link
    before = chosen(browser)
    assert "SVCCA" in before
    browser.switch_to.new_window("window")  # a new browser session (remembered: no password)
    _open(browser, link, password)
    _wait_for(browser, lambda d: "Similarity" in _h1(d), "the linked Similarity page")
    assert chosen(browser) == before
    assert _wait_for(browser, shared_link, "the same link") == link
    browser.close()
    browser.switch_to.window(browser.window_handles[0])


@needs_browser
def test_a_password_in_the_url_never_reaches_the_address_or_the_link(server, filled):
    """`make share` with ``?password=...`` typed into the address (which does not log in): it
    leaves the address bar on the password screen, and after the form the page's own state comes
    back, but the password is neither in the address nor in Copy link. An unknown page says so."""
    from selenium.webdriver.common.by import By

    url, password, _, _ = server
    train_id = filled[1]
    driver = headless_chromium(1400, 1000)  # a browser with no remembered login
    try:
        driver.get(f"{url}/training?password={password}&run={train_id}&bogus=1")
        _wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"), "the password form")
        _wait_for(driver, lambda d: "password=" not in d.current_url, "the address without the password")
        _give_password(driver, password)
        _wait_for(driver, lambda d: "Training" in _h1(d), "the Training page")
        _wait_for(driver, lambda d: f"run={train_id}" in d.current_url, "the run back in the address")
        copied = _wait_for(driver, lambda d: [c.text.replace("\n", "") for c in d.find_elements(
            By.CSS_SELECTOR, '[data-testid="stSidebar"] [data-testid="stCode"] code') if "training" in c.text],
            "Copy link")
        assert copied == [f"{url}/training?run={train_id}"], copied
        assert password not in driver.current_url and "bogus" not in driver.current_url, driver.current_url
        driver.get(f"{url}/no_such_page")
        _wait_for(driver, lambda d: "There is no page no_such_page" in d.find_element(By.TAG_NAME, "body").text,
                  "the unknown-page warning")
    finally:
        driver.quit()


@needs_browser
def test_viewer_mode_page_says_what_is_off(server, browser, filled, tmp_path_factory):
    from selenium.webdriver.common.by import By

    url, password, _, _ = server
    _open(browser, f"{url}/dose?run={filled[1]}&doses=0.0,0.3&max=48&chat=0", password)
    body = _wait_for(browser, lambda d: "Dosed generation" in _h1(d) and "Viewer mode allows" in (
        text := d.find_element(By.TAG_NAME, "body").text) and text, "the dose page's refusal")
    assert "Viewer mode allows at most 64 generated tokens per request" in body
    assert "Uploading prompt files is off in viewer mode" in body and "Viewer mode" in body
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stFileUploader"]')
    assert "Generate" not in [b.text for b in browser.find_elements(By.CSS_SELECTOR, "button")]
    _screenshot(browser, "viewer_dose.png", tmp_path_factory)


@needs_browser
def test_a_browser_that_gave_the_password_is_remembered_until_it_signs_out(server):
    """New tabs of a browser that gave the password open without it (an HttpOnly, SameSite=Strict
    cookie with a random token, not the password); Sign out forgets it."""
    from selenium.webdriver.common.by import By

    url, password, _, log = server
    driver = headless_chromium(1400, 1000)
    try:
        driver.get(f"{url}/training")
        _give_password(driver, password)
        _wait_for(driver, lambda d: "Training" in _h1(d), "the Training page")
        cookie = _wait_for(driver, lambda d: d.get_cookie(serving.REMEMBER_COOKIE), "the login cookie")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == f"/{BASE}/"
        assert password not in cookie["value"] and len(cookie["value"]) >= 40
        assert serving.REMEMBER_COOKIE not in driver.execute_script("return document.cookie")  # out of scripts' reach
        driver.switch_to.new_window("tab")
        driver.get(f"{url}/similarity")
        _wait_for(driver, lambda d: "Similarity" in _h1(d), "the Similarity page without the password")
        assert not driver.find_elements(By.CSS_SELECTOR, "input[type=password]")
        _wait_for(driver, lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"] button')
                                     if b.text == "Sign out"], "the Sign out button")[0].click()
        _wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"), "the password form")
        driver.switch_to.new_window("tab")  # the cookie is still there, but its token is forgotten
        driver.get(f"{url}/training")
        _wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"), "the password form")
        assert _h1(driver) == ["psilonet"]
    finally:
        driver.quit()
    assert cookie["value"] not in log.read_text(errors="replace")


def test_only_the_page_that_gave_the_password_can_turn_its_ticket_into_a_cookie(server):
    """The remember route (no browser): the ticket comes to the page over the WebSocket once the
    password is right; a POST from another origin, a wrong ticket or a used one gets a 403 and
    no cookie; the cookie it gives opens pages without the password."""
    import re

    from bench.app_sessions import Session

    url, password, _, _ = server
    visitor = Session(url, password, timeout=30)
    render = visitor.open("training")
    visitor.close()
    assert "Training" in render.headings
    scripts = [e.html.body for e in render.of("html") if serving.REMEMBER_PATH in e.html.body]
    assert len(scripts) == 1 and password not in scripts[0]
    ticket = re.search(r'body: "([A-Za-z0-9_-]{40,})"', scripts[0]).group(1)
    route = f"{url}/{serving.REMEMBER_PATH}"
    origin = f"http://{ADDRESS}:{url.split(':')[2].split('/')[0]}"

    def post(body: str, **headers) -> tuple[int, str]:
        req = urllib.request.Request(route, data=body.encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers.get("Set-Cookie", "")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Set-Cookie", "")

    assert post(ticket, Origin="http://elsewhere.example") == (403, "")
    assert post(ticket) == (403, "")  # no Origin: not a page's script
    assert post("x" * 43, Origin=origin) == (403, "")
    status, set_cookie = post(ticket, Origin=origin)
    assert status == 204
    attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes and "samesite=strict" in set_cookie.lower()
    assert post(ticket, Origin=origin) == (403, "")  # used up
    token = set_cookie.split(";")[0]
    assert token.startswith(f"{serving.REMEMBER_COOKIE}=") and password not in token
    remembered = Session(url, None, timeout=30, cookie=token)
    page = remembered.open("training")
    stranger = Session(url, None, timeout=30, cookie=f"{serving.REMEMBER_COOKIE}={'y' * 43}")
    locked = stranger.open("training")
    remembered.close()
    stranger.close()
    assert "Training" in page.headings and not page.of("text_input")
    assert locked.headings == ["psilonet"] and locked.of("text_input")


def test_login_memory_tickets_are_single_use_and_tokens_expire():
    now = [1000.0]
    memory = serving.LoginMemory(clock=lambda: now[0], max_tokens=3)
    ticket = memory.ticket()
    token = memory.redeem(ticket)
    assert token and token != ticket and memory.knows(token)
    assert memory.redeem(ticket) is None and not memory.knows(ticket) and not memory.knows(None)
    late = memory.ticket()
    now[0] += serving.TICKET_S + 1
    assert memory.redeem(late) is None  # a ticket left unused too long
    now[0] += serving.REMEMBER_S
    assert not memory.knows(token)  # a remembered login ends
    fresh = memory.redeem(memory.ticket())
    memory.forget(fresh)
    assert not memory.knows(fresh)
    tokens = [memory.redeem(memory.ticket()) for _ in range(5)]  # bounded: the oldest are evicted
    assert [memory.knows(t) for t in tokens] == [False, False, True, True, True]


def _get(url: str, **headers) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_data_folder_is_not_served_and_xsrf_and_cors_stay_on(server, filled):
    url, _, _, _ = server
    data = filled[0]
    files = [p for p in data.rglob("*") if p.is_file() and p.stat().st_size > 64]
    assert files
    for path in files:
        rel = path.relative_to(data).as_posix()
        sample = path.read_bytes()[-48:]
        for candidate in (rel, f"app/static/{rel}", f"static/{rel}", f"media/{rel}", f"../{rel}",
                          f"app/static/../../{data.name}/{rel}", f"component/{rel}", f"_stcore/{rel}"):
            status, _, body = _get(f"{url}/{candidate}")
            assert sample not in body, (candidate, status)
    # an upload without the XSRF token is refused before anything reaches a session
    req = urllib.request.Request(f"{url}/_stcore/upload_file/x/y", data=b"z", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403
    _, headers, _ = _get(f"{url}/_stcore/health", Origin="http://elsewhere.example")
    assert headers.get("access-control-allow-origin", headers.get("Access-Control-Allow-Origin")) in (None, "")


def test_ten_visitors_browse_at_once(server, filled):
    """Every page for ten visitors at once (after one visitor warmed the caches): each gets its
    own page, none an error, and the server's memory stays bounded. The render-time figure is
    measured by bench/app_sessions.py (README, Sharing), not asserted here."""
    from bench.app_sessions import PAGES, browse, rss_mb

    url, password, pid, _ = server
    browse(url, sessions=1, rounds=1, password=password, timeout=90)
    warm_mb = rss_mb(pid)
    (renders,) = browse(url, sessions=10, rounds=1, password=password, timeout=90)
    assert sorted((i, p) for i, p, _ in renders) == sorted((i, p) for i in range(10) for p in PAGES)
    for _, page, render in renders:
        assert PAGES[page] in render.headings and not render.errors, (page, render.headings, render.errors)
    grown = rss_mb(pid) - warm_mb
    times = sorted(r.seconds for _, _, r in renders)
    print(f"\n10 visitors at once: render median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s; "
          f"server memory {warm_mb:.0f} MB warm, {grown:+.0f} MB with ten sessions")
    assert grown < 200, f"ten sessions took {grown:.0f} MB more server memory"

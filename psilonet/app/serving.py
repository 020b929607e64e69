"""Serving the explorer to collaborators: the shared password, viewer mode and the link to a view.

Everything is configured by environment variables of the server process:

``PSILONET_PASSWORD`` / ``PSILONET_PASSWORD_FILE``
    A shared password (or token) asked before any page content is sent. The file form keeps it
    out of shell history and ``ps``; it never goes into a URL, a query parameter or a log line,
    and is compared in constant time (:func:`check_password`). Served through ``shared_app.py``
    (``make share``), a browser that gave it is remembered for :data:`REMEMBER_S` seconds by an
    HttpOnly cookie holding a random token (:class:`LoginMemory`), so its other tabs open
    without asking again.
``PSILONET_VIEWER=1``
    Viewer mode: every page browses stored runs and exports, nothing writes (no save to the
    store, no file upload) and live generation is bounded (``PSILONET_VIEWER_TOKENS`` tokens per
    request, counted as max tokens x intensities; 0 turns it off; at most
    ``PSILONET_VIEWER_QUEUE`` requests waiting server-wide).
``PSILONET_PUBLIC_URL``
    The address collaborators use (``https://lab.example.org/psilonet``, or the SSH-tunnel
    address): the base of the link each page offers. Without it the link uses the address in
    the visitor's own browser.

A bad value is a one-line error naming the variable, and the page shows nothing else (the
server fails closed rather than serving without the protection that was asked for).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlencode, urlsplit

import streamlit as st
from streamlit import config as st_config

from psilonet.app import streamlit_private
from psilonet.app.model_queue import MODEL_QUEUE

log = logging.getLogger("psilonet.serving")

DEFAULT_VIEWER_TOKENS = 64
DEFAULT_VIEWER_QUEUE = 4
#: Seconds each wrong password costs, server-wide (one guess at a time): slows guessing.
WRONG_PASSWORD_DELAY_S = 1.0
_AUTH_KEY = "_psilonet_unlocked"
_TICKET_KEY = "_psilonet_login_ticket"  # a ticket waiting to be traded for the cookie by this page
#: The cookie that remembers a browser's login, and how long a remembered login lasts.
REMEMBER_COOKIE = "psilonet_login"
REMEMBER_S = 12 * 3600
#: Seconds a page has to trade its one-time ticket for the cookie.
TICKET_S = 60
REMEMBER_PATH = "_psilonet/remember"
_guess_lock = threading.Lock()
_active: set[str] = set()  # viewer-mode sessions with a generation running or waiting
_active_lock = threading.Lock()


class ServingConfigError(ValueError):
    """A serving variable has a bad value; the message names it."""


@dataclass(frozen=True)
class Settings:
    password_digest: bytes | None = None  # sha256 of the shared password; None: no password
    viewer: bool = False
    viewer_tokens: int = DEFAULT_VIEWER_TOKENS
    viewer_queue: int = DEFAULT_VIEWER_QUEUE
    public_url: str | None = None

    def __repr__(self) -> str:  # never show the digest in a log or traceback
        return (f"Settings(password={'set' if self.password_digest else 'none'}, viewer={self.viewer}, "
                f"viewer_tokens={self.viewer_tokens}, viewer_queue={self.viewer_queue}, public_url={self.public_url!r})")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _flag(env: dict, name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ServingConfigError(f"{name}: expected 1 or 0, got {raw!r}")


def _count(env: dict, name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServingConfigError(f"{name}: expected a whole number >= 0, got {raw!r}") from None
    if value < 0:
        raise ServingConfigError(f"{name}: expected a whole number >= 0, got {raw!r}")
    return value


def load_settings(env: dict | None = None) -> Settings:
    """The serving settings from ``env`` (default: ``os.environ``); ServingConfigError if bad."""
    env = os.environ if env is None else env
    password = env.get("PSILONET_PASSWORD") or None
    path = env.get("PSILONET_PASSWORD_FILE") or None
    if password and path:
        raise ServingConfigError("PSILONET_PASSWORD and PSILONET_PASSWORD_FILE are both set: keep one")
    if path:
        try:
            password = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServingConfigError(f"PSILONET_PASSWORD_FILE: cannot read {path}: {type(exc).__name__}") from None
        if not password:
            raise ServingConfigError(f"PSILONET_PASSWORD_FILE: {path} is empty")
    public = (env.get("PSILONET_PUBLIC_URL") or "").strip() or None
    if public is not None:
        parts = urlsplit(public)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ServingConfigError(f"PSILONET_PUBLIC_URL: expected http(s)://host[:port][/path], got {public!r}")
        public = public.rstrip("/")
    return Settings(password_digest=_digest(password) if password else None,
                    viewer=_flag(env, "PSILONET_VIEWER"),
                    viewer_tokens=_count(env, "PSILONET_VIEWER_TOKENS", DEFAULT_VIEWER_TOKENS),
                    viewer_queue=_count(env, "PSILONET_VIEWER_QUEUE", DEFAULT_VIEWER_QUEUE),
                    public_url=public)


def check_password(given: str, digest: bytes) -> bool:
    """Constant-time comparison of digests (equal length whatever was typed)."""
    return hmac.compare_digest(_digest(given), digest)


class LoginMemory:
    """Browsers that gave the password, remembered without the password ever leaving the form.

    After a correct password the session gets a one-time ticket (:meth:`ticket`, valid
    :data:`TICKET_S` s); its page posts the ticket to :data:`REMEMBER_PATH`, whose answer
    (:meth:`redeem`) sets an HttpOnly, SameSite=Strict cookie holding a fresh random token. A
    new tab's WebSocket carries that cookie, and :meth:`knows` unlocks its session. Only
    SHA-256 digests of tickets and tokens are kept, in this process's memory: restarting the
    server forgets every browser, and a token is worth nothing once it expires or is forgotten.
    """

    def __init__(self, clock=time.monotonic, max_tokens: int = 10_000):
        self._clock = clock
        self._max = max_tokens
        self._tickets: dict[bytes, float] = {}
        self._tokens: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        for table in (self._tickets, self._tokens):
            for key in [k for k, expiry in table.items() if expiry <= now]:
                del table[key]
            while len(table) >= self._max:  # a flood of logins evicts the oldest
                del table[next(iter(table))]

    def ticket(self) -> str:
        value = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._prune(now)
            self._tickets[_digest(value)] = now + TICKET_S
        return value

    def redeem(self, ticket: str) -> str | None:
        """A new token for a valid, unused, unexpired ``ticket`` (used up here), else None."""
        with self._lock:
            now = self._clock()
            expiry = self._tickets.pop(_digest(ticket), None)
            if expiry is None or expiry <= now:
                return None
            token = secrets.token_urlsafe(32)
            self._prune(now)
            self._tokens[_digest(token)] = now + REMEMBER_S
            return token

    def knows(self, token: str | None) -> bool:
        if not isinstance(token, str) or not token:  # no cookie (or no real request, as in AppTest)
            return False
        with self._lock:
            expiry = self._tokens.get(_digest(token))  # looked up by digest: no timing on the token
            return expiry is not None and expiry > self._clock()

    def forget(self, token: str | None) -> None:
        if isinstance(token, str) and token:
            with self._lock:
                self._tokens.pop(_digest(token), None)


LOGINS = LoginMemory()
_remember_route_served = False  # set by routes(): only shared_app.py's server answers REMEMBER_PATH


def _cookie_path(base: str) -> str:
    base = base.strip("/")
    return f"/{base}/" if base else "/"


def routes() -> list:
    """The HTTP route that trades a login ticket for the remembering cookie (for ``st.App``).

    Read once when the server starts, under Streamlit's ``server.baseUrlPath``.
    """
    from starlette.responses import Response
    from starlette.routing import Route

    global _remember_route_served
    cookie_path = _cookie_path(st_config.get_option("server.baseUrlPath") or "")
    # Behind a TLS proxy the request reaching us is plain HTTP: the public address tells.
    public_https = (os.environ.get("PSILONET_PUBLIC_URL") or "").strip().lower().startswith("https://")

    async def remember(request):
        refused = Response(status_code=403, headers={"Cache-Control": "no-store"})
        origin = request.headers.get("origin")
        # Only this app's own pages: a browser always sends Origin with a POST from a script.
        if not origin or urlsplit(origin).netloc != request.headers.get("host"):
            return refused
        body = await request.body()
        if len(body) > 200:
            return refused
        token = LOGINS.redeem(body.decode("ascii", "replace"))
        if token is None:
            log.warning("a login ticket was refused (unknown, used or expired)")
            return refused
        secure = request.url.scheme == "https" or public_https
        response = Response(status_code=204, headers={"Cache-Control": "no-store"})
        response.set_cookie(REMEMBER_COOKIE, token, max_age=REMEMBER_S, path=cookie_path, httponly=True,
                            samesite="strict", secure=secure)
        return response

    _remember_route_served = True
    return [Route(cookie_path + REMEMBER_PATH, remember, methods=["POST"])]


def link(base_url: str, page_path: str, query: dict[str, str]) -> str:
    """The full permalink of a view: ``base/page?query`` (the default page has an empty path)."""
    url = base_url.rstrip("/") + ("/" + page_path if page_path else "/")
    return f"{url}?{urlencode(query, safe=',', quote_via=quote)}" if query else url


def generation_budget_refusal(settings: Settings, max_tokens: int, n_intensities: int) -> str | None:
    """Why a generation of ``max_tokens`` at ``n_intensities`` is refused in viewer mode, or None."""
    if not settings.viewer:
        return None
    if settings.viewer_tokens == 0:
        return ("Live generation is off in viewer mode on this server (it would hold the shared CPU for "
                "minutes). Stored dose runs are on the Runs page.")
    asked = max_tokens * n_intensities
    if asked > settings.viewer_tokens:
        return (f"Viewer mode allows at most {settings.viewer_tokens} generated tokens per request "
                f"(max tokens x intensities); this asks for {max_tokens} x {n_intensities} = {asked}. "
                "Lower Max tokens or choose fewer intensities.")
    return None


def turn_refusal(settings: Settings, owner: str, ahead: int, active: set[str]) -> str | None:
    """Why viewer mode refuses a generation for session ``owner`` now, or None.

    ``ahead``: generations running or waiting on the server; ``active``: the sessions that
    already have one running or waiting.
    """
    if not settings.viewer:
        return None
    if owner in active:
        return ("This session already has a generation running or waiting; wait for it to finish "
                "(or press Stop) before starting another.")
    if ahead > settings.viewer_queue:
        return (f"The server is busy: {ahead} generations are running or waiting, and viewer mode queues at most "
                f"{settings.viewer_queue} behind the running one. Try again in a minute.")
    return None


# ------------------------------------------------------------------------- Streamlit side
# The functions below draw on the page; each is one line in streamlit_app.py or a view.

_ENV_NAMES = ("PSILONET_PASSWORD", "PSILONET_PASSWORD_FILE", "PSILONET_VIEWER", "PSILONET_VIEWER_TOKENS",
              "PSILONET_VIEWER_QUEUE", "PSILONET_PUBLIC_URL")


@functools.lru_cache(maxsize=4)
def _cached_settings(env: tuple[tuple[str, str], ...]) -> Settings:
    return load_settings(dict(env))


def settings() -> Settings:
    """The settings (read once per environment: restart the server after changing the password
    file), or (on a bad value) an error on the page and nothing else."""
    try:
        return _cached_settings(tuple((k, os.environ[k]) for k in _ENV_NAMES if k in os.environ))
    except ServingConfigError as exc:
        log.error("serving configuration: %s", exc)
        st.error(f"The server is misconfigured: {exc}")
        st.stop()


def _locked(s: Settings) -> bool:
    """True until this session gives the password, or its browser's cookie is a remembered login."""
    if s.password_digest is None or st.session_state.get(_AUTH_KEY):
        return False
    if LOGINS.knows(st.context.cookies.get(REMEMBER_COOKIE)):
        st.session_state[_AUTH_KEY] = True
        return False
    return True


def nav_position() -> str:
    """Where st.navigation draws the page list: hidden until the password is given.

    st.navigation must run even on the password screen: it is what keeps the link's page path
    (without it Streamlit falls back to the default page once the password is accepted).
    """
    return "hidden" if _locked(settings()) else "sidebar"


#: Session key of the query held back while the password screen shows (``links`` restores it).
HELD_QUERY = "_psilonet_link_held"


def hold_query_for_login() -> None:
    """On the password screen: take the query out of the address bar (a password typed into the
    URL leaves it at once) and keep it for the page the visitor asked for."""
    if st.query_params:
        held = st.session_state.get(HELD_QUERY) or {}
        held.update({k: st.query_params.get_all(k) for k in st.query_params.keys()})
        st.session_state[HELD_QUERY] = held
        st.query_params.clear()


def gate() -> None:
    """Stop the page run here unless this session has given the shared password (if one is set)."""
    s = settings()
    if not _locked(s):
        return
    hold_query_for_login()  # out of the address bar now; the page reads what it needs after the password
    st.title("psilonet")
    with st.form("psilonet_password", clear_on_submit=True):
        given = st.text_input("Password", type="password",
                              help="The shared password of this server (ask the person who sent you the link).")
        submitted = st.form_submit_button("Open")
    if submitted:
        if check_password(given, s.password_digest):
            st.session_state[_AUTH_KEY] = True
            if _remember_route_served:
                st.session_state[_TICKET_KEY] = LOGINS.ticket()
            st.rerun()
        with _guess_lock:  # one wrong guess at a time on the whole server
            time.sleep(WRONG_PASSWORD_DELAY_S)
        log.warning("wrong password from a browser session")
        st.error("Wrong password.")
    st.stop()


def _session_id() -> str:
    return streamlit_private.session_id() or "no-session"


def allows_upload() -> bool:
    """False (with a note) in viewer mode, where files are not accepted."""
    if settings().viewer:
        st.caption("Uploading prompt files is off in viewer mode: this server only browses stored results.")
        return False
    return True


def allows_save() -> bool:
    """False (with a note) in viewer mode, where nothing is written to the store."""
    if settings().viewer:
        st.info("Saving to the store is off in viewer mode: this server does not write runs. "
                "Use Export HTML to keep these results.")
        return False
    return True


def allows_generation(max_tokens: int, n_intensities: int) -> bool:
    """False (with the reason) when viewer mode's token budget refuses this request."""
    refusal = generation_budget_refusal(settings(), int(max_tokens), int(n_intensities))
    if refusal:
        st.warning(refusal)
        return False
    return True


@contextmanager
def model_turn() -> Iterator[None]:
    """Hold the server-wide turn on the shared model for the body (one generation at a time),
    with viewer mode's limits first: one request per session at a time, and at most
    ``viewer_queue`` waiting.

    A refused request shows why and ends the page run; nothing is queued for it. A session that
    has to wait sees how many generations are ahead of it.
    """
    s = settings()
    owner = _session_id()
    with _active_lock:
        refusal = turn_refusal(s, owner, MODEL_QUEUE.ahead(), _active)
        if refusal is None and s.viewer:
            _active.add(owner)
    if refusal:
        st.warning(refusal)
        st.stop()
    note = st.empty()

    def waiting(ahead: int) -> None:
        note.info(f"Waiting for the model: {ahead} generation{'s' if ahead > 1 else ''} ahead of yours "
                  "(one runs at a time on this server).")

    try:
        with MODEL_QUEUE.turn(on_wait=waiting):
            note.empty()
            yield
    finally:
        if s.viewer:
            with _active_lock:
                _active.discard(owner)


def _remember_this_browser(ticket: str) -> None:
    """Have the page trade its one-time ticket for the remembering cookie (a same-origin POST:
    the ticket is in the body, never in a URL; the cookie is HttpOnly, out of the page's reach)."""

    url = _cookie_path(st_config.get_option("server.baseUrlPath") or "") + REMEMBER_PATH
    st.html(f"<script>fetch({json.dumps(url)}, {{method: 'POST', body: {json.dumps(ticket)}, "
            f"credentials: 'same-origin', cache: 'no-store'}});</script>", unsafe_allow_javascript=True)


def _sign_out() -> None:
    LOGINS.forget(st.context.cookies.get(REMEMBER_COOKIE))
    st.session_state.pop(_AUTH_KEY, None)


def sidebar(page) -> None:
    """Sign out and the viewer-mode notice (``links.copy_link`` draws the link to this view)."""
    s = settings()
    if s.password_digest is not None:
        ticket = st.session_state.pop(_TICKET_KEY, None)
        if ticket:
            _remember_this_browser(ticket)
        st.sidebar.button("Sign out", on_click=_sign_out,
                          help="Lock this tab and forget this browser's login (other open tabs stay open "
                               "until they reload).")
    if s.viewer:
        generation = ("off" if s.viewer_tokens == 0 else
                      f"at most {s.viewer_tokens} tokens per request, one request per visitor, queued")
        st.sidebar.info(f"**Viewer mode**: browsing only. Saving runs and uploading files are off, live "
                        f"generation is {generation}: visitors cannot change the store or hold the shared CPU.")

"""A view's link holds its page state and nothing else.

Every page reads its state with :func:`psilonet.app.helpers.param` (through :func:`raw` here)
and writes it back with ``helpers.set_params`` (:func:`wrote`). Around each page run,
streamlit_app.py calls :func:`begin` and :func:`tidy`:

* :func:`begin` opens a box at the top of the page where every warning about the link's
  values goes (:func:`warn`), so none hides in a collapsed expander or below the charts, and
  says so when the link names a page that does not exist.
* :func:`tidy` removes from the address bar (and so from the sidebar's Copy link and every
  export's permalink, :func:`permalink`) every key the page neither read nor wrote in this run:
  a ``password=...`` typed into a URL, another page's parameters, misspelt keys.

Behind the shared password, :func:`psilonet.app.serving.hold_query_for_login` takes the whole query out of the address
bar on the password screen and keeps it in the session; the page reads it from there once
the password is given, and :func:`tidy` puts back only the keys the page read.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import streamlit as st

from psilonet.app import serving

_READ = "_psilonet_link_read"      # keys the page read in this run
_WROTE = "_psilonet_link_wrote"    # keys the page wrote (or removed) in this run
_BAD = "_psilonet_link_bad"        # keys whose value was refused (with a warning) in this run
_HELD = serving.HELD_QUERY          # the query held back while the password screen showed
_BOX = "_psilonet_link_box"        # the warning box at the top of the page
_PAGE = "_psilonet_link_page"      # the url path of the page being drawn
SHOWN_CHARS = 60                   # a value longer than this is shortened in a warning


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with its full length) for a warning line."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text):,} characters)"


def begin(page) -> None:
    """Start a page run: nothing read or written yet; the warning box at the top of the page."""
    state = st.session_state
    state[_READ], state[_WROTE], state[_BAD] = set(), set(), set()
    state[_PAGE] = page.url_path
    state[_BOX] = st.container()
    asked = _asked_path()
    if asked and asked != page.title.lower():  # the default page also answers to its own name
        warn(f"There is no page `{shorten(asked)}` in this app; showing {page.title} instead. "
             "The pages are in the sidebar.")


def _asked_path() -> str:
    """The page path in the browser's address when it names no page the app has, else ''.

    ``st.context.url`` is the address with a known page's path replaced by the current page's:
    on the default page (empty path) anything left after the server's base path was unknown.
    """
    from streamlit import config

    url = st.context.url
    if not url or st.session_state.get(_PAGE):
        return ""
    path = urlsplit(url).path.strip("/")
    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):].strip("/")
    return path


def warn(text: str) -> None:
    """A warning about the link, in the box at the top of the page (in place outside a page run)."""
    box = st.session_state.get(_BOX)
    (box if box is not None else st).warning(text)


def raw(name: str) -> str | None:
    """The link's value of ``name`` (the last one, with a warning, when the link repeats it)."""
    st.session_state.setdefault(_READ, set()).add(name)
    values = st.query_params.get_all(name)
    if not values:
        held = st.session_state.get(_HELD) or {}
        values = held.get(name, [])
    if len(values) > 1:
        warn(f"The link gives `{name}` {len(values)} times ({', '.join(shorten(v, 20) for v in values[:4])}"
             f"{', ...' if len(values) > 4 else ''}); using the last, `{shorten(values[-1])}`.")
    return values[-1] if values else None


def refused(name: str) -> None:
    """Mark ``name``'s value as refused (already warned about): :func:`tidy` drops it from the URL."""
    st.session_state.setdefault(_BAD, set()).add(name)


def wrote(name: str) -> None:
    st.session_state.setdefault(_WROTE, set()).add(name)


def page_keys() -> set[str]:
    """The keys the page read or wrote so far in this run."""
    return set(st.session_state.get(_READ, ())) | set(st.session_state.get(_WROTE, ()))


def tidy() -> None:
    """End a page run that finished: the URL keeps exactly the keys the page read or wrote."""
    state = st.session_state
    read, written, bad = state.get(_READ, set()), state.get(_WROTE, set()), state.get(_BAD, set())
    keep = (read | written) - (bad - written)
    for key in [k for k in st.query_params.keys() if k not in keep]:
        del st.query_params[key]
    held = state.pop(_HELD, None) or {}
    for key in sorted(keep - written):
        if key in held and key not in st.query_params:
            st.query_params[key] = held[key][-1]


def base_url() -> str | None:
    """The app's root address: PSILONET_PUBLIC_URL, else the address in the visitor's browser
    (None outside a browser, as under AppTest without a public URL)."""
    public = serving.settings().public_url
    if public:
        return public
    url = st.context.url
    if not url:
        return None
    url = url.rstrip("/")
    page = st.session_state.get(_PAGE) or _asked_path()  # an unknown page's path is no part of the root
    if page and url.endswith("/" + page):
        url = url[: -len(page) - 1]
    return url


def permalink() -> str:
    """The absolute address of the view as drawn so far: the current page with the page state
    (the keys it read or wrote) from the URL; relative when no address is known."""
    keys = page_keys()
    query = {k: v for k, v in st.query_params.to_dict().items() if k in keys}
    page = st.session_state.get(_PAGE) or ""
    base = base_url()
    if base is None:
        return serving.link("", page, query).lstrip("/") or "/"
    return serving.link(base, page, query)


def copy_link(page) -> None:
    """The sidebar's link to this view (drawn after the page, so that it is current)."""
    base = base_url()
    if base is None:
        return
    query = {k: v for k, v in st.query_params.to_dict().items()}
    st.sidebar.caption("**Copy link** to this view: the icon at the right of the address")
    st.sidebar.code(serving.link(base, page.url_path, query), language=None, wrap_lines=True)
    host = urlsplit(base).hostname or ""
    if serving.settings().public_url is None and (host == "localhost" or host.startswith("127.") or host == "::1"):
        st.sidebar.caption("This address only works on this machine: set PSILONET_PUBLIC_URL to the address "
                           "collaborators use (see the README, Sharing).")

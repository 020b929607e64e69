"""Shared plumbing for the Streamlit pages: store access, cached queries, page state, errors.

Pages stay thin: they call these helpers, draw with :mod:`psilonet.app.charts` and hold no SQL.

* Catalog queries are cached with ``st.cache_data`` keyed on the catalog file's modification
  time, so a run published by a job shows up on the next rerun without stale results.
  Published runs never change, so their data is cached by run id alone.
* Page state lives in ``st.query_params`` (:func:`param`, :func:`set_params`): the URL is a
  permalink. A malformed parameter falls back to its default with a warning, never a traceback.
* The model loads once per process (``st.cache_resource``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import streamlit as st

from psilonet import runtime
from psilonet.app import links, serving, share, streamlit_private
from psilonet.store import Store, StoreError

log = logging.getLogger("psilonet.app.helpers")

EMPTY_STORE_HELP = (
    "No runs yet in {data_dir}. Create some from the repository folder with\n\n"
    "```\nmake demo    # fetch the default model; train, capture, analyse, dose and a bio evaluation (~5 min)\n"
    ".venv/bin/python -m jobs.check_model\n"
    ".venv/bin/python -m jobs.train --train-samples 40 --val-samples 16\n```"
)


def data_dir() -> Path:
    return Path(runtime.data_dir())


def data_dir_hidden() -> bool:
    """True when the server is shared (viewer mode, or a password is set): collaborators are not
    told where on the server the data folder lives; the operator sees it in normal mode."""
    s = serving.settings()
    return s.viewer or s.password_digest is not None


def data_dir_label() -> str:
    """The data folder as the pages name it: its path, or "the server's data folder" when hidden."""
    return "the server's data folder" if data_dir_hidden() else f"`{data_dir()}`"


def check_data_dir() -> None:
    """Stop the page with one message when the data folder setting cannot work."""
    try:
        path = data_dir()
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    if path.exists() and not path.is_dir():
        st.error(f"PSILONET_DATA: {path} is a file, not a folder")
        st.stop()


def store() -> Store:
    return Store(data_dir())


def catalog_version(s: Store) -> int:
    """Changes whenever a job writes the catalog: the cache key for catalog queries."""
    try:
        return os.stat(s.catalog_path).st_mtime_ns
    except FileNotFoundError:
        return 0


@st.cache_data(show_spinner=False, max_entries=4)  # one catalog version is current; bounded for many viewers
def _runs(data_dir_str: str, version: int) -> pd.DataFrame:
    return Store(data_dir_str).list_runs()


def runs() -> pd.DataFrame | None:
    """Every run in the catalog (newest first), or None after showing why it can't be read."""
    s = store()
    try:
        return _runs(str(s.data_dir), catalog_version(s))
    except StoreError as exc:
        st.error(f"The run catalog cannot be read right now: {exc}")
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def run_data(data_dir_str: str, run_id: str, what: str, *args) -> Any:
    """``RunReader.<what>(*args)`` of a published run (immutable, so cached by id)."""
    with Store(data_dir_str).open_run(run_id) as reader:
        return getattr(reader, what)(*args)


def read(run_id: str, what: str, *args) -> Any:
    """Cached run data, or None after showing a message (missing run, old run, locked file)."""
    try:
        return run_data(str(data_dir()), run_id, what, *args)
    except StoreError as exc:
        st.error(f"Cannot read {what.replace('_', ' ')} of run `{run_id}`: {exc}")
        return None


@st.cache_data(show_spinner=False, max_entries=32)
def _outlier_table(data_dir_str: str, run_id: str) -> pd.DataFrame:
    from psilonet.analysis.representation import outlier_summary

    with Store(data_dir_str).open_run(run_id) as reader:
        return outlier_summary(reader.norm_stats(), reader.norm_outliers(), reader.outlier_dims(),
                               reader.capture_tokens())


def outlier_table(run_id: str) -> pd.DataFrame | None:
    """A capture's outlier summary (``representation.outlier_summary``), cached by run id: it
    walks every layer in pandas (about 0.15 s), too slow to redo on each rerun of every viewer."""
    try:
        return _outlier_table(str(data_dir()), run_id)
    except StoreError as exc:
        st.error(f"Cannot read the outlier tokens of run `{run_id}`: {exc}")
        return None


@st.cache_data(show_spinner=False, max_entries=128)
def _chart_spec(key: tuple, _build: Callable[[], Any]) -> dict:
    return streamlit_private.altair_spec(_build())


def chart(key: tuple, build: Callable[[], Any], width: str | int | None = None) -> None:
    """Draw ``build()`` (an Altair chart) like ``st.altair_chart``, building it once per ``key``.

    Building an Altair chart and validating its spec costs 10-50 ms of CPU per chart; one server
    renders every visitor's pages on about one core, so ten visitors opening a page redo that
    ten times. ``key`` must name everything the chart depends on: the run id (published runs
    never change) and the page's choices; the data folder is added here. ``build`` only runs
    on a cache miss, so the page's filtering for the chart belongs inside it.
    """
    st.vega_lite_chart(_chart_spec((str(data_dir()), *key), build), width=width)


def read_optional(run_id: str, what: str, *args) -> Any:
    """Like :func:`read`, but None without a message when the run cannot give it (a table that
    runs made by older versions lack)."""
    try:
        return run_data(str(data_dir()), run_id, what, *args)
    except StoreError:
        return None


def config_of(run: pd.Series) -> dict:
    """A catalog row's config as a dict (empty when it has none)."""
    config = run.get("config")
    return config if isinstance(config, dict) else {}


# ---------------------------------------------------------------------- page state

class BadParam(ValueError):
    """A cast's own explanation of why a value is invalid (shown in the warning)."""


def _warn_param(name: str, raw: str, why: str) -> None:
    links.refused(name)
    links.warn(f"Ignoring the link's `{name}={links.shorten(raw)}`: {why}. Using the default.")


def param(name: str, default: Any, cast: Callable[[str], Any] = str, choices: list | None = None,
          lo: float | None = None, hi: float | None = None, max_len: int | None = None) -> Any:
    """A query parameter parsed with ``cast`` and checked against ``choices``, ``[lo, hi]`` (for
    numbers, which must also be finite) and ``max_len`` (for text).  Anything else gives
    ``default`` with exactly one warning naming the parameter: a link never breaks a page."""
    raw = links.raw(name)
    if raw is None or raw == "":
        return default
    if max_len is not None and len(raw) > max_len:
        _warn_param(name, raw, f"longer than {max_len:,} characters")
        return default
    try:
        value = cast(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        _warn_param(name, raw, str(exc) if isinstance(exc, BadParam) else "not a valid value")
        return default
    if choices is not None and value not in choices:
        _warn_param(name, raw, "not one of " + ", ".join(map(str, choices[:8])) + ("..." if len(choices) > 8 else ""))
        return default
    numbers = value if isinstance(value, (list, tuple)) else [value]
    if lo is not None or hi is not None:
        for v in numbers:
            if isinstance(v, float) and not math.isfinite(v):
                _warn_param(name, raw, "not a finite number")
                return default
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                bounds = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
                _warn_param(name, raw, f"outside {bounds}")
                return default
    return value


def float_list(text: str) -> list[float]:
    """Comma-separated numbers; any bad item makes the whole list invalid."""
    return [float(x) for x in text.split(",") if x.strip()]


def int_pair(text: str) -> tuple[int, int]:
    """``a,b`` with a <= b (a reversed pair is refused, not swapped)."""
    a, b = (int(x) for x in text.split(","))
    if a > b:
        raise BadParam(f"the first number is above the second (write {b},{a})")
    return a, b


def known_items(name: str, wanted: Sequence, known: Sequence) -> list:
    """The items of the link's ``name`` list that ``known`` holds, warning about the others."""
    missing = [w for w in wanted if w not in known]
    if missing:
        links.warn(f"Ignoring {len(missing)} item(s) of the link's `{name}` not in this view: "
                   f"{links.shorten(', '.join(map(str, missing)))}.")
    return [w for w in wanted if w in known]


def choice_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """A cast for comma-separated names that must all be in ``allowed`` (one bad name: invalid)."""
    def cast(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise BadParam(f"unknown {', '.join(bad) or 'value'}; choose from {', '.join(allowed)}")
        return items
    return cast


def set_params(**values: Any) -> None:
    """Write the page state into the URL (lists joined by commas; None removes the key)."""
    for key, value in values.items():
        links.wrote(key)
        if value is None or value == "" or value == []:
            st.query_params.pop(key, None)
        else:
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            if st.query_params.get(key) != text:
                st.query_params[key] = text


#: The Runs table's columns, in pixels: together (with the selection column) about 920 px, the
#: page's width at a 1400 px window, so progress and parent are not cut there; a run id of
#: ``kind-YYYYMMDD-HHMMSS-xxxxxx`` needs about 230 px, a parent longer than 170 px ends in "..."
#: (the whole id on hover and in the run's details).
RUNS_TABLE_COLUMNS = {
    "run_id": st.column_config.TextColumn("run", width=230, pinned=True),
    "kind": st.column_config.TextColumn("kind", width=70),
    "state": st.column_config.TextColumn("state", width=80),
    "dataset": st.column_config.TextColumn("dataset", width=105),
    "created": st.column_config.DatetimeColumn("created", width=140, format="YYYY-MM-DD HH:mm"),
    "progress": st.column_config.ProgressColumn("progress", width=90, min_value=0.0, max_value=1.0, format="percent"),
    "parent": st.column_config.TextColumn("parent", width=170),
}


#: The kinds of run ``make demo`` (``jobs.demo``) makes; only these empty pages point to it.
DEMO_KINDS = ("train", "capture", "analysis", "dose", "bio_eval", "ablation")
#: The job (and small settings) that makes a run of each kind, named by an empty page.
FILL_COMMANDS = {
    ("bio_eval",): "jobs.bio_eval --windows 4 --seq-len 16 --strengths 0.5 1",
    ("dose",): 'jobs.dose --prompt "The nature of consciousness is" --intensities 0 0.1 0.2 0.3 --max-tokens 32',
    ("train", "sweep"): "jobs.train --train-samples 40 --val-samples 16 --distances 2 3 4 --gates",
}


def fill_hint(kinds: tuple[str, ...], all_runs: pd.DataFrame) -> str:
    """Which command creates a run of ``kinds`` from the runs that exist (never "no runs" when some do)."""
    complete = all_runs[all_runs.state == "complete"]
    if complete.empty:
        return EMPTY_STORE_HELP.format(data_dir=data_dir_label())
    py = ".venv/bin/python -m"
    captures, trains = complete[complete.kind == "capture"], complete[complete.kind == "train"]
    if "analysis" in kinds and not captures.empty:
        return (f"Analyse the existing captures:\n\n```\n{py} jobs.analyze --captures "
                f"{' '.join(captures.run_id.head(2))}\n```")
    if kinds in (("analysis",), ("capture",)) and not trains.empty:
        train = trains.run_id.iloc[0]
        return (f"Capture a training run, then analyse the capture:\n\n```\n{py} jobs.capture --run {train}\n"
                f"{py} jobs.analyze --captures <the capture run it prints>\n```")
    if "ablation" in kinds and not trains.empty:
        return f"Ablate a training run:\n\n```\n{py} jobs.ablate --run {trains.run_id.iloc[0]} --windows 4\n```"
    own = next((cmd for names, cmd in FILL_COMMANDS.items() if set(kinds) & set(names)), None)
    demo = " (`make demo` makes one too.)" if set(kinds) & set(DEMO_KINDS) else ""
    if own:
        return f"Create one with\n\n```\n{py} {own}\n```\n\n{demo.strip()}".rstrip()
    if "ablation" in kinds:
        return (f"Train a run, then ablate it:\n\n```\n{py} {FILL_COMMANDS[('train', 'sweep')]}\n"
                f"{py} jobs.ablate --run <the training run it prints> --windows 4\n```\n\n{demo.strip()}").rstrip()
    return f"`make demo` makes a {', '.join(DEMO_KINDS)} run in {data_dir_label()}."


def run_picker(label: str, kinds: tuple[str, ...], key: str = "run", help: str | None = None,
               prefer: Callable[[pd.Series], bool] | None = None) -> pd.Series | None:
    """A select box over the complete runs of ``kinds``, synced with the ``key`` query param.

    Without a run in the link it starts on the newest run for which ``prefer(row)`` holds (the
    newest run when none does, or without ``prefer``)."""
    all_runs = runs()
    if all_runs is None:
        return None
    choices = all_runs[(all_runs.kind.isin(kinds)) & (all_runs.state == "complete")]
    if choices.empty:
        asked = param(key, None)
        if asked is not None:
            links.refused(key)
            links.warn(f"Run `{links.shorten(asked)}` from the link is not here: there is no complete "
                       f"{' or '.join(kinds)} run yet.")
        st.info(f"No complete {' or '.join(kinds)} run yet.\n\n" + fill_hint(kinds, all_runs))
        return None
    ids = list(choices.run_id)
    preferred = [r.run_id for _, r in choices.iterrows() if prefer(r)] if prefer is not None else []
    first = preferred[0] if preferred else ids[0]
    wanted = param(key, first)
    if wanted not in ids:
        gone = (all_runs.run_id == wanted) & (all_runs.state == "missing")  # its folder was deleted
        why = "is missing (its folder was deleted)" if gone.any() else f"is not a complete {'/'.join(kinds)} run here"
        links.warn(f"Run `{links.shorten(wanted)}` from the link {why}; showing the newest.")
        wanted = first
    labels = {r.run_id: f"{r.run_id} · {r.dataset or ''}" for r in choices.itertuples()}
    chosen = st.selectbox(label, ids, index=ids.index(wanted), format_func=labels.get, help=help, key=f"pick_{key}")
    set_params(**{key: chosen})
    return choices.set_index("run_id").loc[chosen]


def export_button(title: str, charts: list, state: dict, texts: list[tuple[str, str]] | None = None) -> None:
    """Download the page's charts (and ``texts``) as one standalone HTML file (opens offline).

    Its permalink is the view's absolute address with exactly the page's state
    (:func:`psilonet.app.links.permalink`: call this after the page has read its parameters).
    The file (about 1 MB with Vega inlined) is built only when the button is clicked, not on
    every rerun of the page.
    """
    if not charts:
        return
    permalink = links.permalink()
    notes = [f"Permalink: {permalink}"]
    name = title.lower().replace(" ", "_")
    st.download_button("Export HTML", lambda: share.export_html(title, charts, state, notes=notes, texts=texts),
                       file_name=f"psilonet_{name}.html", mime="text/html",
                       help="A standalone file with these charts and their data; opens offline in any browser. "
                            f"Its link back to this view: `{permalink}`")


def sidebar() -> None:
    blas = runtime.active_blas()
    if not data_dir_hidden():
        st.sidebar.caption(f"Data folder: `{data_dir()}`")
    st.sidebar.caption(f"BLAS: {blas.name}" + ("" if blas.fast else " (slow: install libopenblas0-pthread)"))


def guarded(run_page: Callable[[], None]) -> None:
    """Run a page; an unexpected error becomes a message (details in the server log)."""
    try:
        run_page()
    except Exception as exc:
        log.exception("page failed")
        st.error(f"This view failed: {type(exc).__name__}: {exc}. Check the server log for details.")


@st.cache_resource(show_spinner="Loading the model (once per server process)…", max_entries=3)
def generator(model_name: str, run_id: str | None, data_dir_str: str, weights: str = "f32"):
    """(model, tokenizer) for dosed generation: the base model, or a trained skip run on it, with
    the base's weights in ``weights`` (:mod:`psilonet.model.quantized`)."""
    from psilonet.model import quantized
    from psilonet.training import loop as training

    if run_id:
        model, tokenizer, cfg = training.load_trained(Store(data_dir_str), run_id, data_dir=data_dir_str)
        return quantized.to_weights(model, weights, cfg.model, data_dir_str), tokenizer
    return quantized.load_model(model_name, data_dir_str, weights=weights)


def session_gone() -> Callable[[], bool]:
    """A check for long work: True once this browser session has disconnected (tab closed).

    Streamlit keeps a script running after its tab closes (the session only turns inactive), so
    a generation's streaming callback asks this and calls ``st.stop()``: nothing runs on for
    nobody.  Outside a served app (AppTest, plain scripts) there is no session to lose and it
    is always False."""
    session = streamlit_private.session_id()
    if session is None:
        return lambda: False
    return lambda: streamlit_private.session_active(session) is False

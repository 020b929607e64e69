"""Where the Dosed generation page's prompts come from: a typed prompt or an uploaded prompts file.

The source is an explicit choice (URL key ``src``), not "the file if there is one, else the
typed prompt". A file over the server's upload limit (``server.maxUploadSize`` in
``.streamlit/config.toml``) is refused by the browser before it is sent: the page never sees it,
so it cannot tell it from no file at all. With the file chosen as the source, nothing runs until
a usable file has arrived, so a refused file can never make the typed prompt run in its place.
Files up to the server's limit arrive and are checked here (:func:`prompts.parse_prompts`), with
the reason shown inline.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from streamlit import config as st_config

from psilonet.app import helpers as app, serving
from psilonet.generation import prompts

SOURCES = {"text": "Typed prompt", "file": "Prompts file"}


@dataclass
class PromptInput:
    """What the page may run: ``prompt`` (typed) or ``file`` (parsed), or ``blocked`` with why."""

    prompt: str | None = None
    file: prompts.PromptFile | None = None
    file_name: str | None = None
    blocked: str | None = None  # set when nothing may run: the reason, for an st.info


def browser_limit_mb() -> int:
    """The size in MB above which the browser itself refuses an upload (the server's limit)."""
    return int(st_config.get_option("server.maxUploadSize"))


def prompt_input(default_prompt: str, max_chars: int) -> PromptInput:
    """Draw the source choice and its input; return what may run."""
    uploads = serving.allows_upload()
    source = app.param("src", "text", str, list(SOURCES)) if uploads else "text"
    if uploads:
        source = st.radio("Prompts from", list(SOURCES), index=list(SOURCES).index(source), horizontal=True,
                          format_func=SOURCES.get, key="prompt_source")
    app.set_params(src=source if source != "text" else None)
    if source == "text":
        prompt = st.text_area("Prompt", app.param("prompt", default_prompt, max_len=max_chars), max_chars=max_chars)
        app.set_params(prompt=prompt)
        return PromptInput(prompt=prompt, blocked=None if prompt.strip() else "Type a prompt, or choose a prompts file.")
    upload = st.file_uploader(
        f"Prompts file: .txt (one per line), .jsonl (\"prompt\" key) or .csv (prompt column); at most "
        f"{prompts.MAX_BYTES / 1e6:g} MB and {prompts.MAX_PROMPTS:,} prompts",
        type=["txt", "jsonl", "csv"])
    if upload is None:
        return PromptInput(blocked=(
            "Choose a prompts file. A file over "
            f"{browser_limit_mb()} MB is refused by the browser before it is sent (a red icon beside its name; "
            "hover over it for the reason): it never reaches this page, so nothing runs until a smaller file "
            "is chosen."))
    try:
        parsed = prompts.parse_prompts(upload.getvalue(), upload.name)
    except prompts.PromptFileError as exc:
        st.error(f"This file cannot be used, so nothing will run until it is fixed or removed: {exc}")
        return PromptInput(file_name=upload.name, blocked="Remove or fix the prompts file to generate.")
    if parsed.skipped:
        st.warning(f"{len(parsed.skipped)} line(s) skipped:\n\n"
                   + "\n".join(f"- line {n}: {why}" for n, why in parsed.skipped))
    st.caption(f"{len(parsed.prompts)} prompt(s) from `{upload.name}`: "
               "all of them run at every intensity and are saved as one run.")
    return PromptInput(file=parsed, file_name=upload.name)

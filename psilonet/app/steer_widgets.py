"""The Dosed generation page's steering section: a steering vector beside the doses.

The researcher picks where the vector comes from (two prompts, two uploaded prompt files, two
offline corpora, or a vector a run stored), the block it is read at, the blocks it is added
after and the strengths. :func:`controls` draws that (synced with the URL, files excepted) and
says in one line what is missing; :func:`build` makes the
:class:`~psilonet.generation.steering.Steering` with the library calls ``jobs.dose`` uses
(``steering.steering_vector`` / ``steering.stored_vector`` and ``steering.check_vector``), and
the page batches its strengths with the dose rows through ``dosing.generate_item``, one row per
strength, exactly as the job does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from psilonet import corpora
from psilonet.app import helpers as app, serving
from psilonet.generation import prompts, steering

SOURCES = {"off": "Off", "prompts": "Two prompts", "files": "Two files", "corpora": "Two corpora",
           "run": "A stored vector"}
MAX_LAYER = 127  # the model checks the real range when the vector is built
MAX_SET_CHARS = 4000
DEFAULT_A, DEFAULT_B = "I love this. It is wonderful.", "I hate this. It is terrible."


@dataclass
class SteerRequest:
    """What the page asked for: ``a``/``b`` prompt texts, or ``corpus_a``/``corpus_b``, or ``run``."""

    source: str
    layer: int
    add_layers: list[int]
    strengths: list[float]
    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    corpus_a: str | None = None
    corpus_b: str | None = None
    run: str | None = None

    def config(self, vector, layer: int) -> dict:
        """The ``steering`` entry of the dose run's config, as ``jobs.dose`` writes it."""
        import numpy as np

        where = ({"run": self.run} if self.source == "run" else
                 {"a": self.corpus_a, "b": self.corpus_b} if self.source == "corpora" else {"a": self.a, "b": self.b})
        return {"layer": layer, "add_layers": self.add_layers or [layer], "strengths": self.strengths, **where,
                "vector_norm": float(np.linalg.norm(vector))}


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _upload(label: str, key: str) -> tuple[list[str], str | None]:
    """A prompt file's texts through the page's own upload checks, or why it cannot be used."""
    if not serving.allows_upload():
        return [], "Uploads are off on this server: choose two prompts or two corpora."
    file = st.file_uploader(label, type=["txt", "jsonl", "csv"], key=key)
    if file is None:
        return [], f"Upload {label.lower()}."
    try:
        parsed = prompts.parse_prompts(file.getvalue(), file.name)
    except prompts.PromptFileError as exc:
        return [], f"{label} cannot be used: {exc}"
    return [t for _, t in parsed.prompts], None


def vector_runs() -> list[str]:
    """Complete runs that stored a steering vector: steering runs, and dose runs with steering rows."""
    all_runs = app.runs()
    if all_runs is None:
        return []
    done = all_runs[all_runs.kind.isin(steering.VECTOR_KINDS) & (all_runs.state == "complete")]
    return [run.run_id for _, run in done.iterrows() if run.kind == "steering" or "steering" in app.config_of(run)]


def controls() -> tuple[SteerRequest | None, str | None]:
    """(request, problem): the steering chosen on the page (None when off) and, when it cannot
    run yet, one line saying why."""
    with st.expander("Steering vector (beside the doses)", expanded=app.param("steer", "off", str, list(SOURCES)) != "off"):
        st.caption("v = mean of the residual states after block *layer* over every token of set A − the same over "
                   "set B; each row adds s·v after the chosen blocks. Every dose row runs at every strength "
                   "(strength 0 is the row unsteered, bit for bit). Also `python -m jobs.dose --steer-a ... "
                   "--steer-b ...` or `--steer-run RUN`.")
        source = st.segmented_control("Vector from", list(SOURCES), format_func=SOURCES.get, required=True,
                                      default=app.param("steer", "off", str, list(SOURCES)), key="steer_source")
        app.set_params(steer=None if source == "off" else source)
        if source == "off":
            app.set_params(sa=None, sb=None, sca=None, scb=None, srun=None, slayer=None, sadd=None, sstr=None)
            return None, None
        c1, c2, c3 = st.columns(3)
        strengths = c3.text_input("Strengths (comma-separated)", ", ".join(f"{s:g}" for s in app.param(
            "sstr", [0.0, 4.0], app.float_list, lo=-steering.MAX_STRENGTH, hi=steering.MAX_STRENGTH)), key="steer_strengths")
        add = c2.text_input("Added after blocks (default: the layer)", " ".join(map(str, app.param(
            "sadd", [], _int_list))), key="steer_add")
        request = SteerRequest(source, layer=0, add_layers=[], strengths=[])
        problem = None
        try:
            request.add_layers = _int_list(add)
            request.strengths = steering.check_strengths(app.float_list(strengths))
        except ValueError as exc:
            problem = f"Steering {exc}" if isinstance(exc, steering.SteeringError) else \
                "Steering: the blocks and strengths must be numbers."
        if source == "run":
            runs = vector_runs()
            if not runs:
                return None, ("No run stored a steering vector yet: make one with `python -m jobs.steer` or "
                              "steering rows in `python -m jobs.dose`, or choose two prompt sets.")
            request.run = c1.selectbox("Run", runs, index=runs.index(app.param("srun", runs[0], str, runs)),
                                       key="steer_run")
            app.set_params(srun=request.run, sadd=request.add_layers, sstr=request.strengths)
            return request, problem
        request.layer = int(c1.number_input("Read at block", 0, MAX_LAYER, app.param("slayer", 12, int, lo=0, hi=MAX_LAYER),
                                            key="steer_layer"))
        left, right = st.columns(2)
        if source == "prompts":
            with left:
                request.a = _lines(st.text_area("Set A (one prompt per line)", app.param("sa", DEFAULT_A, max_len=MAX_SET_CHARS),
                                                max_chars=MAX_SET_CHARS, key="steer_a"))
            with right:
                request.b = _lines(st.text_area("Set B (one prompt per line)", app.param("sb", DEFAULT_B, max_len=MAX_SET_CHARS),
                                                max_chars=MAX_SET_CHARS, key="steer_b"))
            app.set_params(sa="\n".join(request.a), sb="\n".join(request.b))
            for name, texts in (("A", request.a), ("B", request.b)):
                if not texts:
                    problem = problem or f"Steering: prompt set {name} is empty; type at least one prompt."
        elif source == "files":
            with left:
                request.a, why_a = _upload("Set A's prompt file", "steer_file_a")
            with right:
                request.b, why_b = _upload("Set B's prompt file", "steer_file_b")
            problem = problem or why_a or why_b
        else:
            names = list(corpora.OFFLINE_CORPORA)
            request.corpus_a = left.selectbox("Set A: corpus", names, key="steer_corpus_a",
                                              index=names.index(app.param("sca", names[0], str, names)))
            request.corpus_b = right.selectbox("Set B: corpus", names, key="steer_corpus_b",
                                               index=names.index(app.param("scb", names[-1], str, names)))
            app.set_params(sca=request.corpus_a, scb=request.corpus_b)
            if request.corpus_a == request.corpus_b:
                problem = problem or "Steering: choose two different corpora (the same one gives a zero vector)."
        app.set_params(slayer=request.layer, sadd=request.add_layers, sstr=request.strengths)
        return request, problem


def build(request: SteerRequest, model, tokenizer, *, seed: int) -> tuple[steering.Steering, dict]:
    """The :class:`~psilonet.generation.steering.Steering` of ``request`` on ``model`` and its
    config entry; a bad set, layer, width or run raises :class:`~psilonet.generation.steering.SteeringError`."""
    if request.source == "run":
        layer, vector = steering.stored_vector(app.store(), request.run)
    else:
        layer = request.layer
        sets = (request.a, request.b)
        if request.source == "corpora":
            sets = tuple(steering.corpus_texts(tokenizer, c, seed=seed, data_dir=app.data_dir())
                         for c in (request.corpus_a, request.corpus_b))
        vector = steering.steering_vector(model, tokenizer, *sets, layer)
    add_layers = request.add_layers or [layer]
    vector = steering.check_vector(vector, model, add_layers)
    return steering.Steering(vector, layer, tuple(add_layers), tuple(request.strengths)), request.config(vector, layer)


def prepare(request: SteerRequest | None, model, tokenizer, *, seed: int):
    """:func:`build` under an ``st.status``: ``(steering, config)``, ``(None, {})`` without a
    request, or ``(False, {})`` after one error line when the vector cannot be built."""
    if request is None:
        return None, {}
    with st.status("Building the steering vector…") as status:
        try:
            with serving.model_turn():  # reading the sets runs the model, like a generation
                steer, config = build(request, model, tokenizer, seed=seed)
        except steering.SteeringError as exc:
            status.update(label="No steering vector", state="error")
            st.error(f"Steering {exc}")
            return False, {}
        status.update(label=f"Steering vector from block {steer.layer}, |v| = {config['vector_norm']:.2f}, added after "
                            f"block(s) {', '.join(map(str, steer.add_layers))}", state="complete")
    return steer, config

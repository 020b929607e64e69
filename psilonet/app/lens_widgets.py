"""The Lens page's views and the Dosed generation page's "where the dose takes hold" chart.

A stored capture's lens (``RunReader.lens_summary()`` / ``lens_grid()``, written by
``jobs.capture``) draws without a model; the live view reads a typed prompt teacher-forced in
one batch (the sober row, then one row per dose intensity, fatigue and Hebbian strength chosen)
through :func:`psilonet.analysis.lens.side_hooks` and :func:`~psilonet.analysis.lens.logit_lens`,
with the logit or a trained tuned lens, on the model the Dosed generation page loads
(``helpers.generator``, cached once per process). State lives in the URL.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from psilonet.analysis import lens as lens_mod
from psilonet.analysis import tuned_lens
from psilonet.app import bio_widgets, charts, helpers as app, layout, lens_charts, presets, serving
from psilonet.generation import perturb
from psilonet.generation.prompts import context_length, encode_prompt
from psilonet.model import forward
from psilonet.model import loading as modeling

MAX_PROMPT_CHARS = 2000
SIDE_LABELS = {"baseline": "baseline (frozen model)", "trained": "trained (skip model)"}
CAPTURE_HINT = ("Make them with `python -m jobs.capture --run TRAIN_RUN` (or `make demo`): captures store the "
                "lens and attention summaries beside the activations.")
COLOURS = {"p_top1": "probability", "kl_final": "KL to final"}


# ---------------------------------------------------------------------- frames

def stored_curves(summary: pd.DataFrame) -> pd.DataFrame:
    """A capture's lens summary as curve rows: ``row`` (the side, named), layer, KL, median rank."""
    return summary.assign(row=summary.side.map(lambda s: SIDE_LABELS.get(s, s)))[
        ["row", "layer", "kl_final", "rank_median", "top1_final"]]


def curves_of(lens: lens_mod.Lens, labels: list[str]) -> pd.DataFrame:
    """One curve row per (row of the batch, state): the :func:`~psilonet.analysis.lens.layer_means`."""
    parts = []
    for r, label in enumerate(labels):
        means = lens_mod.layer_means(lens, r)
        parts.append(pd.DataFrame({"row": label, "layer": np.arange(lens.num_layers + 1), **means}))
    return pd.concat(parts, ignore_index=True)


def grid_of(lens: lens_mod.Lens, tokens: list[int], decode, row: int = 0) -> pd.DataFrame:
    """The lens grid of one batch row, with the columns of the stored ``lens_grid`` table."""
    recs = pd.DataFrame(lens_mod.records(lens, decode, row=row, top_k=1))
    return recs.rename(columns={"position": "pos"}).assign(
        token_text=lambda d: d.pos.map(lambda t: decode(int(tokens[t]))))


def batch_rows(intensities: list[float], fatigue: list[float], hebbian: list[float]) -> list[dict]:
    """The sober row, then one row per nonzero intensity, fatigue and Hebbian strength (one
    mechanism each, like ``jobs.lens``), so every row compares with the sober one."""
    rows = [dict(intensity=0.0, fatigue=0.0, hebbian=0.0)]
    for name, values in (("intensity", intensities), ("fatigue", fatigue), ("hebbian", hebbian)):
        rows += [{**rows[0], name: float(v)} for v in values if v > 0]
    return rows


def row_label(row: dict) -> str:
    parts = [f"dose {row['intensity']:g}" if row["intensity"] else "",
             f"fatigue {row['fatigue']:g}" if row["fatigue"] else "", f"Hebbian {row['hebbian']:g}" if row["hebbian"] else ""]
    return ", ".join(p for p in parts if p) or "sober"


def run_lens(model, tokens: list[int], rows: list[dict], *, seed: int = 0, tuned=None,
             spec: perturb.DoseSpec = perturb.DoseSpec()) -> lens_mod.Lens:
    """The lens of ``tokens`` for every row of :func:`batch_rows`, in one hooked forward pass."""
    hooks = lens_mod.side_hooks(model, [r["intensity"] for r in rows], fatigue=[r["fatigue"] for r in rows],
                                hebbian=[r["hebbian"] for r in rows], seed=seed, spec=spec)
    return lens_mod.logit_lens(model, [tokens] * len(rows), hooks=hooks, top_k=1, tuned=tuned)


def dose_depth(model, tokens: list[int], intensities: list[float], *, seed: int = 0,
               spec: perturb.DoseSpec = perturb.DoseSpec()) -> pd.DataFrame:
    """Per dose intensity and state, the mean over positions of ``kl_sober``: how far the dosed
    row's lens read-out is from the sober row's at that depth, with the dose's own seed and
    mechanisms, teacher-forced on ``tokens`` in one batch (the sober row first)."""
    rows = batch_rows([i for i in intensities if i > 0], [], [])
    lens = run_lens(model, tokens, rows, seed=seed, spec=spec)
    curves = curves_of(lens, [f"intensity {r['intensity']:g}" for r in rows])
    return curves[curves.row != curves.row.iloc[0]][["row", "layer", "kl_sober"]].reset_index(drop=True)


# ---------------------------------------------------------------------- the stored view

def position_range(n: int, key: str = "pos") -> tuple[int, int]:
    """The positions shown (first, last), a slider synced with the URL; the default keeps 16 so
    that the tokens stay readable at 1000 px."""
    if n <= 1:
        return 0, max(n - 1, 0)
    lo, hi = app.param(key, (0, min(n, 16) - 1), app.int_pair, lo=0, hi=n - 1)
    lo, hi = st.slider("Positions", 0, n - 1, (lo, hi), key=f"slider_{key}")
    app.set_params(**{key: f"{lo},{hi}"})
    return lo, hi


def colour_choice() -> str:
    colour = st.radio("Colour by", list(COLOURS), format_func=COLOURS.get, horizontal=True, key="lens_colour",
                      index=list(COLOURS).index(app.param("colour", "p_top1", str, list(COLOURS))))
    app.set_params(colour=colour)
    return colour


def draw_curves(curves: pd.DataFrame) -> list:
    panels = [lens_charts.layer_curve(curves, "kl_final"), lens_charts.layer_curve(curves, "rank_median")]
    layout.draw_panels(panels)
    return [("KL to the final layer per layer", panels[0]), ("Next-token rank per layer", panels[1])]


def stored_capture(what: str, words: str) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame] | None:
    """A capture picker, then the run, its stored ``what`` table and its lens grid; None after
    saying why (no capture, unreadable, or a capture without them, naming the command)."""
    run = app.run_picker("Capture run", ("capture",), key="run")
    if run is None:
        return None
    summary = app.read(run.name, what)
    grid = app.read(run.name, "lens_grid")
    if summary is None or grid is None:
        return None
    if summary.empty:
        st.info(f"Capture `{run.name}` has no stored {words} (it was made before captures stored them, or with "
                f"`--lens-positions 0`). {CAPTURE_HINT}")
        return None
    return run, summary, grid


def side_choice(label: str, stored: pd.DataFrame, key: str) -> str:
    """The side (baseline or trained) a view shows: a radio over the sides ``stored`` has, in the URL's ``side``."""
    sides = [s for s in SIDE_LABELS if s in set(stored.side)]
    side = st.radio(label, sides, format_func=SIDE_LABELS.get, horizontal=True, key=key,
                    index=sides.index(app.param("side", sides[-1], str, sides)))
    app.set_params(side=side)
    return side


def stored_view() -> None:
    found = stored_capture("lens_summary", "lens")
    if found is None:
        return
    run, summary, grid = found
    side = side_choice("Grid of", grid, "lens_side")
    colour = colour_choice()
    mine = grid[grid.side == side]
    lo, hi = position_range(int(mine.pos.max()) + 1)
    shown = mine[(mine.pos >= lo) & (mine.pos <= hi)]
    sub = f"{run.name} ({run.dataset}), {SIDE_LABELS[side]}, first window, positions {lo}-{hi}"
    app.chart(("lens_grid", run.name, side, colour, lo, hi),
              lambda: charts.fit_width(lens_charts.lens_grid(shown, colour, sub)), width="stretch")
    positions = int(summary.positions.iloc[0])
    st.caption(f"Curves: means over {positions} positions (the capture's first windows), baseline and trained. "
               "**Your prompt** (above) reads a prompt of your own with dosed and bio rows.")
    exported = [("Top-1 next token per layer and position", lens_charts.lens_grid(shown, colour, sub))]
    exported += draw_curves(stored_curves(summary))
    app.export_button("Lens", exported, {"run": run.name, "dataset": run.dataset, "side": side, "colour": colour})


# ---------------------------------------------------------------------- the live view

def tuned_runs(run_id: str | None) -> list[str]:
    """The complete tuned-lens runs fitted to this model: to the trained run ``run_id``, or (None)
    to the default base model (as ``jobs.lens --tuned`` checks)."""
    all_runs = app.runs()
    if all_runs is None:
        return []
    done = all_runs[(all_runs.kind == "tuned_lens") & (all_runs.state == "complete")]
    fitted = [(r.run_id, r.config if isinstance(r.config, dict) else {}) for r in done.itertuples()]
    return [rid for rid, cfg in fitted if cfg.get("run") == run_id
            and (run_id is not None or cfg.get("model") in (None, modeling.DEFAULT_MODEL))]


def live_view() -> None:
    """Widgets, the button that reads the prompt, and its grid and curves (kept in the session)."""
    all_runs = app.runs()
    trained = [] if all_runs is None else list(all_runs[(all_runs.kind == "train") & (all_runs.state == "complete")].run_id)
    sources = ["base model"] + trained
    source = st.selectbox("Model", sources, key="lens_model",
                          index=sources.index(app.param("model", "base model", str, sources)))
    run_id = None if source == "base model" else source
    prompt = st.text_input("Prompt (read teacher-forced, no chat template)",
                           app.param("prompt", "The capital of France is", max_len=MAX_PROMPT_CHARS),
                           max_chars=MAX_PROMPT_CHARS, key="lens_prompt")
    doses = app.param("doses", [0.2], app.float_list, lo=0.0, hi=1.0)
    names = [n for n, v in perturb.PRESETS.items() if v > 0]
    chosen = st.multiselect("Dose intensities", names, format_func=presets.label(perturb.PRESETS), key="lens_doses",
                            default=[n for n in names if perturb.PRESETS[n] in doses])
    intensities = [perturb.PRESETS[n] for n in chosen]
    fatigue, hebbian = bio_widgets.controls()
    lens_kind = st.radio("Lens", lens_mod.LENSES, horizontal=True, key="lens_kind",
                         index=list(lens_mod.LENSES).index(app.param("lens", "logit", str, list(lens_mod.LENSES))))
    tuned_run = None
    if lens_kind == "tuned":
        fitted = tuned_runs(run_id)
        if not fitted:
            st.warning(f"No tuned lens is trained for {source} here: train one with `python -m jobs.tuned_lens"
                       f"{' --run ' + run_id if run_id else ''}`, or pick the logit lens.")
        else:
            tuned_run = st.selectbox("Tuned-lens run", fitted, key="lens_tuned",
                                     index=fitted.index(app.param("tuned", fitted[0], str, fitted)))
    colour = colour_choice()
    app.set_params(model=run_id, prompt=prompt, doses=intensities or [0], lens=lens_kind, tuned=tuned_run)
    rows = batch_rows(intensities, fatigue, hebbian)
    if len(rows) > bio_widgets.MAX_ROWS:
        st.warning(f"{len(rows)} rows; at most {bio_widgets.MAX_ROWS} here: choose fewer, or use `python -m jobs.lens`.")
        return
    key = (run_id, prompt, tuple(map(str, rows)), tuned_run)
    ready = bool(prompt.strip()) and (lens_kind == "logit" or tuned_run is not None)
    if st.button("Read the prompt", type="primary", disabled=not ready, key="lens_go",
                 help=f"One teacher-forced forward pass of {len(rows)} row(s) through every layer's lens."):
        result = read_prompt(run_id, prompt, rows, tuned_run)
        if result is None:
            return
        st.session_state["lens_live"] = {"key": key, **result}
    live = st.session_state.get("lens_live")
    if live is None:
        st.info("Choose the rows and press **Read the prompt**.")
        return
    if live["key"] != key:
        st.caption("The settings changed since the prompt was read: press the button to read them.")
    grid = live["grid"]
    lo, hi = position_range(int(grid.pos.max()) + 1, key="lpos")
    chart = lens_charts.lens_grid(grid[(grid.pos >= lo) & (grid.pos <= hi)], colour,
                                  f"your prompt, the {live['grid_row']} row")
    st.altair_chart(charts.fit_width(chart), width="stretch")
    exported = [("Top-1 next token per layer and position", chart)] + draw_curves(live["curves"])
    app.export_button("Lens", exported, {"model": source, "prompt": prompt, "rows": ", ".join(map(row_label, rows)),
                                         "lens": tuned_run or "logit"})


def read_prompt(run_id: str | None, prompt: str, rows: list[dict], tuned_run: str | None) -> dict | None:
    """The lens of ``prompt`` for every row (with a trained run, plus the frozen baseline's sober
    row under the logit lens), under st.status; None after showing why it could not run."""
    with st.status("Reading the prompt…") as status:
        status.update(label="Loading the model (once per server process)…")
        model, tokenizer = app.generator(modeling.DEFAULT_MODEL, run_id, str(app.data_dir()))
        tokens = encode_prompt(tokenizer, prompt, chat=False)
        if len(tokens) > context_length(model):
            status.update(label="Prompt too long", state="error")
            st.error(f"The prompt is {len(tokens)} tokens, over the model's context of {context_length(model)}.")
            return None
        tuned = None
        if tuned_run:
            status.update(label=f"Loading the tuned lens {tuned_run}…")
            try:
                tuned = tuned_lens.load(app.store().run_dir(tuned_run) / tuned_lens.WEIGHTS_FILE, model)
            except (OSError, ValueError) as exc:
                status.update(label="Tuned lens unreadable", state="error")
                st.error(f"Tuned-lens run `{tuned_run}` cannot be read for this model: {exc}")
                return None
        status.update(label=f"Lens of {len(tokens)} tokens x {len(rows)} row(s)…")
        prefix = "trained, " if run_id else ""
        labels = [prefix + row_label(r) for r in rows]
        with serving.model_turn():
            lens = run_lens(model, tokens, rows, tuned=tuned)
            curves = curves_of(lens, labels)
            base, skip = forward.unwrap(model)
            if skip is not None and tuned is None:  # the frozen baseline beside the trained rows
                sober = lens_mod.logit_lens(base, [tokens], top_k=1)
                curves = pd.concat([curves_of(sober, [SIDE_LABELS["baseline"]]), curves], ignore_index=True)
        status.update(label="Done", state="complete")
    decode = lambda i: tokenizer.decode([i])
    return {"grid": grid_of(lens, tokens, decode), "grid_row": labels[0], "curves": curves}


# ---------------------------------------------------------------------- the Dosed generation page

def _dose_config(state: dict) -> dict:
    """The dose config behind the results the Dosed generation page shows: the stored run's
    (``state["run"]``) from the catalog, else the page's live request (its ``dose_results``)."""
    if state.get("run"):
        all_runs = app.runs()
        row = None if all_runs is None else all_runs[all_runs.run_id == state["run"]]
        return row.config.iloc[0] if row is not None and len(row) and isinstance(row.config.iloc[0], dict) else {}
    return (st.session_state.get("dose_results") or {}).get("config", {})


def sober_rows(gens: pd.DataFrame) -> pd.DataFrame:
    """The sober rows of one prompt's generations: intensity 0 and no fatigue, Hebbian or steering
    strength (bio and steered rows of a dose run also have intensity 0)."""
    plain = gens.intensity == 0
    for col in ("fatigue", "hebbian", "steering"):
        if col in gens.columns:
            plain &= pd.to_numeric(gens[col], errors="coerce").fillna(0) == 0
    return gens[plain]


def dose_depth_view(mine: pd.DataFrame, state: dict) -> list:
    """Where each dose of one prompt's generations takes hold: per layer, the KL of each dosed
    row's lens read-out from the sober row's, teacher-forced on the prompt and the sober row's
    continuation, behind a button. Returns the chart for the page's export (once computed)."""
    config = _dose_config(state)
    prompt = str(mine.prompt.iloc[0])
    intensities = sorted(float(i) for i in mine.intensity.unique())
    sober = sober_rows(mine)
    with st.expander("Where does each dose take hold? Lens per layer", expanded=app.param("depth", "0") == "1"):
        st.caption("The prompt and the sober row's continuation read teacher-forced in one batch: the sober row and one "
                   "row per intensity (the same seed and mechanisms as the generation). Per layer, KL(sober ‖ dosed) "
                   "of the two rows' logit-lens read-outs, averaged over positions: the depth where a line leaves 0 "
                   "is where that dose takes hold.")
        if not any(i > 0 for i in intensities):
            st.info("These generations have no dosed row.")
            return []
        key = (state.get("run"), config.get("skip_run"), prompt, tuple(intensities))
        if st.button("Read the layers", key="depth_go", help=f"One forward pass of {len(intensities) + (0 not in intensities)} rows."):
            app.set_params(depth="1")
            with st.status("Reading each layer…") as status:
                model, tokenizer = app.generator(config.get("model") or modeling.DEFAULT_MODEL, config.get("skip_run"),
                                                 str(app.data_dir()))
                tokens = encode_prompt(tokenizer, prompt, chat=bool(config.get("chat", True)))
                if len(sober):
                    tokens = list(tokens) + tokenizer.encode(str(sober.text.iloc[0]), add_special_tokens=False)
                tokens = tokens[: context_length(model)]
                seed = int(mine.seed.iloc[0])
                spec = perturb.DoseSpec.only(*(config.get("mechanisms") or perturb.MECHANISMS))
                with serving.model_turn():
                    frame = dose_depth(model, tokens, intensities, seed=seed, spec=spec)
                status.update(label=f"Read {len(tokens)} tokens", state="complete")
            st.session_state["dose_depth"] = (key, frame)
        kept = st.session_state.get("dose_depth")
        if kept is None or kept[0] != key:
            return []
        chart = lens_charts.layer_curve(kept[1], "kl_sober")
        st.altair_chart(chart, width="stretch")
    return [("Where each dose takes hold", chart)]

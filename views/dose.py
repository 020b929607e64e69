"""Dosed generation: live, token by token, at several intensities side by side; a whole prompts
file as one run; stored dose runs reopened with their texts, entropies and charts."""

import pandas as pd
import streamlit as st

from psilonet.app import (bio_widgets, cause_widgets, charts, dose_frames, dose_requests, helpers as app, lens_widgets,
                          presets, prompt_widgets, serving, share, steer_widgets)
from psilonet.generation import dose_config, dosing, perturb, prompts
from psilonet.model import loading as modeling
from psilonet.model import quantized
from psilonet.store import StoreError
from psilonet.store.dose_runs import save_dose_run

PRESETS = perturb.PRESETS
MAX_PROMPT_CHARS = 4000
VIEWS = {"generate": "New generation", "stored": "Stored runs"}

st.title("Dosed generation")
st.caption("Entropic perturbations of block outputs (noise, phase rotation, dimension shuffle, cross-dimension "
           "bleed), strongest in the middle layers. **Next-token entropy**: bits of the softmax over the "
           "vocabulary for each generated token. **Hidden-state entropy**: bits of p = h²/Σh² over the hidden "
           "dimensions, per layer, at the position that predicted the token.")


def show_results(gens: pd.DataFrame, tokens: pd.DataFrame, layers: pd.DataFrame, state: dict,
                 bio_state: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> None:
    """Texts, entropies and charts of a dose run (live or stored), one prompt at a time.

    ``gens`` has a ``label`` per row where the run has bio rows (``dose_frames.label_rows``), and
    ``bio_state`` the (pool, fast-weight norm) frames of its bio tables."""
    named = "label" in gens.columns
    keys = ["gen_id", "intensity"] + (["label"] if named else [])
    prompt_list = gens[["prompt_line", "prompt"]].drop_duplicates().reset_index(drop=True)
    exported = []
    k = app.param("p", 1, int, lo=1, hi=len(prompt_list)) - 1  # read even for one prompt: p=2 then warns
    if len(prompt_list) > 1:
        overview = charts.dose_overview(gens)
        st.altair_chart(overview, width="content")
        exported.append(("Mean entropy per prompt and intensity", overview))
        labels = [f"{k + 1}. {' '.join(str(p).split())[:90]}" for k, p in enumerate(prompt_list.prompt)]
        k = st.selectbox("Prompt", range(len(prompt_list)), index=k, format_func=lambda i: labels[i])
    else:
        k = 0
    app.set_params(p=k + 1 if k else None)
    line, prompt = prompt_list.prompt_line[k], prompt_list.prompt[k]
    mine = gens[(gens.prompt_line == line) & (gens.prompt == prompt)].sort_values(["seed", "intensity"])
    with st.expander("Prompt", expanded=len(prompt_list) == 1):
        st.code(prompt, language=None, wrap_lines=True)
    st.dataframe(mine[(["label"] if named else []) + ["intensity", "seed", "mean_entropy", "n_tokens", "stopped"]].rename(
        columns={"mean_entropy": "mean entropy (bits)", "n_tokens": "tokens", "stopped": "ended by the model"}),
        hide_index=True)
    cols = st.columns(min(len(mine), 4) or 1)
    for j, g in enumerate(mine.itertuples()):
        with cols[j % len(cols)]:
            st.markdown(f"**{g.label if named else f'intensity {g.intensity:g}'}**"
                        + (f" · seed {g.seed}" if mine.seed.nunique() > 1 else ""))
            st.code(g.text, language=None, wrap_lines=True)  # literal: never Markdown
    per_token = tokens[tokens.gen_id.isin(mine.gen_id)].merge(mine[keys], on="gen_id")
    if not per_token.empty:
        heat = charts.entropy_heatmap(per_token)
        st.altair_chart(charts.fit_width(heat), width="stretch")
        exported.append(("Next-token entropy", heat))
    per_layer = layers[layers.gen_id.isin(mine.gen_id)].merge(mine[keys], on="gen_id")
    if not per_layer.empty:
        profile = charts.layer_entropy_profile(per_layer)
        st.altair_chart(profile, width="stretch")
        exported.append(("Hidden-state entropy by layer", profile))
    if bio_state is not None and named:
        exported += bio_widgets.state_charts(*bio_state, dict(zip(mine.gen_id, mine.label)))
    exported += lens_widgets.dose_depth_view(mine, state)  # where each dose takes hold, per layer
    app.export_button("Dosed generation", exported, {**state, "prompt": prompt},
                      texts=[(g.label if named else f"intensity {g.intensity:g}", g.text) for g in mine.itertuples()])


def stored_view() -> None:
    run = app.run_picker("Dose run", ("dose",), key="dose_run")
    if run is None:
        return
    gens = app.read(run.name, "generations")
    tokens = app.read(run.name, "token_entropy")
    layers = app.read(run.name, "layer_entropy")
    if gens is None or tokens is None or layers is None:
        return
    if gens.empty:
        st.info(f"Run `{run.name}` holds no generation.")
        return
    gens = dose_frames.label_rows(gens, app.read(run.name, "bio_strengths"), app.read(run.name, "steering_rows"))
    bio_state = (app.read(run.name, "bio_pool"), app.read(run.name, "bio_fast_norm"))
    config = run.config or {}
    st.caption(f"{gens.prompt.nunique()} prompt(s) x {gens.intensity.nunique()} intensities, "
               f"mechanisms: {', '.join(config.get('mechanisms', [])) or 'n/a'}, "
               f"max tokens {config.get('max_tokens', 'n/a')}, temperature {config.get('temperature', 'n/a')}.")
    for note in config.get("skipped", []):
        st.warning(f"Skipped when the run was made: {note}")
    show_results(gens, tokens, layers, {"run": run.name, "dataset": run.dataset, **share.dose_settings(config, run.model)},
                 bio_state if all(f is not None for f in bio_state) else None)


def generate_view() -> None:
    all_runs = app.runs()
    trained = [] if all_runs is None else list(
        all_runs[(all_runs.kind == "train") & (all_runs.state == "complete")].run_id)
    sources = ["base model"] + trained
    source = st.selectbox("Model", sources, index=sources.index(app.param("run", "base model", str, sources)),
                          help="The default base model, or a trained skip run on it.")
    run_id = None if source == "base model" else source
    weights = st.radio("Weights", quantized.WEIGHTS, horizontal=True, key="weights", help=quantized.WEIGHTS_HELP,
                       index=quantized.WEIGHTS.index(app.param("weights", "f32", str, list(quantized.WEIGHTS))))

    left, right = st.columns([1, 1])
    with left:
        given = prompt_widgets.prompt_input("The nature of consciousness is", MAX_PROMPT_CHARS)
        file_prompts, prompt = given.file, given.prompt
        chat = st.toggle("Chat template", value=app.param("chat", "1", str, ["0", "1"]) == "1")
    with right:
        named, custom = presets.split("doses", app.param("doses", list(PRESETS.values()), app.float_list, lo=0.0,
                                                          hi=1.0), PRESETS, app.param("custom", None, float, lo=0.0, hi=1.0))
        chosen_presets = st.multiselect("Intensities", list(PRESETS), default=named or (None if custom else list(PRESETS)),
                                        format_func=presets.label(PRESETS))
        custom = st.slider("Custom intensity (added when > 0)", 0.0, 1.0, custom, 0.05)
        mechanisms = st.multiselect("Mechanisms", perturb.MECHANISMS, default=app.param(
            "mech", list(perturb.MECHANISMS), app.choice_list(perturb.MECHANISMS)))
        c1, c2, c3 = st.columns(3)
        seed = c1.number_input("Seed", 0, dose_config.MAX_SEED, app.param("seed", 0, int, lo=0, hi=dose_config.MAX_SEED))
        max_tokens = c2.number_input("Max tokens", 1, dose_config.MAX_NEW_TOKENS,
                                     app.param("max", 48, int, lo=1, hi=dose_config.MAX_NEW_TOKENS))
        temperature = c3.number_input("Temperature", 0.0, 2.0, app.param("temp", 0.0, float, lo=0.0, hi=2.0), 0.1)
        fatigue, hebbian = bio_widgets.controls()
    steer_request, steer_problem = steer_widgets.controls()

    intensities = sorted({PRESETS[p] for p in chosen_presets} | ({custom} if custom > 0 else set()))
    n_rows = len(intensities) * len(fatigue) * len(hebbian) * (len(steer_request.strengths) if steer_request else 1)
    app.set_params(run=run_id, chat="1" if chat else "0",
                   doses=intensities, custom=custom or None, mech=mechanisms, seed=seed, max=max_tokens,
                   temp=temperature or None)

    if st.session_state.pop("dose_running", False):
        last = st.session_state.get("dose_results")
        done = len(last["items"]) if last else 0
        st.info(f"Generation stopped after {done} of {last['total'] if last else '?'} prompt(s); "
                "the finished prompts are below and can be saved.")

    action = None
    if given.blocked:
        st.info(given.blocked)
    elif not intensities:
        st.info("Choose at least one intensity.")
    elif not mechanisms:
        st.info("Choose at least one mechanism.")
    elif steer_problem:
        st.info(steer_problem)
    elif n_rows > bio_widgets.MAX_ROWS:
        st.warning(f"{n_rows} rows (intensities x fatigue x Hebbian x steering strengths); at most {bio_widgets.MAX_ROWS} "
                   "here: choose fewer, or use `python -m jobs.dose`.")
    elif file_prompts is not None:
        n = len(file_prompts.prompts)
        if serving.allows_generation(int(max_tokens) * n, n_rows):  # viewer mode's budget counts every prompt
            action = st.button(f"Run all {n} prompt{'s' if n != 1 else ''}", type="primary",
                               help="Every prompt at every intensity; the results are saved together as one run.")
    elif serving.allows_generation(max_tokens, n_rows):
        action = st.button("Generate", type="primary")

    if action:
        model, tokenizer = app.generator(modeling.DEFAULT_MODEL, run_id, str(app.data_dir()), weights)
        context = prompts.context_length(model)
        todo = file_prompts.prompts if file_prompts is not None else [(1, prompt.strip())]
        try:
            runnable, skipped = dose_requests.plan_prompts(tokenizer, todo, max_tokens=int(max_tokens), chat=chat,
                                                    context=context, n_intensities=n_rows)
        except ValueError as exc:
            st.warning(str(exc))
            runnable, skipped = [], []
        if skipped:
            st.warning(f"{len(skipped)} prompt(s) skipped before generating (nothing else ran for them):\n\n"
                       + "\n".join(f"- {s}" for s in skipped))
        steer, steer_config = steer_widgets.prepare(steer_request if runnable else None, model, tokenizer, seed=int(seed))
        runnable = runnable if steer is not False else []  # the vector could not be built: nothing runs
        if runnable:
            dose = dose_config.DoseConfig(intensities=intensities, seeds=[int(seed)], mechanisms=list(mechanisms),
                                          max_tokens=int(max_tokens), temperature=temperature, chat=chat,
                                          fatigue=fatigue, hebbian=hebbian).validate()
            config = {**dose.to_dict(), "model": modeling.DEFAULT_MODEL, "skip_run": run_id, "source": "app",
                      "prompts": len(runnable), "skipped": skipped, **({"steering": steer_config} if steer else {})}
            last = {"config": config, "dose": dose, "steer": steer, "items": [], "total": len(runnable), "saved": None,
                    "dataset": given.file_name if file_prompts is not None else "app"}
            st.session_state["dose_results"] = last
            st.session_state["dose_running"] = True
            generate(model, tokenizer, runnable, last)
            st.session_state["dose_running"] = False

    last = st.session_state.get("dose_results")
    if last and last["items"]:
        st.subheader("Results")
        gens, tokens, layers = dose_frames.result_frames(last["items"])
        strengths, pool, norms = dose_frames.bio_frames(last["items"])
        show_results(dose_frames.label_rows(gens, strengths, dose_frames.steering_frame(last["items"])), tokens, layers,
                     share.dose_settings(last["config"]), (pool, norms))
        if last["saved"]:
            st.success(f"Saved as run `{last['saved']}`.")
            st.page_link("views/dose.py", label="Open the saved run", icon=":material/open_in_new:",
                         query_params={"view": "stored", "dose_run": last["saved"]})
        elif serving.allows_save() and st.button("Save to the store",
                                                 help="All prompts x intensities of this request as one dose run."):
            try:
                saved, _ = save_dose_run(app.store(), last["config"], last["items"],
                                                model=modeling.DEFAULT_MODEL, dataset=last["dataset"],
                                                parent=last["config"]["skip_run"],
                                                vector=(last["steer"].layer, last["steer"].vector) if last.get("steer") else None)
                last["saved"] = saved
                st.success(f"Saved as run `{saved}`; it is listed on the Runs page.")
                st.page_link("views/dose.py", label="Open the saved run", icon=":material/open_in_new:",
                             query_params={"view": "stored", "dose_run": saved})
            except StoreError as exc:
                st.error(f"Could not save: {exc}")
    cause_widgets.patch_view(run_id, prompt.strip() if prompt else None, chat)


def generate(model, tokenizer, runnable, last) -> None:
    """Run every prompt at every intensity (and bio strengths), streaming the current prompt; Stop
    (or leaving the page, or closing the tab) ends it and keeps the prompts already finished."""
    dose, steer = last["dose"], last.get("steer")
    intensities, fatigue, hebbian, strengths = dosing.batch_rows(dose, steer)
    seed = dose.seeds[0]
    gone = app.session_gone()
    live = st.empty()
    with live.container():
        st.button("Stop generating", help="Ends the generation now; the prompts already finished are kept and can be saved.")
        bar = st.progress(0.0, text=f"0 of {len(runnable)} prompt(s)")
        boxes = []
        for col, i, f, h, s in zip(st.columns(len(intensities)), intensities, fatigue, hebbian, strengths):
            col.markdown(f"**{dose_config.row_label(i, f, h, s)}**")
            boxes.append(col.empty())
    for k, (line, text) in enumerate(runnable):
        pieces = [""] * len(intensities)

        def stream(row: int, piece: str) -> None:
            if gone():  # the tab closed: Streamlit keeps the script running, so end it here
                st.stop()
            pieces[row] += piece
            boxes[row].code(pieces[row], language=None, wrap_lines=True)

        with serving.model_turn():  # one generation at a time, within viewer mode's limits
            item = dosing.generate_item(model, tokenizer, line, text, seed, dose, steer, on_token=stream)
        last["items"].append(item)
        bar.progress((k + 1) / len(runnable), text=f"{k + 1} of {len(runnable)} prompt(s)")
    live.empty()


view = st.segmented_control("Show", list(VIEWS), format_func=VIEWS.get, required=True,
                            default=app.param("view", "generate", str, list(VIEWS)), key="dose_view")
app.set_params(view=None if view == "generate" else view)
if view == "stored":
    app.set_params(run=None, prompt=None)
    stored_view()
else:
    app.set_params(dose_run=None)
    generate_view()

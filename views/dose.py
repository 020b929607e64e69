"""Dosed generation: live, token by token, at several intensities side by side."""

import pandas as pd
import streamlit as st

from psilonet.app import charts, helpers as app, serving
from psilonet.generation import dosing, perturb, prompts
from psilonet.generation.decoding import SamplingConfig
from psilonet.model import loading as modeling
from psilonet.store import StoreError

PRESETS = perturb.PRESETS

st.title("Dosed generation")
st.caption("Entropic perturbations of block outputs (noise, phase rotation, dimension shuffle, cross-dimension "
           "bleed), strongest in the middle layers. **Next-token entropy**: bits of the softmax over the "
           "vocabulary for each generated token. **Hidden-state entropy**: bits of p = h²/Σh² over the hidden "
           "dimensions, per layer, at the position that predicted the token.")

all_runs = app.runs()
trained = [] if all_runs is None else list(all_runs[(all_runs.kind == "train") & (all_runs.state == "complete")].run_id)
source = st.selectbox("Model", ["base model"] + trained,
                      index=(["base model"] + trained).index(app.param("run", "base model", str, ["base model"] + trained)),
                      help="The default base model, or a trained skip run on it.")
run_id = None if source == "base model" else source

left, right = st.columns([3, 2])
with left:
    upload = None if not serving.allows_upload() else st.file_uploader(
        "Prompts file (.txt one per line, .jsonl with \"prompt\", .csv with a prompt column)", type=["txt", "jsonl", "csv"])
    file_prompts = None
    if upload is not None:
        try:
            file_prompts = prompts.parse_prompts(upload.getvalue(), upload.name)
            if file_prompts.skipped:
                st.warning(file_prompts.report())
        except prompts.PromptFileError as exc:
            st.error(str(exc))
    if file_prompts is not None:
        prompt = st.selectbox("Prompt from the file", [p for _, p in file_prompts.prompts])
    else:
        prompt = st.text_area("Prompt", app.param("prompt", "The nature of consciousness is"), max_chars=4000)
    chat = st.toggle("Chat template", value=app.param("chat", "1", str, ["0", "1"]) == "1")
with right:
    chosen_presets = st.multiselect("Intensities", list(PRESETS), default=[
        k for k, v in PRESETS.items() if v in app.param("doses", list(PRESETS.values()), app.float_list)] or list(PRESETS))
    custom = st.slider("Custom intensity (added when > 0)", 0.0, 1.0, float(app.param("custom", 0.0, float)), 0.05)
    mechanisms = st.multiselect("Mechanisms", perturb.MECHANISMS, default=[
        m for m in app.param("mech", ",".join(perturb.MECHANISMS)).split(",") if m in perturb.MECHANISMS])
    c1, c2, c3 = st.columns(3)
    seed = c1.number_input("Seed", 0, 2**31 - 1, app.param("seed", 0, int))
    max_tokens = c2.number_input("Max tokens", 1, dosing.MAX_NEW_TOKENS, min(app.param("max", 48, int), dosing.MAX_NEW_TOKENS))
    temperature = c3.number_input("Temperature", 0.0, 2.0, app.param("temp", 0.0, float), 0.1)

intensities = sorted({PRESETS[p] for p in chosen_presets} | ({custom} if custom > 0 else set()))
app.set_params(run=run_id, prompt=prompt if file_prompts is None else None, chat="1" if chat else "0",
               doses=intensities, custom=custom or None, mech=mechanisms, seed=seed, max=max_tokens,
               temp=temperature or None)

if not prompt.strip():
    st.info("Type a prompt or upload a prompts file.")
elif not intensities:
    st.info("Choose at least one intensity.")
elif serving.allows_generation(max_tokens, len(intensities)) and st.button("Generate", type="primary"):
    model, tokenizer = app.generator(modeling.DEFAULT_MODEL, run_id, str(app.data_dir()))
    st.caption("Press Stop (top right) to interrupt a generation.")
    columns = st.columns(len(intensities))
    boxes, texts = [], [""] * len(intensities)
    for col, i in zip(columns, intensities):
        col.markdown(f"**intensity {i:g}**")
        boxes.append(col.empty())

    def stream(row: int, piece: str) -> None:
        texts[row] += piece
        boxes[row].markdown(texts[row])

    with serving.model_turn():  # app.model_turn (one generation at a time) plus viewer mode's limits
        results = dosing.generate_doses(
            model, tokenizer, prompt, intensities, spec=perturb.DoseSpec.only(*mechanisms), chat=chat,
            sampling=SamplingConfig(temperature=temperature, max_tokens=int(max_tokens), seed=int(seed)), on_token=stream)
    st.session_state["dose_results"] = {"prompt": prompt, "seed": int(seed), "run": run_id, "chat": chat,
                                        "mechanisms": mechanisms, "results": results,
                                        "temperature": temperature, "max_tokens": int(max_tokens)}

last = st.session_state.get("dose_results")
if last:
    results = last["results"]
    tokens = pd.DataFrame([dict(gen_id=g, intensity=r.intensity, pos=p, token_text=t, entropy=e)
                           for g, r in enumerate(results) for p, (t, e) in enumerate(zip(r.token_texts, r.entropy))])
    layers = pd.DataFrame([dict(intensity=r.intensity, layer=l, entropy=e)
                           for r in results for per_token in r.layer_entropy for l, e in enumerate(per_token)])
    st.subheader("Results")
    st.dataframe(pd.DataFrame([dict(intensity=r.intensity, mean_entropy_bits=r.mean_entropy, tokens=len(r.token_ids),
                                    text=r.text) for r in results]), hide_index=True, width="stretch")
    exported = []
    if not tokens.empty:
        heat = charts.entropy_heatmap(tokens)
        profile = charts.layer_entropy_profile(layers)
        st.altair_chart(heat, width="stretch")
        st.altair_chart(profile, width="stretch")
        exported = [("Next-token entropy", heat), ("Hidden-state entropy by layer", profile)]
    if serving.allows_save() and st.button("Save to the store"):
        dose = dosing.DoseConfig([r.intensity for r in results], [last["seed"]], last["mechanisms"],
                                 last["max_tokens"], last["temperature"], chat=last["chat"])
        config = {**dose.to_dict(), "model": modeling.DEFAULT_MODEL, "skip_run": last["run"], "source": "app"}
        try:
            saved, _ = dosing.save_dose_run(app.store(), config, [(1, last["prompt"], last["seed"], results)],
                                            model=modeling.DEFAULT_MODEL, dataset="app", parent=last["run"])
            st.success(f"Saved as run `{saved}`; it is listed on the Runs page.")
        except StoreError as exc:
            st.error(f"Could not save: {exc}")
    app.export_button("Dosed generation", exported, {"prompt": last["prompt"], "seed": last["seed"],
                                                      "intensities": [r.intensity for r in results]})

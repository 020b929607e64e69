"""The two live causal views: activation patching (Dosed generation page) and direct logit
attribution (Causes page). Each is a few widgets, one call into psilonet.analysis under the
server-wide model turn, and a chart; the state lives in the URL."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from psilonet.analysis import dla, patching
from psilonet.app import cause_charts, helpers as app, serving
from psilonet.generation.prompts import encode_prompt
from psilonet.model import loading as modeling

MAX_PROMPT_CHARS = 2000


def _model(run_id: str | None):
    return app.generator(modeling.DEFAULT_MODEL, run_id, str(app.data_dir()))


def patch_view(run_id: str | None, prompt: str | None, chat: bool) -> None:
    """Restore / inject per block for ``prompt`` (the page's prompt) under one mechanism."""
    with st.expander("Where does the dose act? Activation patching", expanded=app.param("patch", "0") == "1"):
        st.caption("One batch, teacher-forced on the prompt: the sober row, the dosed row (same seed), and per block "
                   "a row whose output there is replaced by the sober one (restored = 1 − KL(sober‖patched) / "
                   "KL(sober‖dosed)) and a row dosed at that block only (injected = its KL / the full dose's). "
                   "Also `python -m jobs.patch`.")
        c1, c2, c3 = st.columns(3)
        mechanism = c1.selectbox("Mechanism", patching.MECHANISMS,
                                 index=patching.MECHANISMS.index(app.param("pmech", "dose", str, list(patching.MECHANISMS))))
        top = 1.0 if mechanism == "dose" else 2.0
        strength = c2.slider("Intensity / strength", 0.05, top, float(app.param("pint", 0.2, float, lo=0.05, hi=top)),
                             0.05)
        seed = int(c3.number_input("Seed", 0, 2**31 - 1, app.param("pseed", 0, int, lo=0, hi=2**31 - 1)))
        app.set_params(pmech=mechanism, pint=strength, pseed=seed)
        if not prompt:
            st.info("Patching reads one prompt: type one above (not a prompts file).")
            return
        if st.button("Patch", help="One forward pass of 2 + 2 x blocks rows."):
            app.set_params(patch="1")
            with st.status("Patching…") as status:
                model, tokenizer = _model(run_id)
                with serving.model_turn():
                    try:
                        rows = patching.profile(model, encode_prompt(tokenizer, prompt, chat=chat), mechanism,
                                                strength, seed=seed)
                    except patching.PatchError as exc:
                        status.update(label="Nothing to patch", state="error")
                        st.error(str(exc))
                        return
                status.update(label="Patched", state="complete")
            st.session_state["patch_rows"] = pd.DataFrame(rows)
        rows = st.session_state.get("patch_rows")
        if rows is not None:
            st.altair_chart(cause_charts.patching_profile(rows), width="stretch")
            st.caption(f"KL(sober ‖ dosed) = {rows.kl_dosed.iloc[0]:.4f} nats at the last position.")


def correlation_line(corr: pd.DataFrame) -> str:
    """The answer under the learned-vs-effect scatter, from ``ablation.weight_effect_correlation``."""
    if corr.empty:
        return ("Spearman's rank correlation of |learned weight| and Δ loss: not defined here (fewer than 3 "
                "components of a kind, or their learned weights are all equal).")
    return "Spearman's rank correlation of |learned weight| and Δ loss: " + "; ".join(
        f"{r.kind} ρ = {r.spearman:+.2f} (p = {r.p_value:.2g}, {r.n} components)" for r in corr.itertuples()) + (
        ". Near +1: the larger the learned weight, the more the loss rises without the component.")


def dla_view() -> None:
    """Per position and block, each part's direct push on the predicted token's logit."""
    all_runs = app.runs()
    trained = [] if all_runs is None else list(
        all_runs[(all_runs.kind == "train") & (all_runs.state == "complete")].run_id)
    sources = ["base model"] + trained
    source = st.selectbox("Model", sources, index=sources.index(app.param("dla_run", sources[-1] if trained else
                                                                             "base model", str, sources)),
                          key="dla_model")
    run_id = None if source == "base model" else source
    prompt = st.text_input("Prompt", app.param("dla_prompt", "The nature of consciousness is",
                                               max_len=MAX_PROMPT_CHARS), max_chars=MAX_PROMPT_CHARS)
    part = st.segmented_control("Part", dla.PARTS, required=True,
                                default=app.param("part", "skip" if run_id else "attn", str, list(dla.PARTS)),
                                key="dla_part")
    app.set_params(dla_run=run_id, dla_prompt=prompt, part=part)
    if st.button("Attribute", help="One forward pass of the raw prompt (no chat template)."):
        if not prompt.strip():
            st.error("Type a prompt first.")
            return
        with st.status("Attributing…") as status:
            model, tokenizer = _model(run_id)
            with serving.model_turn():
                frame = dla.attribution_frame(model, tokenizer, encode_prompt(tokenizer, prompt, chat=False))
            status.update(label="Done", state="complete")
        st.session_state["dla_frame"] = (run_id, frame)
    kept = st.session_state.get("dla_frame")
    if kept is None:
        return
    kept_run, frame = kept
    if part == "skip" and not (frame.part == "skip").any():
        st.info("The base model has no skip pathway: pick a trained run.")
        return
    st.altair_chart(cause_charts.dla_heatmap(frame, part))
    totals = frame[frame.part != "embed"].groupby(["part", "layer"], as_index=False)["value"].sum()
    st.caption("Summed over positions, the largest pushes: " + ", ".join(
        f"{r.part} {int(r.layer)} ({r.value:+.2f})" for r in totals.reindex(
            totals.value.abs().sort_values(ascending=False).index).head(5).itertuples()))

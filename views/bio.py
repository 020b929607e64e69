"""Bio-inspired interventions: what synaptic fatigue and Hebbian fast weights cost the model."""

import streamlit as st

from psilonet.app import bio_charts, helpers as app, layout
from psilonet.generation import bio, bio_eval

st.title("Bio interventions")
fp, hp = bio.FatigueParams(), bio.HebbianParams()
st.caption(
    f"**Synaptic fatigue**: every attention head keeps a pool r in [0, 1] per key; logits get + s·log(max(r, "
    f"{fp.eps:g})), then r ← clip(r − {fp.k_use:g}·p + (1 − r)/{fp.tau_rrp:g}, 0, 1). **Hebbian fast weights**: every "
    f"block adds s·(x̂ W_fast) to its MLP output, W_fast ← {hp.decay:g}·W_fast + {hp.eta:g}·g·x̂ ⊗ y (the last "
    f"{hp.rank} writes, so rank ≤ {hp.rank}), g = sigmoid({hp.gain:g}·(a − {hp.theta:g})), where a is the ratio of the token's "
    "MLP activity to its running mean. Generate with them on the Dosed generation page or `python -m jobs.dose "
    "--fatigue ... --hebbian ...`; measure them with `python -m jobs.bio_eval`.")

run = app.run_picker("Bio evaluation run", ("bio_eval",))
if run is not None:
    rows = app.read(run.name, "bio_eval")
    if rows is not None and not rows.empty:
        summary = bio_eval.summarize(rows)
        cfg = run.config or {}
        st.caption(f"{cfg.get('windows', '?')} windows of {cfg.get('seq_len', '?')} tokens per corpus, seed "
                   f"{cfg.get('seed', '?')}; every configuration reads the same windows (rows of one batch), so "
                   "differences with sober are paired by window; 95% Student-t confidence intervals.")
        loss = bio_charts.bio_eval_chart(summary, "loss")
        entropy = bio_charts.bio_eval_chart(summary, "entropy")
        for value in ("loss", "entropy"):
            layout.draw_panels(bio_charts.bio_eval_panels(summary, value))
        st.dataframe(summary, hide_index=True, width="stretch")
        with st.expander("Configuration"):
            st.json(cfg)
        app.export_button("Bio interventions", [("Loss against sober", loss), ("Entropy against sober", entropy)],
                          {"run": run.name})

"""Direct logit attribution: which block's skip output, base attention or MLP pushes a prediction.

The residual stream before the final norm is a sum of what each part wrote into it,
``h[L] = embed + sum_l (attn_l + skip_l + mlp_l)``, where ``skip_l`` is a skip block's output
after its o-projection and ``attn_l`` the rest of the block's blended attention output (the base
heads, scaled by ``1 - alpha`` under the convex blend). The logit of the predicted token ``y``
at position ``t`` is ``(w * h[L] / rms(h[L])) . u_y`` (RMSNorm weight ``w``, unembedding row
``u_y``). Freezing the norm's scale ``1 / rms(h[L][t])`` at its value at that position (the
linearisation TransformerLens applies with ``apply_ln_to_stack``) makes the logit linear in the
parts, so each part's direct effect is

    DLA_c(t) = (w * c(t)) . u_y / rms(h[L][t]),

and the parts sum to the logit exactly (to float rounding). Only the *direct* path is
measured: what a part does to later blocks' inputs is not in its number.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pandas as pd

from psilonet.model import forward

PARTS = ("attn", "skip", "mlp")
COLUMNS = ["pos", "token", "predicted", "part", "layer", "value"]


def _unembedding_rows(base, ids: mx.array) -> mx.array:
    """(T, D) rows of the unembedding for token ``ids`` (tied or untied, quantized or not)."""
    if base.args.tie_word_embeddings:
        return base.model.embed_tokens(ids).astype(mx.float32)
    head = base.lm_head
    if isinstance(head, nn.QuantizedLinear):
        w = mx.dequantize(head.weight, head.scales, head.biases, head.group_size, head.bits)
        return w[ids].astype(mx.float32)
    return head.weight[ids].astype(mx.float32)


def attribution(model, tokens: list[int]) -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray], np.ndarray]:
    """``(predicted ids (T,), {(part, layer) or ("embed", -1): DLA (T,)}, logits of the
    predictions (T,))`` for one prompt, in one forward pass."""
    base, skip = forward.unwrap(model)
    inputs = mx.array(np.asarray(tokens)[None, :])
    mids, mlps, skips = {}, {}, {}

    def mlp(l, layer, h, cache):
        out = layer.mlp(layer.post_attention_layernorm(h))
        mids[l], mlps[l] = h, out
        return out

    hooks = forward.Hooks(mlp=mlp)
    if skip is not None:
        with skip.recording(skips):
            states = forward.hidden_states(model, inputs, hooks=hooks)
    else:
        states = forward.hidden_states(model, inputs, hooks=hooks)
    last = states[-1][0].astype(mx.float32)
    logits = forward.logits_from(model, states[-1])[0]
    predicted = mx.argmax(logits, axis=-1)
    norm = base.model.norm
    inv_rms = mx.rsqrt(mx.mean(last * last, axis=-1, keepdims=True) + norm.eps)  # (T, 1)
    direction = norm.weight.astype(mx.float32) * _unembedding_rows(base, predicted) * inv_rms  # (T, D)

    def dla(c: mx.array) -> np.ndarray:
        return np.array((c[0].astype(mx.float32) * direction).sum(axis=-1), dtype=np.float64)

    parts = {("embed", -1): dla(states[0])}
    for l in range(len(states) - 1):
        attn = mids[l] - states[l]
        if l in skips:
            parts[("skip", l)] = dla(skips[l])
            attn = attn - skips[l]
        parts[("attn", l)] = dla(attn)
        parts[("mlp", l)] = dla(mlps[l])
    chosen = np.array(mx.take_along_axis(logits, predicted[:, None], axis=-1)[:, 0], dtype=np.float64)
    return np.array(predicted), parts, chosen


def attribution_frame(model, tokenizer, tokens: list[int]) -> pd.DataFrame:
    """:func:`attribution` as rows ``COLUMNS``: per position the input token, the predicted next
    token, and each part's DLA (``part`` embed / attn / skip / mlp, ``layer`` -1 for embed)."""
    predicted, parts, _ = attribution(model, tokens)
    texts = [tokenizer.decode([int(t)]) for t in tokens]
    preds = [tokenizer.decode([int(t)]) for t in predicted]
    rows = [(t, texts[t], preds[t], part, layer, float(v[t]))
            for (part, layer), v in parts.items() for t in range(len(tokens))]
    return pd.DataFrame(rows, columns=COLUMNS)

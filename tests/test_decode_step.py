"""The compiled decode step over a fixed KV cache against the plain loop, on a tiny random model."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from psilonet.generation import decode_step
from psilonet.generation import decoding as generation
from psilonet.generation.decode_step import Decoder, RowHook
from psilonet.generation.decoding import SamplingConfig
from psilonet.generation.perturb import Doser
from psilonet.model import forward

PROMPT = [5, 17, 3, 42, 8, 11]


def steps(model, cfg, compiled, **kw):
    return list(generation.decode(model, PROMPT, generation.DecodeConfig(cfg, compiled=compiled, **kw)))


def test_supports_plain_models_only(tiny_model):
    from psilonet.model.skip import SkipConfig, SkipModel

    assert decode_step.supports(tiny_model)
    assert not decode_step.supports(SkipModel.from_base(tiny_model, SkipConfig(distances=[2], skip_start=2)))


@pytest.mark.parametrize("cfg,batch", [(SamplingConfig(max_tokens=9), 1),
                                       (SamplingConfig(temperature=0.8, top_p=0.9, max_tokens=9, seed=4), 3)])
def test_compiled_equals_plain_loop(tiny_model, cfg, batch):
    fast, plain = steps(tiny_model, cfg, True, batch=batch), steps(tiny_model, cfg, False, batch=batch)
    assert [s.tokens for s in fast] == [s.tokens for s in plain]


@pytest.mark.parametrize("prompt", [PROMPT, PROMPT * 12])  # 6 and 72 prompt tokens
def test_attention_spans_grow_across_steps_like_the_growing_cache(tiny_model, prompt):
    # 140 new tokens cross two or three SPAN_STEP boundaries; the plain loop's mlx-lm cache grows
    # token by token, so equal tokens and entropies mean no span ever hid a written slot.
    assert decode_step.SPAN_STEP == 64
    cfg = SamplingConfig(max_tokens=140)

    def run(compiled):
        return list(generation.decode(tiny_model, prompt, generation.DecodeConfig(cfg, compiled=compiled, batch=2, track=True)))

    fast, plain = run(True), run(False)
    assert len(fast) == 140 and [s.tokens for s in fast] == [s.tokens for s in plain]
    np.testing.assert_allclose([s.entropy for s in fast], [s.entropy for s in plain], rtol=1e-4, atol=1e-5)
    assert [decode_step.span_for(p, 256) for p in (0, 63, 64, 200, 255)] == [64, 64, 128, 256, 256]


def test_compiled_dose_and_entropies_equal_plain_loop(tiny_model):
    cfg = SamplingConfig(temperature=0.9, max_tokens=8, seed=2)

    def run(compiled):
        doser = Doser([0.0, 0.4], [2, 2], forward.num_layers(tiny_model), tiny_model.args.hidden_size)
        return steps(tiny_model, cfg, compiled, doser=doser, seeds=[2, 2], track=True)

    fast, plain = run(True), run(False)
    assert [s.tokens for s in fast] == [s.tokens for s in plain]
    np.testing.assert_allclose([s.entropy for s in fast], [s.entropy for s in plain], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([s.layer_entropy for s in fast], [s.layer_entropy for s in plain], rtol=1e-4, atol=1e-5)


def test_row_state_is_carried_from_step_to_step(tiny_model):
    # A hook that counts, per row, the blocks it has seen: state that lives across compiled steps.
    layers = forward.num_layers(tiny_model)

    def after_block(layer, h, rows):
        return h, {"seen": rows["seen"] + rows["weight"]}

    hook = RowHook(("count",), {"seen": mx.zeros((2,)), "weight": mx.array([1.0, 2.0])}, after_block, lambda step: {})
    dec = Decoder(tiny_model, 2, 32, hook=hook)
    out = dec.prefill(PROMPT)
    for _ in range(4):
        out = dec.step(out["tokens"])
    assert dec.rows["seen"].tolist() == [5 * layers, 10 * layers]


def test_cache_capacity_is_enforced(tiny_model):
    dec = Decoder(tiny_model, 1, len(PROMPT) + 1)
    out = dec.prefill(PROMPT)
    out = dec.step(out["tokens"])
    with pytest.raises(ValueError, match="KV cache"):
        dec.step(out["tokens"])
    with pytest.raises(ValueError, match="prompt"):
        Decoder(tiny_model, 1, 4).prefill(PROMPT)

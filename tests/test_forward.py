"""Parity of our layer loop with the plain model, for every supported model type."""

from __future__ import annotations

import mlx.core as mx
import pytest

from psilonet.model import forward
from psilonet.model.skip import SkipConfig, SkipModel
from tests.conftest import make_tiny_model

TOKENS = mx.array([[3, 14, 15, 92, 65, 35, 89, 79], [2, 71, 82, 81, 82, 84, 59, 4]])


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False}, {"num_key_value_heads": 4}])
def test_loop_matches_the_plain_llama(overrides):
    model = make_tiny_model(**overrides)
    logits, states = forward.forward(model, TOKENS)
    assert len(states) == 7
    assert float(mx.abs(logits - model(TOKENS)).max()) < 1e-5


def test_loop_matches_a_skip_model(tiny_model):
    skip = SkipModel.from_base(tiny_model, SkipConfig(distances=[2], skip_start=2, alpha=0.5))
    logits, states = forward.forward(skip, TOKENS)
    assert float(mx.abs(logits - skip(TOKENS)).max()) < 1e-5
    assert len(states) == 7


def test_after_block_replaces_the_state_later_blocks_see(tiny_model):
    seen = []
    def zero_layer_two(l, h):
        seen.append(l)
        return mx.zeros_like(h) if l == 2 else h
    _, states = forward.forward(tiny_model, TOKENS, after_block=zero_layer_two)
    assert seen == list(range(6))
    assert float(mx.abs(states[3]).max()) == 0.0
    _, plain = forward.forward(tiny_model, TOKENS)
    assert float(mx.abs(states[4] - plain[4]).max()) > 1e-3


@pytest.mark.parametrize("make", [
    lambda base: base,
    lambda base: SkipModel.from_base(base, SkipConfig(distances=[1, 2], skip_start=2, alpha=0.5, gates=True)),
])
def test_run_with_cache_matches_the_plain_model_and_names_hooks(tiny_model, make):
    model = make(tiny_model)
    logits, cache = forward.run_with_cache(model, TOKENS)
    assert float(mx.abs(logits - model(TOKENS)).max()) < 1e-5
    assert cache["hook_embed"].shape == (2, 8, 64)
    assert cache["blocks.5.hook_resid_post"].shape == (2, 8, 64)
    assert cache["blocks.0.attn.hook_z"].shape == (2, 8, 4, 16)
    # the heads are what the o-projection of block 0 consumes
    layer = tiny_model.model.layers[0]
    z = cache["blocks.0.attn.hook_z"].reshape(2, 8, 64)
    attn_out = layer.self_attn(layer.input_layernorm(cache["hook_embed"]), "causal")
    assert float(mx.abs(layer.self_attn.o_proj(z) - attn_out).max()) < 1e-5

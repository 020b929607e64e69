"""Parity of the hooked forward with mlx-lm's own models, for every supported family.

"The plain model" is mlx-lm's own ``Model.__call__`` on the same weights; its residual states
and attention outputs are recorded by wrapping its ``TransformerBlock`` and ``Attention``
classes, so nothing of ours is in the reference.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from psilonet.model import forward
from psilonet.model.skip import SkipConfig, SkipModel
from tests.conftest import make_tiny_model

TOKENS = mx.array([[3, 14, 15, 92, 65, 35, 89, 79], [2, 71, 82, 81, 82, 84, 59, 4]])
TOL = 1e-5

FAMILIES = {
    "llama": {},
    "llama-untied": {"tie_word_embeddings": False},
    "llama-mha": {"num_key_value_heads": 4},
    "llama-sliding": {"layer_types": ["sliding_attention", "full_attention"] * 3, "sliding_window": 3},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": False},
    "qwen3": {"model_type": "qwen3"},
}


def family_model(name: str):
    """A tiny random model of the family with RMSNorm weights away from 1 (so that a missing
    or misplaced norm, qwen3's q/k norms included, changes the numbers)."""
    model = make_tiny_model(**FAMILIES[name])
    mx.random.seed(7)
    norms = [(k, 1 + 0.3 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.parameters())
             if k.endswith("norm.weight")]
    model.load_weights(norms, strict=False)
    mx.eval(model.parameters())
    return model


def plain_run(model, tokens, monkeypatch):
    """mlx-lm's own forward: (logits, residual states h[0..L], attention outputs per block)."""
    layer = model.model.layers[0]
    block_cls, attn_cls = type(layer), type(layer.self_attn)
    block_call, attn_call = block_cls.__call__, attn_cls.__call__
    states, attn_out = [model.model.embed_tokens(tokens)], []

    def block(self, x, mask=None, cache=None):
        states.append(block_call(self, x, mask, cache))
        return states[-1]

    def attention(self, x, mask=None, cache=None):
        attn_out.append(attn_call(self, x, mask, cache))
        return attn_out[-1]

    with monkeypatch.context() as patch:
        patch.setattr(block_cls, "__call__", block)
        patch.setattr(attn_cls, "__call__", attention)
        logits = model(tokens)
    return logits, states, attn_out


def gap(a, b) -> float:
    return float(mx.abs(a - b).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_states_and_heads_match_the_plain_model(family, monkeypatch):
    model = family_model(family)
    logits, states, attn_out = plain_run(model, TOKENS, monkeypatch)
    z: dict[int, mx.array] = {}
    ours, our_states = forward.forward(model, TOKENS, hooks=forward.Hooks(z=z))
    assert len(our_states) == len(states) == 7
    assert gap(ours, logits) < TOL
    assert max(gap(a, b) for a, b in zip(our_states, states)) < TOL
    for l, layer in enumerate(model.model.layers):  # o_proj(concat heads) is the attention output
        assert gap(layer.self_attn.o_proj(forward.merge_heads(z[l])), attn_out[l]) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_explicit_attention_equals_the_fused_kernel(family):
    model = family_model(family)
    pattern: dict[int, mx.array] = {}
    fused, fused_states = forward.forward(model, TOKENS)
    explicit, states = forward.forward(model, TOKENS, hooks=forward.Hooks(pattern=pattern))
    assert gap(explicit, fused) < TOL
    assert max(gap(a, b) for a, b in zip(states, fused_states)) < TOL
    probs = pattern[0]
    assert probs.shape == (2, 4, 8, 8)
    assert gap(probs.sum(axis=-1), mx.ones((2, 4, 8))) < TOL
    assert float(mx.triu(probs, k=1).max()) == 0.0  # causal
    if family == "llama-sliding":  # layer 0 sees its last 3 tokens only
        assert float(mx.tril(probs, k=-3).max()) == 0.0
        assert float(mx.tril(pattern[1], k=-3).max()) > 0.0


def test_a_score_hook_changes_one_head_and_its_pattern():
    model = family_model("llama")
    def mute_first_key(l, scores):  # block 2, head 1: no attention to position 0
        if l != 2:
            return scores
        bias = mx.zeros((1, 4, 1, 1)).at[0, 1].add(-1e9)
        return scores + bias * (mx.arange(scores.shape[-1]) == 0)
    z_plain: dict[int, mx.array] = {}
    z: dict[int, mx.array] = {}
    pattern: dict[int, mx.array] = {}
    forward.forward(model, TOKENS, hooks=forward.Hooks(z=z_plain))
    forward.forward(model, TOKENS, hooks=forward.Hooks(z=z, attn_scores=mute_first_key, pattern=pattern))
    assert float(pattern[2][:, 1, 1:, 0].max()) == 0.0
    assert gap(z[2][:, [0, 2, 3]], z_plain[2][:, [0, 2, 3]]) < TOL
    assert gap(z[2][:, 1, 1:], z_plain[2][:, 1, 1:]) > 1e-3
    assert gap(z[1], z_plain[1]) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_additive_skip_model_at_step_zero_is_the_base(family):
    model = family_model(family)
    skip = SkipModel.from_base(model, SkipConfig(distances=[1, 2], skip_start=2, alpha=0.7, blend="additive"))
    logits, states = forward.forward(skip, TOKENS)
    base_logits, base_states = forward.forward(model, TOKENS)
    assert gap(logits, base_logits) < TOL
    assert max(gap(a, b) for a, b in zip(states, base_states)) < TOL
    assert gap(skip(TOKENS), base_logits) < TOL


def trained_skip(model):
    """A convex, gated, multi-tap skip model with its weights moved away from initialisation."""
    skip = SkipModel.from_base(model, SkipConfig(distances=[1, 2], skip_start=2, alpha=0.5, gates=True))
    mx.random.seed(3)
    params = [(k, v + 0.1 * mx.random.normal(v.shape)) for k, v in tree_flatten(skip.trainable_parameters())]
    skip.load_weights(params, strict=False)
    return skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("skip", [False, True], ids=["base", "skip"])
def test_decoding_with_a_kv_cache_equals_one_full_forward(family, skip):
    model = family_model(family)
    model = trained_skip(model) if skip else model
    full, full_states = forward.forward(model, TOKENS)
    cache = make_prompt_cache(model)
    steps = [forward.forward(model, TOKENS[:, :5], cache)]  # prefill, then one token at a time
    steps += [forward.forward(model, TOKENS[:, t : t + 1], cache) for t in range(5, 8)]
    logits = mx.concatenate([s[0] for s in steps], axis=1)
    assert gap(logits, full) < TOL
    last = mx.concatenate([s[1][-1] for s in steps], axis=1)
    assert gap(last, full_states[-1]) < TOL


def test_after_block_replaces_the_state_later_blocks_see(tiny_model):
    seen = []
    def zero_layer_two(l, h):
        seen.append(l)
        return mx.zeros_like(h) if l == 2 else h
    _, states = forward.forward(tiny_model, TOKENS, hooks=forward.Hooks(after_block=zero_layer_two))
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
    no_logits, same = forward.run_with_cache(model, TOKENS, return_type=None)
    assert no_logits is None and same.keys() == cache.keys()


def test_skip_attention_follows_the_family():
    qwen3 = SkipModel.from_base(family_model("qwen3"), SkipConfig(distances=[2], skip_start=2))
    attn = qwen3.blocks["l2"].attn
    base = qwen3.layers[2].self_attn
    assert gap(attn.q_norm.weight, base.q_norm.weight) == 0.0 and "k_norm" in attn
    qwen2 = SkipModel.from_base(family_model("qwen2"), SkipConfig(distances=[2], skip_start=2, blend="additive"))
    attn = qwen2.blocks["l2"].attn
    assert gap(attn.k_proj.bias, qwen2.layers[2].self_attn.k_proj.bias) == 0.0
    assert "bias" not in attn.o_proj and isinstance(attn.o_proj, nn.Linear)


def test_load_model_refuses_other_families_before_loading_weights(tmp_path, monkeypatch):
    import json

    import mlx_lm

    from psilonet.model import loading as modeling

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(mlx_lm, "load", no_load)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "hidden_size": 64}))
    (tmp_path / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(modeling.ModelError) as err:
        modeling.load_model(str(tmp_path))
    message = str(err.value)
    assert "'gemma3'" in message and "\n" not in message
    assert all(family in message for family in ("llama", "qwen2", "qwen3"))
    (tmp_path / "config.json").unlink()
    with pytest.raises(modeling.ModelError, match="no config.json"):
        modeling.load_model(str(tmp_path))

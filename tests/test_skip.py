"""Skip attention, multi-tap kernels and gates on tiny random llama models (psilonet.model.skip)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from psilonet.model.loading import ModelError
from psilonet.model.skip import CONFIG_FILE, WEIGHTS_FILE, SkipConfig, SkipConfigError, SkipModel
from tests.conftest import make_tiny_model

TOKENS = mx.array([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38], [2, 71, 82, 81, 82, 84, 59, 4, 52, 35]])


def close(a, b, tol=1e-5):
    return float(mx.abs(a - b).max()) < tol


def randomise(model: SkipModel, seed=1):
    """Move the skip parameters away from their initialisation (as training would)."""
    mx.random.seed(seed)
    params = [(k, mx.random.normal(v.shape) * 0.2) for k, v in tree_flatten(model.trainable_parameters())]
    model.load_weights(params, strict=False)
    return model


def test_additive_starts_exactly_at_the_base_model(tiny_model):
    base_logits = tiny_model(TOKENS)
    model = SkipModel.from_base(tiny_model, SkipConfig(distances=[2], skip_start=2, alpha=0.7, blend="additive"))
    assert close(model(TOKENS), base_logits, 1e-6)


def test_convex_alpha_zero_is_the_base_and_alpha_changes_it(tiny_model):
    base_logits = tiny_model(TOKENS)
    assert close(SkipModel.from_base(tiny_model, SkipConfig(distances=[2], alpha=0.0))(TOKENS), base_logits)
    assert not close(SkipModel.from_base(tiny_model, SkipConfig(distances=[2], alpha=0.65))(TOKENS), base_logits, 1e-3)


def test_modules_and_parameter_count_follow_the_definition(tiny_model):
    model = SkipModel.from_base(tiny_model, SkipConfig(distances=[3], skip_start=3))
    assert model.skip_layers == [3, 4, 5]  # 6 layers, l >= 3 and l - 3 >= 0
    d, kv = 64, 2 * 16
    assert model.num_trainable() == 3 * (2 * d * d + 2 * d * kv)
    model = SkipModel.from_base(tiny_model, SkipConfig(distances=[3, 4, 5], skip_start=1))
    assert model.skip_layers == [3, 4, 5]
    assert {l: list(w) for l, w in model.tap_weights().items()} == {3: [3], 4: [3, 4], 5: [3, 4, 5]}


def test_only_skip_parameters_are_trainable(tiny_model):
    model = SkipModel.from_base(tiny_model, SkipConfig(distances=[2, 3], gates=True, alpha=0.5))
    names = [k for k, _ in tree_flatten(model.trainable_parameters())]
    assert names and all(k.startswith("blocks.") for k in names)
    assert any(k.endswith("tap_logits") for k in names) and any(k.endswith("gate_logits") for k in names)


def test_tap_weights_are_a_softmax_over_available_taps(tiny_model):
    model = SkipModel.from_base(tiny_model, SkipConfig(distances=[2, 4], skip_start=2))
    model.blocks["l3"].tap_logits = mx.array([1.0, 5.0])  # distance 4 is unavailable at layer 3
    weights = model.tap_weights()
    assert weights[3] == {2: pytest.approx(1.0)}
    assert sum(weights[5].values()) == pytest.approx(1.0)


def test_gates_start_at_alpha_and_dial_scales_them(tiny_model):
    cfg = dict(distances=[2], skip_start=2, alpha=0.4)
    scalar = SkipModel.from_base(tiny_model, SkipConfig(**cfg))
    gated = SkipModel.from_base(tiny_model, SkipConfig(**cfg, gates=True))
    assert close(gated(TOKENS), scalar(TOKENS), 1e-5)
    assert all(a == pytest.approx([0.4] * 4) for a in gated.gate_alphas().values())
    gated.dial = 0.5
    assert all(a == pytest.approx([0.2] * 4) for a in gated.gate_alphas().values())
    gated.dial = 0.0  # convex with alpha 0 everywhere: the base model
    assert close(gated(TOKENS), tiny_model(TOKENS), 1e-5)


@pytest.mark.parametrize("cfg", [
    dict(distances=[2], blend="additive"),
    dict(distances=[1, 3], blend="convex", gates=True, alpha=0.5),
])
def test_cached_decode_equals_full_forward(tiny_model, cfg):
    model = randomise(SkipModel.from_base(tiny_model, SkipConfig(skip_start=2, **cfg)))
    full = model(TOKENS)
    cache = model.make_cache()
    steps = [model(TOKENS[:, :6], cache=cache)]
    for t in range(6, TOKENS.shape[1]):
        steps.append(model(TOKENS[:, t : t + 1], cache=cache))
    assert close(mx.concatenate(steps, axis=1), full, 1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    model = randomise(SkipModel.from_base(tiny_model, SkipConfig(distances=[1, 2], skip_start=1, gates=True, alpha=0.5)))

    def loss_fn(m):
        logits = m(TOKENS[:, :-1])
        return nn.losses.cross_entropy(logits, TOKENS[:, 1:]).mean()

    plain = nn.value_and_grad(model, loss_fn)(model)
    model.gradient_checkpointing = True
    ckpt = nn.value_and_grad(model, loss_fn)(model)
    assert plain[0].item() == pytest.approx(ckpt[0].item(), rel=1e-6)
    for (k, a), (_, b) in zip(tree_flatten(plain[1]), tree_flatten(ckpt[1])):
        assert close(a, b, 1e-5), k


def test_sparsity_penalties(tiny_model):
    model = SkipModel.from_base(tiny_model, SkipConfig(distances=[1, 2], skip_start=2, sparsity="entropy"))
    assert model.sparsity_penalty().item() == pytest.approx(np.log(2), rel=1e-4)
    for block in model.blocks.values():
        block.tap_logits = mx.array([30.0, 0.0])
    assert model.sparsity_penalty().item() == pytest.approx(0.0, abs=1e-5)
    model.cfg.sparsity = "l1"
    assert model.sparsity_penalty().item() == pytest.approx(0.0, abs=1e-5)
    for block in model.blocks.values():
        block.tap_logits = mx.array([0.0, 0.0])
    assert model.sparsity_penalty().item() == pytest.approx(1.0, rel=1e-4)


def test_save_and_load_round_trip(tiny_model, tmp_path):
    model = randomise(SkipModel.from_base(tiny_model, SkipConfig(distances=[1, 2], gates=True, alpha=0.3)))
    model.save(tmp_path)
    again = SkipModel.load(make_tiny_model(), tmp_path)
    assert again.cfg == model.cfg
    assert close(again(TOKENS), model(TOKENS), 1e-6)
    assert again.num_trainable() == model.num_trainable()


def test_load_refuses_weights_that_do_not_match_the_config(tiny_model, tmp_path):
    model = SkipModel.from_base(tiny_model, SkipConfig(distances=[1, 2], gates=True, alpha=0.3))
    model.save(tmp_path)
    weights = mx.load(str(tmp_path / WEIGHTS_FILE))
    del weights["blocks.l3.attn.k_proj.weight"]
    mx.save_safetensors(str(tmp_path / WEIGHTS_FILE), weights)
    with pytest.raises(ModelError, match=f"{WEIGHTS_FILE}.*missing blocks.l3.attn.k_proj.weight"):
        SkipModel.load(make_tiny_model(), tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"distances": [1], "gates": true, "alpha": 0.3}')
    with pytest.raises(ModelError, match="unexpected blocks.l3.tap_logits"):
        SkipModel.load(make_tiny_model(), tmp_path)


@pytest.mark.parametrize("cfg, option", [
    (dict(distances=[6]), "distances"),
    (dict(distances=[]), "distances"),
    (dict(alpha=1.5), "alpha"),
    (dict(blend="multiply"), "blend"),
    (dict(skip_start=9), "skip_start"),
    (dict(sparsity="l2"), "sparsity"),
])
def test_bad_configs_name_the_option(tiny_model, cfg, option):
    with pytest.raises(SkipConfigError, match=f"^{option}"):
        SkipModel.from_base(tiny_model, SkipConfig(**cfg))


@pytest.mark.integration
def test_default_model_has_27_skip_modules_and_23_9m_parameters(default_model):
    base, tokenizer = default_model
    model = SkipModel.from_base(base, SkipConfig(distances=[3], skip_start=3, blend="additive"))
    assert len(model.skip_layers) == 27
    assert round(model.num_trainable() / 1e6, 1) == 23.9
    tokens = mx.array([tokenizer.encode("The skip pathways start silent, so nothing changes at step zero.")])
    assert close(model(tokens), base(tokens), 1e-4)

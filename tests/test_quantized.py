"""4- and 8-bit base weights (psilonet.model.quantized) through the hooked forward, the compiled
decode step, doses, entropies, bio rows and skip models, on tiny random models; and the default
model's q4 path from the GGUF's own blocks (integration)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from psilonet.generation import bio
from psilonet.generation import decoding as generation
from psilonet.generation.decoding import DecodeConfig
from psilonet.generation.sampling import SamplingConfig
from psilonet.generation.perturb import Doser
from psilonet.kernels import qmm
from psilonet.model import forward, quantized
from psilonet.model import loading as modeling
from psilonet.model.skip import SkipConfig, SkipModel
from tests.conftest import make_tiny_model

PROMPT = [5, 17, 3, 42, 8, 11]


def q4_and_twin(seed=0):
    """A tiny model with q4 weights, and a float32 twin whose weights are their dequantized values
    (so the two differ only by the products' arithmetic)."""
    model = quantized.to_weights(make_tiny_model(seed), "q4")
    twin = make_tiny_model(seed)
    for path, module in model.named_modules():
        if isinstance(module, (quantized.QuantizedLinear, quantized.QuantizedEmbedding)):
            float_module = dict(twin.named_modules())[path]
            float_module.weight = mx.dequantize(module.weight, module.scales, module.biases,
                                                group_size=module.group_size, bits=module.bits)
    mx.eval(twin.parameters())
    return model, twin


def dec(model, sampling, **kw):
    """generation.decode of PROMPT with a DecodeConfig of ``sampling`` and ``kw``."""
    return generation.decode(model, PROMPT, DecodeConfig(sampling, **kw))


def greedy(model, n=10, **kw):
    return [s.tokens for s in dec(model, SamplingConfig(max_tokens=n), **kw)]


def test_every_product_is_quantized_and_frozen():
    model = quantized.to_weights(make_tiny_model(), "q4")
    kinds = {type(m).__name__ for _, m in model.named_modules()}
    assert "Linear" not in kinds and "Embedding" not in kinds
    assert "RoPE" not in kinds and "ExtensionRoPE" in kinds  # q and k rotate in one primitive
    assert "MLP" not in kinds and "ExtensionMLP" in kinds  # and gate in one
    assert "RMSNorm" not in kinds and "ExtensionRMSNorm" in kinds  # and normalise in one
    assert quantized.weights_of(model) == "q4"
    assert not any(k.endswith(("scales", "biases")) for k, _ in _flat(model.trainable_parameters()))
    assert model.model.embed_tokens.bits == 8  # the embedding (tied head) keeps 8 bits


def test_extension_mlp_is_mlx_lm_s_mlp_bit_for_bit():
    from mlx_lm.models.activations import swiglu
    model = quantized.to_weights(make_tiny_model(), "q4")
    mlp = model.model.layers[1].mlp
    x = mx.random.normal((3, 5, model.args.hidden_size)) * 4
    assert mx.array_equal(mlp(x), mlp.down_proj(swiglu(mlp.gate_proj(x), mlp.up_proj(x)))).item()
    assert {k for k, _ in _flat(mlp.parameters())} == {f"{p}.{w}" for p in ("gate_proj", "up_proj", "down_proj")
                                                      for w in ("weight", "scales", "biases")}


def test_extension_rms_norm_is_mlx_s_bit_for_bit_and_stays_frozen():
    f32 = make_tiny_model()
    f32.freeze()
    model = quantized.to_weights(f32, "q4")
    norm = model.model.layers[2].input_layernorm
    assert type(norm).__name__ == "ExtensionRMSNorm" and not _flat(norm.trainable_parameters())
    x = mx.random.normal((3, 5, model.args.hidden_size)) * 7
    assert mx.array_equal(norm(x), mx.fast.rms_norm(x, norm.weight, norm.eps)).item()


def _flat(tree):
    from mlx.utils import tree_flatten
    return tree_flatten(tree)


@pytest.mark.parametrize("mode, tol", [("float", 1e-4), ("int16", 2e-3), ("off", 1e-4)])
def test_logits_equal_the_dequantized_twin(monkeypatch, mode, tol):
    monkeypatch.setenv("PSILONET_QMM", mode)
    model, twin = q4_and_twin()
    x = mx.array([PROMPT * 3])
    a, b = forward.forward(model, x)[0], forward.forward(twin, x)[0]
    assert (mx.abs(a - b).max() / mx.abs(b).max()).item() < tol


def test_compiled_step_equals_plain_loop_on_q4():
    model, _ = q4_and_twin()
    assert greedy(model, compiled=True) == greedy(model, compiled=False)


def test_intensity_zero_gives_the_plain_q4_tokens():
    model, _ = q4_and_twin()
    layers, width = forward.num_layers(model), model.args.hidden_size
    plain = greedy(model, 12)
    dosed = greedy(model, 12, doser=Doser([0.0], [1], layers, width), seeds=[1], track=True)
    assert plain == dosed


def test_a_row_gives_the_same_tokens_alone_or_in_a_batch():
    model, _ = q4_and_twin()
    layers, width = forward.num_layers(model), model.args.hidden_size
    cfg = SamplingConfig(max_tokens=10, temperature=0.8, seed=3)
    intensities = [0.0, 0.3, 0.6]
    batch = list(dec(model, cfg, batch=3, seeds=[3, 3, 3], track=True,
                                   doser=Doser(intensities, [3, 3, 3], layers, width)))
    for r, level in enumerate(intensities):
        alone = list(dec(model, cfg, seeds=[3], track=True,
                                       doser=Doser([level], [3], layers, width)))
        assert [s.tokens[0] for s in alone] == [s.tokens[r] for s in batch]
        np.testing.assert_allclose([s.entropy[0] for s in alone], [s.entropy[r] for s in batch], rtol=1e-3, atol=1e-4)


def test_bio_rows_run_on_q4():
    model, twin = q4_and_twin()
    rows = bio.Bio([0.0, 1.0], [1.0, 0.0], forward.num_layers(model))
    steps = list(dec(model, SamplingConfig(max_tokens=6), batch=2, bio=rows, track=True))
    assert len(steps) == 6 and all(len(s.tokens) == 2 for s in steps)


def test_skip_model_keeps_float_trainable_modules_on_a_q4_base():
    base = make_tiny_model()
    skip = SkipModel.from_base(base, SkipConfig(distances=[2], skip_start=2))
    quantized.to_weights(skip, "q4")
    assert quantized.weights_of(skip) == "q4"
    trainable = _flat(skip.trainable_parameters())
    assert trainable and all(v.dtype == mx.float32 for _, v in trainable)
    assert not any(".base." in f".{k}" for k, _ in trainable)
    assert any(isinstance(m, nn.Linear) for _, m in skip.named_modules())  # the skip's own projections
    logits = forward.forward(skip, mx.array([PROMPT]))[0]
    assert logits.shape == (1, len(PROMPT), base.args.vocab_size) and bool(mx.isfinite(logits).all())
    assert len(greedy(skip, 4)) == 4


def test_q8_of_another_model_uses_mx_quantize():
    model = quantized.to_weights(make_tiny_model(model_type="qwen2"), "q8")
    q = model.model.layers[0].self_attn.q_proj
    assert q.bits == 8 and "bias" in q  # qwen2's q/k/v biases stay
    assert len(greedy(model, 4)) == 4


def test_bad_weights_are_refused_before_loading():
    with pytest.raises(modeling.ModelError, match="weights: one of f32, q4, q8"):
        quantized.load_model("/nonexistent", weights="q3")


@pytest.mark.integration
def test_default_q4_keeps_the_gguf_blocks_exactly(default_model, default_model_dir):
    """The q4 path's weights dequantize to the float32 model's weights bit for bit (no new
    rounding; q and k rows in the same RoPE order), and its paragraph loss equals float32's."""
    from psilonet.training import evaluation

    f32, tokenizer = default_model
    q4, _ = quantized.load_model(str(default_model_dir), default_model_dir.parent.parent, weights="q4")
    assert quantized.weights_of(q4) == "q4"
    fl = dict(f32.named_modules())
    for path, module in q4.named_modules():
        if isinstance(module, (quantized.QuantizedLinear, quantized.QuantizedEmbedding)):
            w = mx.dequantize(module.weight, module.scales, module.biases, group_size=32, bits=module.bits)
            assert mx.array_equal(w, fl[path].weight), path
    ids = tokenizer.encode(evaluation.REFERENCE_PARAGRAPH)
    assert abs(evaluation.mean_token_loss(q4, ids) - evaluation.mean_token_loss(f32, ids)) < 0.002

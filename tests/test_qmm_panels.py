"""The panel layout of the quantized matmul extension (``kernels.h``, ``panel_rows.inc``): its
packing and unpacking, its kernel against ``mx.quantized_matmul`` on every SIMD path, rows alone
against rows in a batch, and the q4 models that decode with it.

Tests that need the built extension skip with the reason when it is not built."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from psilonet.generation import decode_step
from psilonet.generation import decoding as generation
from psilonet.generation.decoding import DecodeConfig
from psilonet.generation.perturb import Doser
from psilonet.generation.sampling import SamplingConfig
from psilonet.kernels import qmm
from psilonet.model import forward, quantized
from tests.conftest import make_tiny_model

EXT = qmm.extension()
needs_panels = pytest.mark.skipif(getattr(EXT, "quantized_matmul_panel", None) is None,
                                  reason=f"qmm extension (panel kernel) unavailable: {qmm.describe()}")
ISAS = [isa for isa in ("avx512-vnni", "avx2-fma", "portable") if EXT is not None and EXT.set_isa(isa) == isa]
if EXT is not None:
    EXT.set_isa("avx512-vnni")  # the best the CPU has (capped)


@pytest.fixture
def restore_isa():
    yield
    EXT.set_isa("avx512-vnni")


def packed(n: int, k: int, bits: int, group: int, seed: int = 0):
    mx.random.seed(seed)
    return mx.quantize(mx.random.normal((n, k)) * 0.05, group_size=group, bits=bits)


def panel_product(x, panels):
    return EXT.quantized_matmul_panel(x, panels.w, panels.scales, panels.biases, panels.group_size, panels.bits)


def rel_err(y: mx.array, ref: mx.array) -> float:
    return (mx.abs(y - ref).max() / mx.abs(ref).max()).item()


@needs_panels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64])
def test_unpack_gives_mlx_s_layout_back_exactly(bits, group):
    w, s, b = packed(24, 192, bits, group)
    panels = qmm.pack_panels(w, s, b, bits=bits)
    assert panels.w.shape == (3, 192 * bits) and panels.scales.shape == (3, 192 // group, 8)
    for got, want in zip(panels.unpack(), (w, s, b)):
        assert got.dtype == want.dtype and mx.array_equal(got, want).item()


@needs_panels
def test_the_layout_is_the_documented_one():
    """Byte 2t+e of chunk c of block j holds, for row t of the panel, block position 4c+e in its
    low nibble and 4c+2+e in its high one (kernels.h)."""
    codes = np.random.default_rng(0).integers(0, 16, size=(8, 64), dtype=np.uint32)
    words = (codes.reshape(8, 8, 8) << (4 * np.arange(8, dtype=np.uint32))).sum(axis=-1, dtype=np.uint32)
    ones = mx.ones((8, 2))
    panels = qmm.pack_panels(mx.array(words), ones, ones, bits=4)
    raw = np.asarray(panels.w).reshape(2, 8, 16)  # [block j, chunk c, byte]
    for j, c, t, e in [(0, 0, 0, 0), (1, 3, 5, 1), (1, 7, 7, 0), (0, 2, 6, 1)]:
        byte = raw[j, c, 2 * t + e]
        assert byte & 0x0F == codes[t, 32 * j + 4 * c + e] and byte >> 4 == codes[t, 32 * j + 4 * c + 2 + e]


def test_the_layout_does_not_apply_to_every_shape():
    w, s, b = packed(12, 64, 4, 32)  # 12 output rows: not a multiple of 8
    assert qmm.pack_panels(w, s, b, bits=4) is None


@needs_panels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("n", [72, 200])  # odd numbers of panels: the two-panel passes leave one
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 13, 16, 19])
def test_panel_kernel_equals_mlx_and_every_path_the_portable_one(bits, group, n, rows, restore_isa):
    w, s, b = packed(n, 192, bits, group)
    panels = qmm.pack_panels(w, s, b, bits=bits)
    x = mx.random.normal((rows, 192))
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=group, bits=bits)
    outs = {}
    for isa in ISAS:
        EXT.set_isa(isa)
        outs[isa] = panel_product(x, panels)
        assert rel_err(outs[isa], ref) < 1e-4, isa
    for isa in ISAS:  # the integer dots are exact and the float steps in one order on every path
        assert mx.array_equal(outs[isa], outs[ISAS[-1]]).item(), isa


@needs_panels
@pytest.mark.parametrize("bits", [4, 8])
def test_a_row_is_the_same_alone_or_in_a_batch(bits):
    w, s, b = packed(4000, 576, bits, 32, seed=2)  # threaded
    panels = qmm.pack_panels(w, s, b, bits=bits)
    x = mx.random.normal((19, 576))
    batch = panel_product(x, panels)
    for r in (0, 4, 7, 8, 15, 18):
        assert mx.array_equal(panel_product(x[r : r + 1], panels)[0], batch[r]).item(), r


@needs_panels
def test_strided_inputs_compile_and_the_gradient_is_mlx_s():
    w, s, b = packed(40, 128, 4, 64)
    panels = qmm.pack_panels(w, s, b, bits=4)
    x = mx.random.normal((2, 5, 128))[:, ::2]
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=4)
    y = panel_product(x, panels)
    assert y.shape == (2, 3, 40) and rel_err(y, ref) < 1e-4
    assert mx.array_equal(mx.compile(lambda v: panel_product(v, panels))(x), y).item()
    g = mx.grad(lambda v: panel_product(v, panels).sum())(x)
    g_ref = mx.grad(lambda v: mx.quantized_matmul(v, w, s, b, transpose=True, group_size=64, bits=4).sum())(x)
    assert rel_err(g, g_ref) < 1e-5


@needs_panels
def test_bad_panel_inputs_fail_with_one_line():
    w, s, b = packed(16, 64, 4, 32)
    p = qmm.pack_panels(w, s, b, bits=4)
    with pytest.raises(ValueError, match="qmm: x has 32 columns"):
        EXT.quantized_matmul_panel(mx.ones((1, 32)), p.w, p.scales, p.biases, 32, 4)
    with pytest.raises(ValueError, match="qmm: wp must be a 2-D uint8 array"):
        EXT.quantized_matmul_panel(mx.ones((1, 64)), w, p.scales, p.biases, 32, 4)
    with pytest.raises(ValueError, match="qmm: sp and bp must be float32"):
        EXT.quantized_matmul_panel(mx.ones((1, 64)), p.w, p.scales[:, :1], p.biases, 32, 4)


@needs_panels
def test_a_q4_model_decodes_from_panels_and_other_modes_read_the_unpacked_weights(monkeypatch):
    model = quantized.to_weights(make_tiny_model(vocab_size=96), "q4")  # 96 head rows: 12 panels
    linears = [m for _, m in model.named_modules() if isinstance(m, quantized.QuantizedLinear)]
    assert linears and all(m.panels is not None for m in linears)
    assert model.model.embed_tokens.panels is not None  # the tied head's product
    x = mx.array([[5, 17, 3, 42, 8, 11]])
    int16 = forward.forward(model, x)[0]
    monkeypatch.setenv("PSILONET_QMM", "off")  # MLX's kernel on the (lazily) unpacked weights
    mlx_s = forward.forward(model, x)[0]
    assert rel_err(int16, mlx_s) < 2e-3
    odd = quantized.to_weights(make_tiny_model(), "q4")  # 97 vocabulary rows: the head keeps MLX's layout
    assert odd.model.embed_tokens.panels is None and forward.forward(odd, x)[0].shape == (1, 6, 97)


@needs_panels
def test_dosed_rows_prefill_as_one_batch_and_equal_their_runs_alone_bit_for_bit():
    model = quantized.to_weights(make_tiny_model(), "q4")
    assert decode_step.rows_round_alone(model)
    layers, width = forward.num_layers(model), model.args.hidden_size
    prompt = [5, 17, 3, 42, 8, 11]
    cfg = SamplingConfig(max_tokens=8, temperature=0.8, seed=3)
    intensities = [0.0, 0.3, 0.6]

    def run(levels):
        return list(generation.decode(model, prompt, DecodeConfig(cfg, seeds=[3] * len(levels), track=True,
                                                                  doser=Doser(levels, [3] * len(levels), layers, width))))

    batch = run(intensities)
    for r, level in enumerate(intensities):
        alone = run([level])
        assert [s.tokens[0] for s in alone] == [s.tokens[r] for s in batch]
        assert [s.entropy[0] for s in alone] == [s.entropy[r] for s in batch]
        assert [s.layer_entropy[0] for s in alone] == [s.layer_entropy[r] for s in batch]


@needs_panels
def test_the_compiled_step_attends_with_the_extension_on_q4_only():
    q4 = quantized.to_weights(make_tiny_model(), "q4")
    f32 = make_tiny_model()
    assert decode_step.rows_round_alone(q4) and not decode_step.rows_round_alone(f32)
    kv = mx.zeros((1, 2, 64, 16))
    seen = []
    original = decode_step.FixedKVCache.attention

    def spy(self, q, k, v, scale):
        out = original(self, q, k, v, scale)
        seen.append(out is not None)
        return out

    decode_step.FixedKVCache.attention = spy
    try:
        for model in (q4, f32):
            decode_step._run(model, mx.array([[5, 17]]), [(kv, kv)] * 6, mx.array(0, dtype=mx.int32), {}, None,
                             False, True)
    finally:
        decode_step.FixedKVCache.attention = original
    assert seen == [True] * 6 + [False] * 6


def test_a_module_built_before_panels_keeps_mlx_s_layout_and_graphs(monkeypatch):
    """An extension built from older sources (products only): no panels, MLX's attention and
    hidden-state entropies, and a q4 model that still decodes."""
    from psilonet.generation.entropy import hidden_entropy_bits, step_entropies

    class OldBuild:
        def quantized_matmul(self, x, w, s, b, group, bits, mode):
            return mx.quantized_matmul(x, w, s, b, transpose=True, group_size=group, bits=bits)

    monkeypatch.setattr(qmm, "extension", lambda: OldBuild())
    monkeypatch.setattr(qmm, "active", lambda: True)
    w, s, b = packed(16, 64, 4, 32)
    assert qmm.pack_panels(w, s, b, bits=4) is None
    q, k = mx.random.normal((1, 4, 1, 16)), mx.random.normal((1, 2, 8, 16))
    assert qmm.span_attention(q, k, k, mx.array(3, dtype=mx.int32), 0.25) is None
    states = [mx.random.normal((2, 3, 16)) for _ in range(4)]
    assert qmm.layer_entropies(states) is None
    got = step_entropies(mx.random.normal((2, 10)), states)["layer_entropy"]
    assert mx.array_equal(got, hidden_entropy_bits(mx.stack([s[:, -1, :] for s in states], axis=1))).item()
    model = quantized.to_weights(make_tiny_model(vocab_size=96), "q4")
    assert all(m.panels is None for _, m in model.named_modules() if isinstance(m, quantized.QuantizedLinear))
    assert forward.forward(model, mx.array([[5, 17, 3]]))[0].shape == (1, 3, 96)


@needs_panels
def test_the_mlp_runs_gate_up_and_gating_as_one_product_with_the_same_values(monkeypatch):
    from mlx_lm.models.activations import swiglu
    model = quantized.to_weights(make_tiny_model(), "q4")
    mlp = model.model.layers[1].mlp
    assert mlp.panels is not None and mlp.panels.w.shape[0] == mlp.gate_proj.panels.w.shape[0] * 2
    x = mx.random.normal((3, 5, model.args.hidden_size)) * 4
    separate = lambda v: mlp.down_proj(swiglu(mlp.gate_proj(v), mlp.up_proj(v)))  # noqa: E731
    assert mx.array_equal(mlp(x), separate(x)).item()  # both products and the gating bit for bit
    strided = mx.random.normal((5, 3, model.args.hidden_size)).transpose(1, 0, 2)
    assert mx.array_equal(mlp(strided), separate(strided)).item()
    g = mx.grad(lambda v: mlp(v).sum())(x)
    g_ref = mx.grad(lambda v: separate(v).sum())(x)
    assert rel_err(g, g_ref) < 1e-4  # the separate path's gradient reads int16 products
    monkeypatch.setenv("PSILONET_QMM", "off")  # MLX's kernel on the unpacked views
    assert rel_err(mlp(x), separate(x)) < 1e-6
    w, s, b = (getattr(mlp.gate_proj, k) for k in ("weight", "scales", "biases"))
    assert mx.array_equal(qmm.pack_panels(w, s, b, bits=4).w, mlp.panels.w[: w.shape[0] // 8]).item()

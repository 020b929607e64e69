"""The quantized matmul extension against ``mx.quantized_matmul``, and its fallback.

Tests that need the built extension skip with the reason when it is not built
(``python -m jobs.build_kernels``; ``make test`` builds it first)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from psilonet.kernels import qmm

EXT = qmm.extension()
needs_ext = pytest.mark.skipif(EXT is None, reason=f"qmm extension unavailable: {qmm.describe()}")
ISAS = [isa for isa in ("avx512-vnni", "avx2-fma", "portable")
        if EXT is not None and EXT.set_isa(isa) == isa]
if EXT is not None:
    EXT.set_isa("avx512-vnni")  # the best the CPU has (capped)


def rel_err(y: mx.array, ref: mx.array) -> float:
    return (mx.abs(y - ref).max() / mx.abs(ref).max()).item()


def packed(n: int, k: int, bits: int, group: int, seed: int = 0):
    mx.random.seed(seed)
    return mx.quantize(mx.random.normal((n, k)) * 0.05, group_size=group, bits=bits)


@pytest.fixture
def restore_isa():
    yield
    EXT.set_isa("avx512-vnni")


@needs_ext
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("rows", [1, 2, 8, 16])
def test_float_mode_equals_mlx(bits, group, rows, restore_isa):
    w, s, b = packed(77, 192, bits, group)  # an odd output size: tiles and chunks do not divide it
    x = mx.random.normal((rows, 192))
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=group, bits=bits)
    for isa in ISAS:
        EXT.set_isa(isa)
        assert rel_err(EXT.quantized_matmul(x, w, s, b, group, bits, 0), ref) < 1e-5, isa


@needs_ext
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("rows", [1, 2, 8, 16])
@pytest.mark.parametrize("mode, tol", [(1, 1e-2), (2, 1e-4)])
def test_integer_modes_within_activation_rounding(bits, group, rows, mode, tol, restore_isa):
    """Int8 (int16) activations round each x to 1/254 (1/65534) of its block's range: the
    products stay within 1% (1e-4) of the output's range, and every SIMD path gives the portable
    path's integers."""
    w, s, b = packed(77, 192, bits, group)
    x = mx.random.normal((rows, 192))
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=group, bits=bits)
    outs = {}
    for isa in ISAS:
        EXT.set_isa(isa)
        outs[isa] = EXT.quantized_matmul(x, w, s, b, group, bits, mode)
        assert rel_err(outs[isa], ref) < tol, isa
    for isa in ISAS:
        assert rel_err(outs[isa], outs[ISAS[-1]]) < 1e-5, isa


@needs_ext
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_a_row_is_the_same_alone_or_in_a_batch(bits, mode, restore_isa):
    """Bit for bit on every path, so that a dosed row's numbers never depend on the rows beside
    it (the row count picks different tiles, whose float steps must not fuse differently)."""
    w, s, b = packed(97, 128, bits, 32)
    x = mx.random.normal((11, 128))
    for isa in ISAS:
        EXT.set_isa(isa)
        batch = EXT.quantized_matmul(x, w, s, b, 32, bits, mode)
        for r in (0, 3, 10):
            assert mx.array_equal(EXT.quantized_matmul(x[r : r + 1], w, s, b, 32, bits, mode)[0], batch[r]).item(), isa


@needs_ext
def test_large_product_is_threaded_and_exact():
    # 4,000 output rows of 576 take the thread pool; more than 16 rows run in slices of 16.
    w, s, b = packed(4001, 576, 4, 32, seed=1)
    x = mx.random.normal((19, 576))
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=32, bits=4)
    assert rel_err(EXT.quantized_matmul(x, w, s, b, 32, 4, 0), ref) < 1e-5
    assert EXT.threads() >= 1


@needs_ext
def test_non_contiguous_and_batched_inputs():
    w, s, b = packed(33, 128, 4, 64)
    x = mx.random.normal((128, 3)).T  # transposed: column stride 3
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=4)
    assert rel_err(EXT.quantized_matmul(x, w, s, b, 64, 4, 0), ref) < 1e-5
    x3 = mx.random.normal((2, 5, 128))[:, ::2]  # (2, 3, 128), strided rows
    y = EXT.quantized_matmul(x3, w, s, b, 64, 4, 0)
    assert y.shape == (2, 3, 33)
    assert rel_err(y, mx.quantized_matmul(x3, w, s, b, transpose=True, group_size=64, bits=4)) < 1e-5


@needs_ext
def test_inside_compile_and_gradient_to_x():
    w, s, b = packed(40, 64, 4, 32)
    x = mx.random.normal((2, 64))
    f = mx.compile(lambda v: EXT.quantized_matmul(v, w, s, b, 32, 4, 0))
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=32, bits=4)
    assert rel_err(f(x), ref) < 1e-5
    g = mx.grad(lambda v: EXT.quantized_matmul(v, w, s, b, 32, 4, 0).sum())(x)
    g_ref = mx.grad(lambda v: mx.quantized_matmul(v, w, s, b, transpose=True, group_size=32, bits=4).sum())(x)
    assert rel_err(g, g_ref) < 1e-5


@needs_ext
def test_bad_shapes_fail_with_one_line():
    w, s, b = packed(8, 64, 4, 32)
    with pytest.raises(ValueError, match="qmm: x has 32 columns"):
        EXT.quantized_matmul(mx.ones((1, 32)), w, s, b, 32, 4, 1)
    with pytest.raises(ValueError, match="qmm: bits must be 4 or 8"):
        EXT.quantized_matmul(mx.ones((1, 64)), w, s, b, 32, 3, 1)


def test_forced_off_runs_mlx(monkeypatch):
    monkeypatch.setenv("PSILONET_QMM", "off")
    assert not qmm.active()
    assert "PSILONET_QMM=off" in qmm.describe()
    w, s, b = packed(9, 64, 4, 32)
    x = mx.random.normal((3, 64))
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=32, bits=4)
    assert mx.array_equal(qmm.quantized_matmul(x, w, s, b, group_size=32, bits=4), ref)


def test_bad_mode_is_refused(monkeypatch):
    monkeypatch.setenv("PSILONET_QMM", "fast")
    with pytest.raises(ValueError, match="PSILONET_QMM must be one of"):
        qmm.mode()


@needs_ext
def test_wrapper_uses_extension_when_on(monkeypatch):
    monkeypatch.setenv("PSILONET_QMM", "float")
    assert qmm.active() and "float32 activations" in qmm.describe()
    w, s, b = packed(9, 64, 8, 64)
    x = mx.random.normal((3, 64))
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=8)
    assert rel_err(qmm.quantized_matmul(x, w, s, b, group_size=64, bits=8), ref) < 1e-5


@needs_ext
@pytest.mark.parametrize("shape", [(1, 9, 1, 64), (2, 3, 7, 64), (3, 5, 64), (2, 2, 3, 4, 32)])
@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("half_dims", [False, True])
def test_rope_equals_mlx_bit_for_bit(shape, traditional, half_dims):
    """The extension's RoPE repeats MLX's CPU arithmetic op by op: equal, not just close, for
    scalar and per-row offsets, large positions, partial dims and a transposed input."""
    dims = shape[-1] // 2 if half_dims else shape[-1]
    for base, scale, start in ((100000.0, 1.0, 0), (10000.0, 0.5, 4095), (500000.0, 2.0, 100000)):
        for offset in (mx.array(start, dtype=mx.int32),
                       mx.array([start + 3 * b for b in range(shape[0])], dtype=mx.int32)):
            x = mx.random.normal(shape)
            ref = mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offset)
            assert mx.array_equal(EXT.rope(x, offset, dims, traditional, base, scale), ref).item()
    x = mx.random.normal((2, 5, 9, 64)).transpose(0, 2, 1, 3)  # as mlx-lm passes queries
    ref = mx.fast.rope(x, 64, traditional=False, base=1e5, scale=1.0, offset=17)
    assert mx.array_equal(qmm.rope(x, 64, traditional=False, base=1e5, scale=1.0, offset=17), ref).item()


@needs_ext
def test_rope_compiles_and_its_gradient_is_mlx_s():
    x = mx.random.normal((2, 9, 3, 64))
    offset = mx.array(11, dtype=mx.int32)
    weights = mx.arange(64).astype(mx.float32)

    def loss(fn):
        return lambda x: (fn(x) * weights).sum()

    ours = lambda x: EXT.rope(x, offset, 64, False, 1e5, 1.0)  # noqa: E731
    theirs = lambda x: mx.fast.rope(x, 64, traditional=False, base=1e5, scale=1.0, offset=offset)  # noqa: E731
    assert mx.array_equal(mx.compile(ours)(x), theirs(x)).item()
    assert mx.allclose(mx.grad(loss(ours))(x), mx.grad(loss(theirs))(x), atol=1e-6).item()


def test_rope_falls_back_to_mlx_when_off(monkeypatch):
    monkeypatch.setenv("PSILONET_QMM", "off")
    x = mx.random.normal((1, 3, 2, 16))
    ref = mx.fast.rope(x, 16, traditional=False, base=1e4, scale=1.0, offset=3)
    assert mx.array_equal(qmm.rope(x, 16, traditional=False, base=1e4, scale=1.0, offset=3), ref).item()


@needs_ext
def test_bad_rope_inputs_fail_with_one_line():
    with pytest.raises(ValueError, match="rope: x must have at least 3 axes"):
        EXT.rope(mx.zeros((4, 8)), mx.array(0, dtype=mx.int32), 8, False, 1e4, 1.0)
    with pytest.raises(ValueError, match="rope: dims must be even"):
        EXT.rope(mx.zeros((1, 2, 3, 8)), mx.array(0, dtype=mx.int32), 7, False, 1e4, 1.0)
    with pytest.raises(ValueError, match="rope: offset"):
        EXT.rope(mx.zeros((2, 2, 3, 8)), mx.array([0, 1, 2], dtype=mx.int32), 8, False, 1e4, 1.0)


def test_rope_falls_back_with_a_module_built_before_rope(monkeypatch):
    class OldBuild:  # what an extension built from older sources offers: products only
        pass

    monkeypatch.setattr(qmm, "extension", lambda: OldBuild())
    monkeypatch.setattr(qmm, "active", lambda: True)
    x = mx.random.normal((1, 3, 2, 16))
    ref = mx.fast.rope(x, 16, traditional=False, base=1e4, scale=1.0, offset=3)
    assert mx.array_equal(qmm.rope(x, 16, traditional=False, base=1e4, scale=1.0, offset=3), ref).item()


def entropy_bits_float64(logits: mx.array):
    import numpy as np
    x = np.array(logits).astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=-1) / np.log(2)


@needs_ext
@pytest.mark.parametrize("shape, scale", [((8, 49152), 3.0), ((1, 49152), 30.0), ((2, 3, 1000), 1.0),
                                          ((4, 7), 5.0), ((1, 1), 1.0)])
def test_token_entropy_kernel_against_float64(shape, scale):
    import numpy as np
    logits = mx.random.normal(shape) * scale
    got = qmm.token_entropy(logits)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(np.array(got), entropy_bits_float64(logits), atol=2e-5)
    np.testing.assert_allclose(np.array(mx.compile(qmm.token_entropy)(logits)), np.array(got))
    # a transposed (non-contiguous) input reads the same values
    t = mx.random.normal((64, 3))
    np.testing.assert_allclose(np.array(qmm.token_entropy(t.T)), entropy_bits_float64(t.T), atol=2e-5)


@needs_ext
def test_token_entropy_kernel_edge_rows():
    import math
    peaked = mx.zeros((1, 49152)) + mx.where(mx.arange(49152) == 5, 1000.0, 0.0)
    assert abs(qmm.token_entropy(peaked).item()) < 1e-6
    assert all(math.isnan(v) for v in qmm.token_entropy(mx.full((2, 10), -mx.inf)).tolist())


def test_step_entropies_use_the_kernel_where_built(monkeypatch):
    from psilonet.generation.entropy import step_entropies, token_entropy_bits
    logits, states = mx.random.normal((3, 500)) * 4, [mx.random.normal((3, 2, 16)) for _ in range(4)]
    if EXT is not None:
        assert mx.array_equal(step_entropies(logits, states)["entropy"], qmm.token_entropy(logits)).item()
    monkeypatch.setenv("PSILONET_QMM", "off")
    assert qmm.token_entropy(logits) is None
    assert mx.array_equal(step_entropies(logits, states)["entropy"], token_entropy_bits(logits)).item()


def dose_inputs(spec, intensities=(0.0, 0.3, 1.0), T=5, D=64, L=6, seed=0):
    import numpy as np
    from psilonet.generation import perturb as P
    rng = np.random.default_rng(seed)
    doser = P.Doser(list(intensities), list(range(len(intensities))), L, D, spec)
    h = mx.array(rng.standard_normal((len(intensities), T, D)).astype(np.float32) * 3)
    noise = mx.array(rng.standard_normal((L, len(intensities), T, D)).astype(np.float32))
    return doser, h, noise


def dose_graph(spec, h, noise, layer, doser):
    from psilonet.generation import perturb as P
    s = mx.array(P.layer_sensitivity(layer, doser.num_layers))
    n = noise[layer] if spec.noise else mx.zeros((1,))
    return P._compiled_apply(spec)(h, n, s, doser._i, doser._idx[:, layer], doser._coef[:, layer])


DOSE_SPECS = ["all", "noise", "phase bleed", "shuffle"]


def spec_of(names):
    from psilonet.generation import perturb as P
    return P.DoseSpec() if names == "all" else P.DoseSpec.only(*names.split())


@needs_ext
@pytest.mark.parametrize("names", DOSE_SPECS)
def test_dose_kernel_equals_the_graph_and_leaves_intensity_zero_alone(names):
    import numpy as np
    from psilonet.generation import perturb as P
    spec = spec_of(names)
    doser, h, noise = dose_inputs(spec)
    for layer in range(doser.num_layers):
        got = P.dose_block(spec, h, noise if spec.noise else None, layer, doser.num_layers, doser._i, doser._idx,
                           doser._coef)
        want = dose_graph(spec, h, noise, layer, doser)
        assert got.shape == h.shape and mx.array_equal(got[0], h[0]).item()  # intensity 0: h itself
        if spec.noise:  # the standard deviation is summed in double: within float32 rounding
            np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6, atol=2e-6)
        else:  # the same float operations in the same order
            assert mx.array_equal(got, want).item()
        if layer == doser.num_layers // 2:
            assert not mx.array_equal(got[2], h[2]).item()  # intensity 1 moved the row


@needs_ext
def test_dose_kernel_rows_alone_equal_rows_in_a_batch_and_it_compiles():
    from psilonet.generation import perturb as P
    spec = P.DoseSpec()
    doser, h, noise = dose_inputs(spec)
    run = lambda hh, nn, d, layer: qmm.dose(hh, nn, d._i, d._idx, d._coef, layer=layer,
                                            sensitivity=P.layer_sensitivity(layer, 6), noise_per_intensity=0.25)
    batch = run(h, noise, doser, 3)
    for r in range(3):
        alone = P.Doser([doser.intensities[r]], [r], 6, 64, spec)
        assert mx.array_equal(run(h[r : r + 1], noise[:, r : r + 1], alone, 3), batch[r : r + 1]).item()
    compiled = mx.compile(lambda hh, nn: run(hh, nn, doser, 3))
    assert mx.array_equal(compiled(h, noise), batch).item()
    # strided views (a transposed h, one layer's rows of a bigger noise) read the same values
    ht = mx.swapaxes(mx.swapaxes(h, 0, 1) * 1, 0, 1)
    assert mx.array_equal(run(ht, mx.concatenate([noise, noise], axis=1)[:, :3], doser, 3), batch).item()


@needs_ext
def test_bad_dose_inputs_fail_with_one_line():
    doser, h, noise = dose_inputs(spec_of("all"))
    args = dict(layer=0, sensitivity=1.0, noise_per_intensity=0.25)
    with pytest.raises(ValueError, match=r"dose: h must be float32 of shape \(B, T, D\)"):
        EXT.dose(h[0], noise, doser._i, doser._idx, doser._coef, **args)
    with pytest.raises(ValueError, match="dose: i must hold one float32 intensity per row"):
        EXT.dose(h, noise, doser._i[:2], doser._idx, doser._coef, **args)
    with pytest.raises(ValueError, match=r"dose: noise must be float32 of shape \(L, B, T, D\) with layer < L"):
        EXT.dose(h, noise[0], doser._i, doser._idx, doser._coef, **args)
    with pytest.raises(ValueError, match="dose: layer must be below coef's L"):
        EXT.dose(h, None, doser._i, doser._idx, doser._coef, **{**args, "layer": 6})
    with pytest.raises(ValueError, match="dose: give idx and coef together"):
        EXT.dose(h, noise, doser._i, doser._idx, None, **args)


def test_dose_falls_back_to_the_graph_when_off_or_built_before_it(monkeypatch):
    from psilonet.generation import perturb as P
    spec = P.DoseSpec()
    doser, h, noise = dose_inputs(spec)
    want = dose_graph(spec, h, noise, 2, doser)
    monkeypatch.setenv("PSILONET_QMM", "off")
    assert qmm.dose(h, noise, doser._i, doser._idx, doser._coef, layer=2, sensitivity=1.0,
                    noise_per_intensity=0.25) is None
    assert mx.array_equal(P.dose_block(spec, h, noise, 2, 6, doser._i, doser._idx, doser._coef), want).item()
    monkeypatch.delenv("PSILONET_QMM")

    class OldBuild:  # an extension built before the dose primitive
        pass

    monkeypatch.setattr(qmm, "extension", lambda: OldBuild())
    assert mx.array_equal(P.dose_block(spec, h, noise, 2, 6, doser._i, doser._idx, doser._coef), want).item()


def mlx_noise(keys, layers, tokens, features):
    return mx.stack([mx.random.normal((layers, tokens, features), key=keys[r]) for r in range(keys.shape[0])], axis=1)


@needs_ext
@pytest.mark.parametrize("shape", [(1, 30, 1, 576), (8, 30, 1, 576), (3, 5, 7, 13), (2, 1, 1, 1), (1, 2, 1, 3),
                                   (2, 30, 9, 576), (1, 3, 7, 65)])  # a row alone splits: even and odd
def test_dose_noise_equals_mlx_normal_bit_for_bit(shape, restore_isa):
    import numpy as np
    b, layers, tokens, features = shape
    keys = mx.array(np.random.default_rng(b * 7 + tokens).integers(0, 2**32, (b, 2), dtype=np.uint64).astype(np.uint32))
    want = mlx_noise(keys, layers, tokens, features)
    for isa in ISAS:  # the AVX2 counters and polynomials, and the portable C++
        EXT.set_isa(isa)
        got = qmm.dose_noise(keys, layers, tokens, features)
        assert got.shape == (layers, b, tokens, features) and mx.array_equal(got, want).item(), isa
    compiled = mx.compile(lambda k: qmm.dose_noise(k, layers, tokens, features))
    assert mx.array_equal(compiled(keys), want).item()
    assert mx.array_equal(qmm.dose_noise(mx.concatenate([keys, keys])[::2], layers, tokens, features),
                          mlx_noise(mx.concatenate([keys, keys])[::2], layers, tokens, features)).item()


@needs_ext
def test_bad_dose_noise_inputs_fail_with_one_line():
    with pytest.raises(ValueError, match=r"dose_noise: keys must be uint32 of shape \(B, 2\)"):
        EXT.dose_noise(mx.zeros((2, 3), dtype=mx.uint32), 2, 1, 4)
    with pytest.raises(ValueError, match="dose_noise: layers, tokens and features must be positive"):
        EXT.dose_noise(mx.zeros((2, 2), dtype=mx.uint32), 0, 1, 4)


def test_dose_noise_falls_back_to_mlx_when_off(monkeypatch):
    from psilonet.generation import perturb as P
    keys = P.noise_keys([3, 9], step=4)
    want = mlx_noise(keys, 6, 2, 16)
    assert mx.array_equal(keys[1], mx.random.key(P.noise_key(9, 4))).item()
    assert mx.array_equal(P.step_noise(keys, 6, (2, 16)), want).item()
    monkeypatch.setenv("PSILONET_QMM", "off")
    assert qmm.dose_noise(keys, 6, 2, 16) is None
    assert mx.array_equal(P.step_noise(keys, 6, (2, 16)), want).item()


def swiglu_inputs(n=4099, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n).astype(np.float32) * rng.choice([0.01, 1, 5, 40, 120], n).astype(np.float32)
    g[:12] = [0.0, -0.0, 88.0, -88.0, 88.5, -88.5, 0.5 / 1.442695, -87.9, np.inf, -np.inf, np.nan, 1e-30]
    return mx.array(g), mx.array(rng.standard_normal(n).astype(np.float32))


@needs_ext
@pytest.mark.parametrize("shape", [(4099,), (8, 1, 1536), (3, 7, 5)])
def test_swiglu_equals_mlx_bit_for_bit(shape, restore_isa):
    import math
    from mlx_lm.models.activations import swiglu as mlx_swiglu
    n = math.prod(shape)
    g, x = swiglu_inputs(n)
    g, x = g.reshape(shape), x.reshape(shape)
    want = mlx_swiglu(g, x)
    for isa in ISAS:
        EXT.set_isa(isa)
        got = qmm.swiglu(g, x)
        assert got.shape == shape and mx.array_equal(got, want, equal_nan=True).item(), isa
    assert mx.array_equal(mx.compile(qmm.swiglu)(g, x), want, equal_nan=True).item()
    if len(shape) == 3:  # a transposed (non-contiguous) gate reads the same values
        gt = mx.swapaxes(mx.swapaxes(g, 0, 2) * 1, 0, 2)
        assert mx.array_equal(qmm.swiglu(gt, x), want, equal_nan=True).item()


@needs_ext
def test_swiglu_gradient_is_mlx_s():
    from mlx_lm.models.activations import swiglu as mlx_swiglu
    g, x = mx.random.normal((3, 64)) * 3, mx.random.normal((3, 64))
    loss = lambda f: lambda a, b: (f(a, b) * mx.arange(64)).sum()
    for ours, theirs in zip(mx.grad(loss(qmm.swiglu), argnums=(0, 1))(g, x),
                            mx.grad(loss(mlx_swiglu), argnums=(0, 1))(g, x)):
        assert mx.allclose(ours, theirs, rtol=1e-5, atol=1e-5).item()


def test_swiglu_falls_back_to_mlx_when_off(monkeypatch):
    from mlx_lm.models.activations import swiglu as mlx_swiglu
    monkeypatch.setenv("PSILONET_QMM", "off")
    g, x = swiglu_inputs(100)
    assert mx.array_equal(qmm.swiglu(g, x), mlx_swiglu(g, x), equal_nan=True).item()


@needs_ext
def test_bad_swiglu_inputs_fail_with_one_line():
    g, x = swiglu_inputs(100)
    with pytest.raises(ValueError, match="swiglu: gate and x must be float32 arrays of one shape"):
        EXT.swiglu(g[:5], x[:6])


@needs_ext
def test_n_d_inputs_keep_their_shape_without_reshapes():
    w = mx.random.normal((70, 128))
    wq, s, b = mx.quantize(w, group_size=32, bits=4)
    s, b = s.astype(mx.float32), b.astype(mx.float32)
    x = mx.random.normal((3, 4, 5, 128))
    for xx in (x, x[0, 0, 0], mx.swapaxes(x, 0, 1), mx.swapaxes(x, 1, 2), x[:, 1:3],
               mx.broadcast_to(x[:1], x.shape), mx.swapaxes(mx.random.normal((3, 128, 5)), 1, 2)):
        want = mx.quantized_matmul(xx, wq, s, b, transpose=True, group_size=32, bits=4)
        got = EXT.quantized_matmul(xx, wq, s, b, 32, 4, 0)
        assert got.shape == want.shape and rel_err(got, want) < 1e-5


@needs_ext
@pytest.mark.parametrize("shape, scale", [((1, 1, 576), 1.0), ((8, 1, 576), 300.0), ((3, 7, 577), 1e-3), ((2, 1), 1.0)])
def test_rms_norm_equals_mlx_bit_for_bit(shape, scale):
    x, w = mx.random.normal(shape) * scale, mx.random.normal((shape[-1],))
    for eps in (1e-5, 1e-6):
        want = mx.fast.rms_norm(x, w, eps)
        assert mx.array_equal(qmm.rms_norm(x, w, eps), want).item()
        assert mx.array_equal(mx.compile(lambda a, b: qmm.rms_norm(a, b, eps))(x, w), want).item()
    if len(shape) == 3:  # strided x
        xt = mx.swapaxes(mx.swapaxes(x, 0, 1) * 1, 0, 1)
        assert mx.array_equal(qmm.rms_norm(xt, w, 1e-5), mx.fast.rms_norm(x, w, 1e-5)).item()


@needs_ext
def test_rms_norm_gradient_is_mlx_s_and_bad_inputs_fail():
    x, w = mx.random.normal((3, 64)), mx.random.normal((64,))
    loss = lambda f: lambda a, b: (f(a, b, 1e-5) * mx.arange(64)).sum()
    for ours, theirs in zip(mx.grad(loss(qmm.rms_norm), argnums=(0, 1))(x, w),
                            mx.grad(loss(mx.fast.rms_norm), argnums=(0, 1))(x, w)):
        assert mx.allclose(ours, theirs, rtol=1e-5, atol=1e-6).item()
    with pytest.raises(ValueError, match=r"rms_norm: x must be float32 \(..., D\) and w float32 \(D,\)"):
        EXT.rms_norm(x, w[:5], 1e-5)


def test_rms_norm_falls_back_to_mlx_when_off(monkeypatch):
    monkeypatch.setenv("PSILONET_QMM", "off")
    x, w = mx.random.normal((3, 64)), mx.random.normal((64,))
    assert mx.array_equal(qmm.rms_norm(x, w, 1e-5), mx.fast.rms_norm(x, w, 1e-5)).item()


def cache_attention_reference(q, k, v, offset: int, scale: float):
    """MLX's fused attention under the fixed cache's mask (slot j visible to query i iff j <= offset + i)."""
    t, s = q.shape[2], k.shape[2]
    mask = mx.arange(s)[None, :] <= (offset + mx.arange(t)[:, None])
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


@needs_ext
@pytest.mark.parametrize("b, h, kv, t, s, d, offset", [
    (1, 9, 3, 1, 64, 64, 13),   # one decode row of the default model
    (8, 9, 3, 1, 128, 64, 77),  # eight rows, a longer span
    (2, 4, 2, 6, 64, 16, 0),    # a prompt from the start
    (3, 8, 8, 13, 64, 64, 20),  # several queries, no grouping
    (1, 4, 1, 1, 7, 8, 6),      # a span that is not a multiple of 8
])
def test_span_attention_equals_mlx_under_the_cache_mask(b, h, kv, t, s, d, offset):
    mx.random.seed(0)
    q = mx.random.normal((b, t, h, d)).transpose(0, 2, 1, 3)  # heads split as the model does
    keys, values = mx.random.normal((b, kv, 256, d)), mx.random.normal((b, kv, 256, d))
    k, v = keys[:, :, :s], values[:, :, :s]  # the span of a larger buffer, as the cache hands it
    out = EXT.span_attention(q, k, v, mx.array(offset, dtype=mx.int32), d ** -0.5)
    ref = cache_attention_reference(q, k, v, offset, d ** -0.5)
    assert out.shape == ref.shape and mx.abs(out - ref).max().item() < 2e-6
    full = out
    for r in range(b):  # a row alone gives its values in the batch bit for bit
        alone = EXT.span_attention(q[r : r + 1], k[r : r + 1], v[r : r + 1], mx.array(offset, dtype=mx.int32), d ** -0.5)
        assert mx.array_equal(alone[0], full[r]).item()


@needs_ext
def test_span_attention_compiles_and_bad_inputs_fail_with_one_line():
    q, k = mx.random.normal((1, 4, 1, 16)), mx.random.normal((1, 2, 8, 16))
    off = mx.array(5, dtype=mx.int32)
    f = mx.compile(lambda a, b, c, o: EXT.span_attention(a, b, c, o, 0.25))
    assert mx.array_equal(f(q, k, k, off), EXT.span_attention(q, k, k, off, 0.25)).item()
    with pytest.raises(ValueError, match="span_attention: q's heads must be a multiple of k's"):
        EXT.span_attention(mx.ones((1, 3, 1, 16)), k, k, off, 0.25)
    with pytest.raises(ValueError, match="span_attention: the head size must be a multiple of 8"):
        EXT.span_attention(mx.ones((1, 4, 1, 12)), mx.ones((1, 2, 8, 12)), mx.ones((1, 2, 8, 12)), off, 0.25)
    with pytest.raises(ValueError, match="span_attention: offset must be one int32"):
        EXT.span_attention(q, k, k, mx.array([1, 2], dtype=mx.int32), 0.25)


def test_span_attention_is_mlx_s_where_the_extension_is_off(monkeypatch):
    monkeypatch.setenv("PSILONET_QMM", "off")
    q, k = mx.random.normal((1, 4, 1, 16)), mx.random.normal((1, 2, 8, 16))
    assert qmm.span_attention(q, k, k, mx.array(3, dtype=mx.int32), 0.25) is None


@needs_ext
def test_layer_entropies_against_float64_and_the_graph():
    import numpy as np
    from psilonet.generation.entropy import hidden_entropy_bits
    mx.random.seed(0)
    states = [mx.random.normal((3, 5, 576)) * (1 + 10 * (i == 2)) for i in range(31)]
    states[3] = mx.zeros((3, 5, 576))  # no energy: 0 bits
    states[4] = mx.zeros((3, 5, 576)).at[:, :, 7].add(3.0)  # all of it in one feature: 0 bits
    states[5] = mx.random.normal((3, 576, 5)).transpose(0, 2, 1)  # a strided feature axis
    out = EXT.layer_entropies(states)
    assert out.shape == (3, 31)
    ref = []
    for s in states:
        h = np.array(s[:, -1, :]).astype(np.float64)
        p = h ** 2 / np.maximum((h ** 2).sum(-1, keepdims=True), 1e-30)
        ref.append(-(p * np.log2(np.maximum(p, 1e-30))).sum(-1))
    ref = np.stack(ref, 1)
    assert np.abs(np.array(out) - ref).max() < 5e-6  # the float32 graph: about 1e-5
    graph = hidden_entropy_bits(mx.stack([s[:, -1, :] for s in states], axis=1))
    assert np.abs(np.array(out) - np.array(graph)).max() < 2e-5
    assert (np.array(out)[:, 3:5] == 0).all() and not np.signbit(np.array(out)[:, 3:5]).any()
    odd = EXT.layer_entropies([mx.random.normal((2, 1, 37))])  # a width that is not a multiple of 8
    h = np.array(odd)
    assert h.shape == (2, 1) and (0 < h).all() and (h <= np.log2(37)).all()


def test_layer_entropies_fall_back_to_the_graph_when_off(monkeypatch):
    from psilonet.generation.entropy import hidden_entropy_bits, step_entropies
    monkeypatch.setenv("PSILONET_QMM", "off")
    states = [mx.random.normal((2, 3, 16)) for _ in range(4)]
    assert qmm.layer_entropies(states) is None
    got = step_entropies(mx.random.normal((2, 10)), states)["layer_entropy"]
    assert mx.array_equal(got, hidden_entropy_bits(mx.stack([s[:, -1, :] for s in states], axis=1))).item()

"""Doses and entropies on a tiny random model (psilonet.generation.perturb)."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from psilonet.generation import decoding as generation, entropy
from psilonet.generation.decoding import SamplingConfig
from psilonet.generation.perturb import (BLEED_PER_INTENSITY, MECHANISMS, PHASE_PER_INTENSITY, SHUFFLE_PER_INTENSITY,
                                         SHUFFLE_SHIFT, DoseSpec, Doser, layer_sensitivity)
from psilonet.model import forward

PROMPT = [5, 17, 3, 42, 8, 11]


def rows(model, cfg, **kw):
    out = None
    for step in generation.decode(model, PROMPT, generation.DecodeConfig(cfg, **kw)):
        out = out or [[] for _ in step.tokens]
        for r, t in enumerate(step.tokens):
            out[r].append(t)
    return out


def doser_for(model, intensities, seeds=None, spec=DoseSpec()):
    seeds = seeds or [7] * len(intensities)
    return Doser(list(intensities), seeds, forward.num_layers(model), model.args.hidden_size, spec)


def test_sensitivity_peaks_in_the_middle():
    s = [layer_sensitivity(l, 30) for l in range(30)]
    assert max(s) == pytest.approx(1.0, abs=0.01) and s.index(max(s)) in (14, 15)
    assert s[0] == pytest.approx(math.exp(-0.25 / 0.08))


def test_intensity_zero_is_bit_exact(tiny_model):
    x = mx.random.normal((2, 5, 64))
    doser = doser_for(tiny_model, [0.0, 0.0])
    doser.sober = False  # force the arithmetic path: zero intensity must still change nothing
    for layer in range(6):
        assert mx.array_equal(doser(layer, x), x)
    cfg = SamplingConfig(max_tokens=8)
    assert rows(tiny_model, cfg, doser=doser_for(tiny_model, [0.0]))[0] == rows(tiny_model, cfg)[0]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_each_mechanism_grows_with_intensity_and_peaks_mid_depth(mechanism):
    # Wide states so that the shuffle's fraction of features is never rounded away mid-depth.
    x = mx.random.normal((3, 5, 2048), key=mx.random.key(3))
    doser = Doser([0.1, 0.3, 0.9], [7, 7, 7], 30, 2048, DoseSpec.only(mechanism))
    per_layer = []
    for layer in range(30):
        change = mx.abs(doser(layer, x) - x).mean(axis=(1, 2)).tolist()
        assert change[0] <= change[1] <= change[2], (layer, change)
        if 10 <= layer <= 20:
            assert 0 < change[0] < change[1] < change[2], (layer, change)
        per_layer.append(change[2])
    assert 12 <= np.argmax(per_layer) <= 17, per_layer
    assert per_layer[0] < per_layer[14] / 5 and per_layer[-1] < per_layer[14] / 5


def mechanisms_one_by_one(h, layer, num_layers, intensity, angles, ranks, spec):
    """The documented definitions applied in order, in float64 numpy (no noise)."""
    s = layer_sensitivity(layer, num_layers)
    if spec.phase:
        w = PHASE_PER_INTENSITY * s * intensity
        a, b = h[..., 0::2], h[..., 1::2]
        rotated = np.stack([a * np.cos(angles) - b * np.sin(angles), a * np.sin(angles) + b * np.cos(angles)], -1)
        h = (1 - w) * h + w * rotated.reshape(h.shape)
    if spec.shuffle:
        chosen = ranks < SHUFFLE_PER_INTENSITY * s * intensity
        h = np.where(chosen, np.roll(h, -SHUFFLE_SHIFT, axis=-1), h)
    if spec.bleed:
        f = BLEED_PER_INTENSITY * s * intensity
        h = (h + f * np.roll(h, 1, axis=-1) + f * np.roll(h, -1, axis=-1)) / (1 + 2 * f)
    return h


@pytest.mark.parametrize("names", [("phase",), ("shuffle",), ("bleed",), ("phase", "shuffle", "bleed")])
def test_precomputed_feature_map_equals_the_mechanisms_applied_in_order(names):
    spec = DoseSpec.only(*names)
    intensities, seeds, hidden = [0.2, 0.9], [4, 11], 256
    doser = Doser(intensities, seeds, 12, hidden, spec)
    x = np.array(mx.random.normal((2, 3, hidden), key=mx.random.key(5)), dtype=np.float64)
    for layer in (0, 5, 6, 11):
        got = np.array(doser.at_step(0)(layer, mx.array(x.astype(np.float32))))
        for r, (i, seed) in enumerate(zip(intensities, seeds)):
            k_angle, k_rank = mx.random.split(mx.random.key(seed))
            angles = np.array(mx.random.uniform(-math.pi, math.pi, (hidden // 2,), key=k_angle))
            ranks = np.array(mx.random.uniform(shape=(hidden,), key=k_rank))
            want = mechanisms_one_by_one(x[r], layer, 12, i, angles, ranks, spec)
            if layer in (5, 6):  # mid-depth: every mechanism changes something
                assert np.abs(want - x[r]).max() > 1e-3
            np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-5)


def test_same_seed_same_text_and_batch_equals_one_by_one(tiny_model):
    cfg = SamplingConfig(temperature=0.9, max_tokens=10, seed=3)
    intensities = [0.0, 0.1, 0.3, 0.8]
    batched = rows(tiny_model, cfg, doser=doser_for(tiny_model, intensities, [3] * 4), seeds=[3] * 4)
    assert batched == rows(tiny_model, cfg, doser=doser_for(tiny_model, intensities, [3] * 4), seeds=[3] * 4)
    for r, i in enumerate(intensities):
        alone = rows(tiny_model, cfg, doser=doser_for(tiny_model, [i], [3]), seeds=[3])[0]
        assert batched[r] == alone, (i, batched[r], alone)
    assert batched[0] != batched[3]  # a strong dose changes the text


def test_entropies_are_in_range(tiny_model):
    steps = list(generation.decode(tiny_model, PROMPT, generation.DecodeConfig(
        SamplingConfig(max_tokens=5), track=True, doser=doser_for(tiny_model, [0.0, 0.3]))))
    for step in steps:
        assert all(0 <= e <= math.log2(97) + 1e-6 for e in step.entropy)
        for per_layer in step.layer_entropy:
            assert len(per_layer) == 7
            assert all(0 <= e <= math.log2(64) + 1e-6 for e in per_layer)


def test_entropy_formulas():
    uniform = mx.zeros((1, 8))
    assert entropy.token_entropy_bits(uniform).item() == pytest.approx(3.0)
    assert entropy.hidden_entropy_bits(mx.ones((1, 16))).item() == pytest.approx(4.0)
    assert entropy.hidden_entropy_bits(mx.array([[0.0, 5.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_bad_intensities_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="intensities"):
        doser_for(tiny_model, [1.5])

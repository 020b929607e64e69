"""Entropic "doses": perturbations of block outputs during generation.

At intensity ``i`` in [0, 1] (presets: sober 0.0, micro-dose 0.1, dose 0.2, double dose 0.3),
with ``s(l) = exp(-((l/(L-1) - 0.5)^2 / 0.08))`` the layer sensitivity that peaks in the middle
layers and scales every effect, block ``l``'s output ``h`` (B, T, D) becomes, in this order:

* **noise**: ``h + N(0, 1) * noise_scale * s(l) * std(h)``, ``noise_scale = 0.25 i``; ``std``
  over the hidden dimensions of each token.
* **phase rotation**: consecutive dimension pairs ``(h[2k], h[2k+1])`` are rotated by a fixed
  seeded angle per pair (uniform in [-pi, pi]) and blended with the original with weight
  ``phase_rotation * s(l)``, ``phase_rotation = 0.1 i``.
* **dimension shuffle**: a seeded fraction ``dimension_shuffle * s(l)`` of the features
  (``dimension_shuffle = 0.08 i``) takes the values of the features ``SHUFFLE_SHIFT`` places
  further on (a roll of the hidden axis); the others keep their own.
* **cross-dimension bleed**: ``(x + f x_left + f x_right) / (1 + 2f)`` with ``x_left``/``x_right``
  the neighbouring features, ``f = bleed * s(l)``, ``bleed = 0.1 i`` (our choice: the original
  research gives no preset for it).

Each mechanism can be switched off. Every row of a batch has its own intensity; the random
numbers depend only on the row's seed, the layer and the decode step, so the same dose gives
the same output alone or inside a batch, and intensity 0 leaves ``h`` bit-for-bit unchanged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import mlx.core as mx

from psilonet.generation.decode_step import RowHook
from psilonet.kernels import qmm

PRESETS = {"sober": 0.0, "micro-dose": 0.1, "dose": 0.2, "double dose": 0.3}
MECHANISMS = ("noise", "phase", "shuffle", "bleed")
NOISE_PER_INTENSITY = 0.25
PHASE_PER_INTENSITY = 0.1
SHUFFLE_PER_INTENSITY = 0.08
BLEED_PER_INTENSITY = 0.1
SHUFFLE_SHIFT = 7


def noise_key(seed: int, step: int) -> int:
    """The key (``mx.random.key(n)``) of a row's dose noise at a decode step: it depends on the
    row's seed and the step only, never on the row's place in the batch."""
    return (seed * 1_000_003 + step) % (2**63)


def noise_keys(seeds, step: int) -> mx.array:
    """(B, 2) uint32: each row's ``mx.random.key(noise_key(seed, step))`` (its two 32-bit words)."""
    n = [noise_key(seed, step) for seed in seeds]
    return mx.array(np.array([[v >> 32, v & 0xFFFFFFFF] for v in n], dtype=np.uint32))


def step_noise(keys: mx.array, num_layers: int, shape) -> mx.array:
    """A step's dose noise for every layer, (L, B, T, D) with ``shape`` = (T, D): row ``r`` is
    ``mx.random.normal((L, T, D), key=keys[r])``, from the extension's one primitive where it is
    built (``noise.h``: the same values bit for bit, about four times faster), else from MLX."""
    fast = qmm.dose_noise(keys, num_layers, *shape)
    if fast is not None:
        return fast
    return mx.stack([mx.random.normal((num_layers, *shape), key=keys[r]) for r in range(keys.shape[0])], axis=1)


def layer_sensitivity(layer: int, num_layers: int) -> float:
    """``exp(-((l/(L-1) - 0.5)^2 / 0.08))``: 1 in the middle layers, ~0.04 at the ends."""
    x = layer / max(num_layers - 1, 1)
    return math.exp(-((x - 0.5) ** 2) / 0.08)


@dataclass(frozen=True)
class DoseSpec:
    """Which mechanisms are on (intensities and seeds are per row, see :class:`Doser`)."""

    noise: bool = True
    phase: bool = True
    shuffle: bool = True
    bleed: bool = True

    @classmethod
    def only(cls, *names: str) -> "DoseSpec":
        unknown = set(names) - set(MECHANISMS)
        if unknown:
            raise ValueError(f"mechanisms: unknown {sorted(unknown)}; use {', '.join(MECHANISMS)}")
        return cls(**{m: m in names for m in MECHANISMS})

    def enabled(self) -> list[str]:
        return [m for m in MECHANISMS if getattr(self, m)]


def check_intensity(value: float) -> float:
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"intensities: each must be in [0, 1], got {value}")
    return float(value)


@dataclass
class Doser:
    """Applies per-row doses to block outputs; call :meth:`at_step` once per forward pass.

    Phase rotation, shuffle and bleed are, for a given row and layer, one fixed linear map of the
    features in which every output feature reads at most six inputs: with ``m`` running over
    the shuffled sources of the feature and its two neighbours, the rotated pair of each. The
    map is therefore precomputed per row and layer as six source indices and six coefficients
    per feature (numpy, at construction), and a layer applies it as one gather and one weighted
    sum, instead of some twenty small ops (on the CPU the per-op cost, not the arithmetic, is
    what a dose costs); where the extension is built, a block's whole dose is one primitive
    (:func:`dose_block`). The result is the composition in the order above up to float rounding
    (``tests/test_perturb.py`` checks it against the mechanisms applied one after another); at
    intensity 0 the map is the identity with coefficient exactly 1, so ``h`` is unchanged.
    """

    intensities: list[float]
    seeds: list[int]
    num_layers: int
    hidden: int
    spec: DoseSpec = field(default_factory=DoseSpec)

    def __post_init__(self):
        if len(self.intensities) != len(self.seeds):
            raise ValueError("one seed per intensity row is needed")
        for i in self.intensities:
            check_intensity(i)
        self.step = 0
        self._i = mx.array(self.intensities, dtype=mx.float32)[:, None, None]  # (B, 1, 1)
        # Fixed per seed for the whole generation: pair angles and which features roll.
        angles, ranks = [], []
        for seed in self.seeds:
            k_angle, k_rank = mx.random.split(mx.random.key(seed))
            angles.append(mx.random.uniform(-math.pi, math.pi, (self.hidden // 2,), key=k_angle))
            ranks.append(mx.random.uniform(shape=(self.hidden,), key=k_rank))
        idx, coef = feature_map(self.spec, np.array(self.intensities, dtype=np.float64),
                                np.array(mx.stack(angles)), np.array(mx.stack(ranks)), self.num_layers)
        self._idx = mx.array(idx)[:, :, None, :]  # (B, L, 1, D*K) source features
        self._coef = mx.array(coef)[:, :, None]  # (B, L, 1, D, K) their weights
        self.sober = all(i == 0 for i in self.intensities) or not self.spec.enabled()
        self._step_noise = None

    def at_step(self, step: int) -> "Doser":
        self.step = step
        self._step_noise = None
        return self

    def _noise(self, shape) -> mx.array:
        """This step's noise for every layer, (L, B, T, D)."""
        # Drawn once per step for all layers (one call per row, not per row and layer); it
        # depends on (seed, step) only, never on the row's place in the batch.
        if self._step_noise is None or self._step_noise.shape[2:] != tuple(shape[1:]):
            self._step_noise = step_noise(noise_keys(self.seeds, self.step), self.num_layers, shape[1:])
        return self._step_noise

    def hook(self):
        """This dose as a :class:`~psilonet.generation.decode_step.RowHook` for the compiled decode step:
        the constants and the per-step noise keys travel as per-row inputs, so one traced graph
        serves every dose with the same mechanisms and depth, with the same random numbers as
        :meth:`__call__`."""
        spec, num_layers = self.spec, self.num_layers
        seeds = list(self.seeds)
        scratch: dict = {}  # the step's noise for all layers, drawn at layer 0 while tracing

        def step_inputs(step: int) -> dict:
            return {"dose_noise_key": noise_keys(seeds, step)}

        def after_block(layer: int, h: mx.array, rows: dict):
            if spec.noise and layer == 0:
                scratch["noise"] = step_noise(rows["dose_noise_key"], num_layers, h.shape[1:])
            noise = scratch["noise"] if spec.noise else None
            return dose_block(spec, h, noise, layer, num_layers, rows["dose_i"], rows["dose_idx"], rows["dose_coef"]), {}

        rows = {"dose_i": self._i, "dose_idx": self._idx, "dose_coef": self._coef}
        return RowHook(("dose", spec, num_layers), rows, after_block, step_inputs)

    def __call__(self, layer: int, h: mx.array) -> mx.array:
        if self.sober:
            return h
        noise = self._noise(h.shape) if self.spec.noise else None
        return dose_block(self.spec, h, noise, layer, self.num_layers, self._i, self._idx, self._coef)


def dose_block(spec: DoseSpec, h: mx.array, noise: mx.array | None, layer: int, num_layers: int,
               i: mx.array, idx: mx.array, coef: mx.array) -> mx.array:
    """Block ``layer``'s output ``h`` (B, T, D) dosed: ``noise`` (L, B, T, D) is the step's noise
    of every layer (None with the noise off), ``i`` (B, 1, 1) the rows' intensities, ``idx``
    (B, L, 1, D*K) and ``coef`` (B, L, 1, D, K) the feature maps of :func:`feature_map`.

    One primitive of the extension where it is built (``dose.h``: the same arithmetic, the
    standard deviation summed in double), else the compiled graph of :func:`_make_apply`."""
    linear = spec.phase or spec.shuffle or spec.bleed
    s = layer_sensitivity(layer, num_layers)
    fast = qmm.dose(h, noise, i, idx if linear else None, coef if linear else None, layer=layer,
                    sensitivity=s, noise_per_intensity=NOISE_PER_INTENSITY)
    if fast is not None:
        return fast
    noise = noise[layer] if noise is not None else mx.zeros((1,), dtype=h.dtype)
    return _compiled_apply(spec)(h, noise, mx.array(s, dtype=h.dtype), i, idx[:, layer], coef[:, layer])


@functools.lru_cache(maxsize=None)
def _compiled_apply(spec: DoseSpec):
    """A layer's dose as one compiled function (the noise's variance and fused arithmetic, then
    one gather and one weighted sum); cached per mechanism set so every Doser reuses it."""
    return mx.compile(_make_apply(spec))


def _make_apply(spec: DoseSpec):
    linear = spec.phase or spec.shuffle or spec.bleed

    def apply(h, noise, s, i, idx, coef):
        if spec.noise:
            std = mx.sqrt(mx.var(h, axis=-1, keepdims=True))
            h = h + noise * (NOISE_PER_INTENSITY * s) * i * std
        if linear:
            b, t, d = h.shape
            sources = mx.take_along_axis(h, mx.broadcast_to(idx, (b, t, idx.shape[-1])), axis=-1)
            h = (sources.reshape(b, t, d, -1) * coef).sum(axis=-1)
        return h

    return apply


def feature_map(spec: DoseSpec, intensities: np.ndarray, angles: np.ndarray, ranks: np.ndarray,
                num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase rotation, then shuffle, then bleed, as source indices and weights per feature.

    ``intensities`` (B,), ``angles`` (B, D/2), ``ranks`` (B, D). Returns ``idx`` (B, L, D*K)
    int32 and ``coef`` (B, L, D, K) float32 with ``out[d] = sum_k coef[d, k] * h[idx[d, k]]``;
    ``K = (2 if phase) * (3 if bleed)`` terms, the feature's own (shuffled) source first.
    """
    b, d = ranks.shape
    feats = np.arange(d)
    partner = feats ^ 1  # the other feature of the rotated pair (2k, 2k+1)
    cos = np.repeat(np.cos(angles), 2, axis=1)  # (B, D)
    sin = np.repeat(np.sin(angles), 2, axis=1) * np.where(feats % 2 == 0, -1.0, 1.0)
    sens = np.array([layer_sensitivity(l, num_layers) for l in range(num_layers)])
    amount = sens[None, :, None] * intensities[:, None, None]  # (B, L, 1): s(l) * i
    zero = np.zeros_like(amount)
    w = PHASE_PER_INTENSITY * amount if spec.phase else zero
    f = BLEED_PER_INTENSITY * amount if spec.bleed else zero
    rolled = ranks[:, None, :] < SHUFFLE_PER_INTENSITY * amount  # (B, L, D)
    # phase: rot[j] = a[j] h[j] + c[j] h[partner j]; shuffle: shuf[i] = rot[src[i]]
    a = (1 - w) + w * cos[:, None, :]
    c = w * sin[:, None, :]
    src = np.where(rolled, (feats + SHUFFLE_SHIFT) % d, feats) if spec.shuffle else np.broadcast_to(feats, rolled.shape)
    # bleed: out[i] = (shuf[i] + f shuf[i-1] + f shuf[i+1]) / (1 + 2f)
    taps = [(feats, 1 / (1 + 2 * f))] + ([((feats - 1) % d, f / (1 + 2 * f)), ((feats + 1) % d, f / (1 + 2 * f))]
                                         if spec.bleed else [])
    idx, coef = [], []
    for where, weight in taps:
        m = np.take_along_axis(src, np.broadcast_to(where, src.shape), axis=2)  # (B, L, D)
        gather = lambda x: np.take_along_axis(np.broadcast_to(x, m.shape), m, axis=2)
        idx.append(m)
        coef.append(weight * gather(a))
        if spec.phase:
            idx.append(partner[m])
            coef.append(weight * gather(c))
    idx = np.stack(idx, axis=-1).astype(np.int32)  # (B, L, D, K)
    coef = np.stack(coef, axis=-1).astype(np.float32)
    return idx.reshape(b, num_layers, -1), coef

"""``x @ W.T`` on the CPU with ``W`` in MLX's affine quantized layout: the extension, or MLX.

The extension (this folder: ``CMakeLists.txt``, ``qmm.cpp``, ``kernels*.cpp``) is an MLX
``Primitive`` whose ``eval_cpu`` queues the product on the CPU stream's encoder. It reads the
packed codes directly (4- or 8-bit, groups of 32, 64 or 128; ``w = scale * q + bias`` per group)
and never builds the float32 matrix; output rows are shared among threads
(``PSILONET_QMM_THREADS``, default one per core), and the SIMD path (AVX-512 VNNI, AVX2 + FMA
or portable C++) is chosen at run time from the CPU's flags.

Arithmetic modes, chosen by ``PSILONET_QMM``:

* ``int16`` (the default): each activation row is quantized to int16 in blocks of 32 (one float
  scale per block, round to nearest), the codes are widened to int16 and multiplied in integer
  SIMD (``vpdpwssd``, or ``madd``). Its rounding is 1/258 of int8's: on the default model the
  paragraph loss moves by under 1e-4 nats (README, "4-bit decode").
* ``int8`` (llama.cpp's scheme): int8 activations and ``vpdpbusd`` (or ``maddubs``/``madd``);
  the cheapest products, but they move the paragraph loss by about 0.01 nats.
* ``float``: the activations stay float32; equal to ``mx.quantized_matmul`` up to summation
  order (relative 1e-5 in the tests).
* ``off``: always ``mx.quantized_matmul`` (MLX's own kernel).

The extension also holds a one-primitive RoPE (:func:`rope`, ``rope.h``: MLX's CPU path of
``mx.fast.rope`` is a dozen ops per call, and a decode step makes two calls per block), the
next-token entropy of a tracked step (:func:`token_entropy`, ``entropy.h``), a block's dose
(:func:`dose`, ``dose.h``), a step's dose noise (:func:`dose_noise`, ``noise.h``), the MLP's
gating (:func:`swiglu`, ``swiglu.h``) and RMS norm (:func:`rms_norm`, ``rmsnorm.h``).

Without the built extension (``python -m jobs.build_kernels``; ``make setup`` runs it), on a CPU
without AVX2 and FMA, on macOS (Metal has fast quantized kernels) or on a GPU device, every call
goes to ``mx.quantized_matmul``. :func:`describe` says which path runs in one line.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

BUILD_DIR = Path(__file__).resolve().parent / "build"
MODES = ("int16", "int8", "float", "off")
_KERNEL_MODE = {"float": 0, "int8": 1, "int16": 2}  # kernels.h's Mode
_ACTIVATIONS = {"float": "float32", "int8": "int8", "int16": "int16"}


def mode() -> str:
    value = os.environ.get("PSILONET_QMM", "int16").strip().lower() or "int16"
    if value not in MODES:
        raise ValueError(f"PSILONET_QMM must be one of {', '.join(MODES)}; got {value!r}")
    return value


def built_module_path() -> Path | None:
    found = sorted(BUILD_DIR.glob("_qmm*.so")) + sorted(BUILD_DIR.glob("_qmm*.pyd"))
    return found[0] if found else None


@lru_cache(maxsize=1)
def _load():
    """``(module, None)`` or ``(None, why not)``; loaded once per process."""
    if platform.system() == "Darwin":
        return None, "macOS: MLX's Metal kernels are used"
    path = built_module_path()
    if path is None:
        return None, "extension not built (python -m jobs.build_kernels)"
    try:
        spec = importlib.util.spec_from_file_location("psilonet.kernels.qmm._qmm", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # a stale build against another mlx, a missing symbol
        return None, f"extension at {path} does not load ({type(exc).__name__}: {exc}); rebuild it"
    if module.detected_isa() == "portable":
        return None, "this CPU lacks AVX2/FMA"
    return module, None


def extension():
    """The loaded extension module, or None (see :func:`describe` for why)."""
    return _load()[0]


def active() -> bool:
    """Whether products go to the extension now (built, allowed, and on the CPU device)."""
    return mode() != "off" and extension() is not None and mx.default_device() == mx.cpu


def describe() -> str:
    """One line: which quantized matmul runs and why."""
    module, why = _load()
    if mode() == "off":
        return "quantized matmul: mx.quantized_matmul (PSILONET_QMM=off)"
    if module is None:
        return f"quantized matmul: mx.quantized_matmul ({why})"
    if mx.default_device() != mx.cpu:
        return "quantized matmul: mx.quantized_matmul (the default device is a GPU)"
    return (f"quantized matmul: psilonet extension ({module.isa()}, {module.threads()} threads, "
            f"{_ACTIVATIONS[mode()]} activations)")


_announced = False


def announce(stream=None) -> None:
    """Print :func:`describe` once per process (jobs call it when they load quantized weights)."""
    global _announced
    if not _announced:
        print(describe(), file=stream or sys.stderr, flush=True)
        _announced = True


def quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, *,
                     group_size: int, bits: int, panels: "Panels | None" = None) -> mx.array:
    """``x @ dequantize(w, scales, biases).T`` on whichever path :func:`describe` names.

    The extension takes float32 scales and biases (cast once at load by the caller: see
    :mod:`psilonet.model.quantized`); MLX's kernel wants them in x's dtype. With ``panels``
    (:func:`pack_panels` of the same weights) the int16 mode reads the panel layout instead.
    """
    if active() and bits in (4, 8) and group_size % 32 == 0:
        kernel = getattr(extension(), "quantized_matmul_panel", None)
        if panels is not None and kernel is not None and mode() == "int16" and x.dtype == mx.float32:
            return kernel(x, panels.w, panels.scales, panels.biases, group_size, bits)
        return extension().quantized_matmul(x, w, scales, biases, group_size, bits, _KERNEL_MODE[mode()])
    return mx.quantized_matmul(x, w, scales.astype(x.dtype), biases.astype(x.dtype), transpose=True,
                               group_size=group_size, bits=bits)


class Panels:
    """The panel layout of one quantized matrix (``kernels.h``): its codes, scales and biases
    regrouped by panels of eight output rows, so that the int16 kernel gives each output row one
    register lane. A plain object (not module state): mlx-lm's parameter trees and saved adapters
    never see it."""

    def __init__(self, w: mx.array, scales: mx.array, biases: mx.array, *, group_size: int, bits: int):
        self.w, self.scales, self.biases = w, scales, biases
        self.group_size, self.bits = group_size, bits

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + self.scales.nbytes + self.biases.nbytes

    @staticmethod
    def concatenate(first: "Panels", second: "Panels") -> tuple["Panels", "Panels", "Panels"]:
        """Both matrices' panels in one set of arrays (``first``'s output rows, then ``second``'s),
        and each again as a view into it: the one set serves a fused product, the views the
        single ones, and no bytes are held twice."""
        both = Panels(*(mx.concatenate([a, b]) for a, b in zip(first.arrays, second.arrays)),
                      group_size=first.group_size, bits=first.bits)
        mx.eval(*both.arrays)
        n = first.w.shape[0]
        views = [Panels(*(a[part] for a in both.arrays), group_size=first.group_size, bits=first.bits)
                 for part in (slice(0, n), slice(n, None))]
        for v in views:
            mx.eval(*v.arrays)
        return both, views[0], views[1]

    @property
    def arrays(self) -> tuple[mx.array, mx.array, mx.array]:
        return self.w, self.scales, self.biases

    def unpack(self) -> tuple[mx.array, mx.array, mx.array]:
        """MLX's (w, scales, biases) of these panels, exactly: a lazy graph, computed (and then
        held) only where something evaluates it."""
        return tuple(extension().unpack_panels(self.w, self.scales, self.biases, self.group_size, self.bits))


def pack_panels(w: mx.array, scales: mx.array, biases: mx.array, *, bits: int) -> Panels | None:
    """:class:`Panels` of ``w`` (N, K * bits / 32) uint32 in MLX's affine layout with float32
    ``scales`` and ``biases`` (N, K / group), or None where the layout does not apply (the
    extension or its panel kernel not built, N not a multiple of 8, K not of 32, bits other
    than 4 and 8)."""
    if getattr(extension(), "quantized_matmul_panel", None) is None:
        return None
    n, words = w.shape
    k = words * 32 // bits
    groups = scales.shape[1]
    if bits not in (4, 8) or n % 8 or k % 32 or w.dtype != mx.uint32 or k % groups or (k // groups) % 32:
        return None
    raw = np.asarray(w).view(np.uint8).reshape(n, k * bits // 8)
    if bits == 4:  # value 2i is the low nibble of byte i, 2i+1 its high one
        codes = np.empty((n, k), dtype=np.uint8)
        codes[:, 0::2], codes[:, 1::2] = raw & 0x0F, raw >> 4
        # [panel, row t, block j, chunk c, nibble h, e]: position 4c + 2h + e of the block
        c = codes.reshape(n // 8, 8, k // 32, 8, 2, 2).transpose(0, 2, 3, 1, 5, 4)
        packed = c[..., 0] | (c[..., 1] << 4)  # [panel, j, c, t, e]
    else:
        packed = raw.reshape(n // 8, 8, k // 32, 16, 2).transpose(0, 2, 3, 1, 4)  # [panel, j, i, t, e]

    def side_by_side(a: mx.array) -> mx.array:
        return mx.array(np.ascontiguousarray(np.asarray(a.astype(mx.float32)).reshape(n // 8, 8, groups).transpose(0, 2, 1)))

    return Panels(mx.array(np.ascontiguousarray(packed).reshape(n // 8, k * bits)), side_by_side(scales),
                  side_by_side(biases), group_size=k // groups, bits=bits)


def gated_product(x: mx.array, panels: Panels) -> mx.array | None:
    """``silu(x @ Wg.T) * (x @ Wu.T)`` from ``panels`` holding the gate's rows then the up
    projection's (:meth:`Panels.concatenate`): an MLP's two input products and its gating in one
    primitive (``qmm.h``), the same values bit for bit as the two products and :func:`swiglu`; or
    None where that does not run (extension off, not built or older, another mode)."""
    kernel = getattr(extension(), "gated_product_panel", None) if active() else None
    if kernel is None or mode() != "int16" or x.dtype != mx.float32:
        return None
    return kernel(x, panels.w, panels.scales, panels.biases, panels.group_size, panels.bits)


def rope(x: mx.array, dims: int, *, traditional: bool, base: float, scale: float, offset) -> mx.array:
    """``mx.fast.rope`` (forward, ``base`` frequencies), equal bit for bit; one primitive of the
    extension for float32 ``x`` where it is active (``rope.h``: MLX's CPU path is a dozen ops)."""
    # getattr: a module built from older sources has no rope until jobs.build_kernels runs again.
    kernel = getattr(extension(), "rope", None) if active() else None
    if kernel is not None and x.dtype == mx.float32 and x.ndim >= 3 and 0 < dims <= x.shape[-1] and dims % 2 == 0:
        off = offset if isinstance(offset, mx.array) else mx.array(offset, dtype=mx.int32)
        return kernel(x, off, dims, traditional, base, scale)
    return mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offset)


def span_attention(q: mx.array, k: mx.array, v: mx.array, offset: mx.array, scale: float) -> mx.array | None:
    """``softmax((q * scale) k^T) v`` with query ``i`` (of q's T) seeing slots ``j <= offset + i``
    of k and v (B, KV, S, D): the attention of a fixed KV cache's span (``attention.h``; one
    primitive per block instead of MLX's graph of about eight ops, equal to
    ``mx.fast.scaled_dot_product_attention`` with that mask up to float rounding), or None where
    the extension is off, not built or older than this primitive, or the shapes do not fit."""
    kernel = getattr(extension(), "span_attention", None) if active() else None
    if (kernel is None or q.ndim != 4 or k.ndim != 4 or q.dtype != mx.float32 or k.dtype != mx.float32
            or v.dtype != mx.float32 or q.shape[-1] % 8 or q.shape[-1] > 256 or q.shape[1] % k.shape[1]):
        return None
    return kernel(q, k, v, offset.astype(mx.int32) if offset.dtype != mx.int32 else offset, scale)


def token_entropy(logits: mx.array) -> mx.array | None:
    """Entropy (bits) of ``softmax(logits)`` over the last axis in one extension primitive
    (``entropy.h``: two passes, a vectorised exp; within about 1e-5 bits of a float64 reference
    on 49,152 logits, where the float32 MLX graph of
    :func:`psilonet.generation.entropy.token_entropy_bits` is within about 1e-4), or None where
    the extension is off, not built or older than this primitive. No gradient."""
    kernel = getattr(extension(), "token_entropy", None) if active() else None
    if kernel is None or logits.dtype != mx.float32 or logits.ndim < 1 or logits.shape[-1] < 1:
        return None
    return kernel(logits)


def layer_entropies(states: list[mx.array]) -> mx.array | None:
    """Hidden-state entropy (bits) of each state's last position, ``p = h^2 / sum(h^2)`` over the
    hidden axis, as (B, len(states)) from one extension primitive (``entropy.h``: it reads the
    states in place, where MLX's graph slices, stacks and reduces them), or None where the
    extension is off, not built or older than this primitive. No gradient."""
    kernel = getattr(extension(), "layer_entropies", None) if active() else None
    if kernel is None or not states or any(s.ndim != 3 or s.dtype != mx.float32 for s in states):
        return None
    return kernel(list(states))


def dose(h: mx.array, noise: mx.array | None, i: mx.array, idx: mx.array | None, coef: mx.array | None, *,
         layer: int, sensitivity: float, noise_per_intensity: float) -> mx.array | None:
    """Block ``layer``'s dose of ``h`` (B, T, D) in one extension primitive (``dose.h``; the
    graph it replaces is :func:`psilonet.generation.perturb._make_apply`), or None where the
    extension is off, not built or older than this primitive. No gradient."""
    kernel = getattr(extension(), "dose", None) if active() else None
    if kernel is None or h.dtype != mx.float32 or h.ndim != 3:
        return None
    return kernel(h, noise, i, idx, coef, layer, sensitivity, noise_per_intensity)


def dose_noise(keys: mx.array, layers: int, tokens: int, features: int) -> mx.array | None:
    """``mx.stack([mx.random.normal((layers, tokens, features), key=k) for k in keys], axis=1)``
    for ``keys`` (B, 2) uint32, bit for bit, in one extension primitive (``noise.h``), or None
    where the extension is off, not built or older than this primitive."""
    kernel = getattr(extension(), "dose_noise", None) if active() else None
    if kernel is None or keys.dtype != mx.uint32 or keys.ndim != 2 or keys.shape[1] != 2:
        return None
    return kernel(keys, layers, tokens, features)


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """``silu(gate) * x`` (mlx-lm's ``activations.swiglu``), equal bit for bit, in one primitive
    of the extension for float32 arrays of one shape where it is active (``swiglu.h``: MLX's CPU
    sigmoid runs one value at a time), else through MLX."""
    kernel = getattr(extension(), "swiglu", None) if active() else None
    if kernel is not None and gate.dtype == mx.float32 and x.dtype == mx.float32 and gate.shape == x.shape:
        return kernel(gate, x)
    return nn.silu(gate) * x


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """``mx.fast.rms_norm``, equal bit for bit, in one primitive of the extension for float32
    ``x`` (..., D) and ``weight`` (D,) where it is active (``rmsnorm.h``: MLX's CPU path is a
    graph of three ops), else ``mx.fast.rms_norm``."""
    kernel = getattr(extension(), "rms_norm", None) if active() else None
    if (kernel is not None and x.dtype == mx.float32 and weight.dtype == mx.float32 and x.ndim >= 1
            and weight.ndim == 1 and weight.shape[0] == x.shape[-1]):
        return kernel(x, weight, eps)
    return mx.fast.rms_norm(x, weight, eps)

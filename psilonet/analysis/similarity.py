"""Representation similarity: linear CKA (biased and debiased), SVCCA and PWCCA.

Every function takes representations as ``(n, d)`` matrices whose rows are the same ``n``
samples (tokens) and whose columns are features (neurons); the two sides may have different
widths. All arithmetic is float64 whatever the input dtype.

Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited")
with column-centred ``X`` and ``Y`` and Gram matrices ``K = X X^T``, ``L = Y Y^T``::

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))
              = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

since ``<K, L>_F = ||X^T Y||_F^2``: for ``d < n`` nothing ``n x n`` is ever built, which makes it
``O(n d^2)`` instead of ``O(n^2 d)``. The debiased variant replaces HSIC with the unbiased
estimator of Song et al. 2012 (as used by Nguyen et al. 2021, "Do Wide and Deep Networks Learn
the Same Things?"); see :func:`_hsic` for how it is evaluated in feature space too.

SVCCA (Raghu et al. 2017) and PWCCA (Morcos et al. 2018) are CCA-based; CCA here is the
numerically stable form: the canonical correlations are the singular values of ``Qx^T Qy``
where ``Qx``, ``Qy`` are orthonormal bases of the (centred) column spaces.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["linear_cka", "cka_matrix", "per_head_cka", "svcca", "pwcca", "paired_metrics"]

_EPS = np.finfo(np.float64).eps
# A representation whose centred norm is below this fraction of its raw norm is constant up to
# rounding (centring a constant column in float64 leaves ~eps-sized residue, not exact zeros).
_ZERO_VARIANCE_RTOL = 64 * _EPS
# Working-set targets (bytes of float64 temporaries): per-head chunks small enough to stay in
# cache between centring and the products (measured a little faster than 128 MiB chunks);
# Gram row blocks large enough for efficient matmuls.
_CHUNK_BYTES = 8 * 2**20
_BLOCK_BYTES = 128 * 2**20

# Names a representation in error messages from its flat index within a batch (0 for one matrix).
Label = Callable[[int], str]


def _named(name: str) -> Label:
    return lambda _i: name


# --------------------------------------------------------------------------------------------
# Input checks


def _as_matrix(X, name: str, min_rows: int = 2) -> np.ndarray:
    """``X`` as a finite real 2-D array with at least ``min_rows`` rows; float dtypes are kept
    (float32 stays float32 until centring, so big inputs are not copied twice)."""
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x features), got shape {arr.shape}")
    _check_rows(arr.shape[0], name, min_rows)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {arr.shape})")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _check_rows(n: int, name: str, min_rows: int) -> None:
    if n < min_rows:
        why = " (the debiased HSIC estimator divides by n - 3)" if min_rows >= 4 else ""
        raise ValueError(f"{name} has {n} rows; at least {min_rows} samples are needed{why}")


def _check_same_rows(n_x: int, n_y: int, name_x: str = "X", name_y: str = "Y") -> None:
    if n_x != n_y:
        raise ValueError(
            f"{name_x} has {n_x} rows but {name_y} has {n_y}: rows must be the same samples")


def _min_rows(debiased: bool) -> int:
    return 4 if debiased else 2


# --------------------------------------------------------------------------------------------
# Shared CKA machinery (works on one matrix (n, d) or a stack (..., n, d))


class _Centred:
    """A column-centred float64 representation (one ``(n, d)`` or a stack ``(..., n, d)``)."""

    def __init__(self, data: np.ndarray, total: np.ndarray):
        self.data = data      # columns centred
        self.total = total    # trace(K) = ||X||_F^2, K = X X^T

    @functools.cached_property
    def row_sq(self) -> np.ndarray:
        """diag(K): squared row norms, (..., n). Only the debiased estimator needs it."""
        return np.einsum("...ij,...ij->...i", self.data, self.data)


def _centre(X: np.ndarray, label: Label) -> _Centred:
    """Centre columns in float64; ValueError if nothing is left (CKA is undefined then).

    Converting and centring in one pass (float32 inputs never get an uncentred float64 copy)
    matters for big stacks: this part is memory-bound, the products after it are not.
    """
    n = X.shape[-2]
    mean = np.mean(X, axis=-2, dtype=np.float64, keepdims=True)
    data = np.subtract(X, mean, dtype=np.float64)
    total = np.einsum("...ij,...ij->...", data, data)
    raw = total + n * np.einsum("...ij,...ij->...", mean, mean)   # sum x^2 = sum (x-mu)^2 + n mu^2
    zero = total <= _ZERO_VARIANCE_RTOL**2 * raw
    if np.any(zero):
        raise ValueError(f"{label(_first(zero))} has zero variance (every sample is the same): "
                         "similarity is undefined")
    return _Centred(data, total)


def _first(mask) -> int:
    """Flat index of the first True of a boolean scalar or array."""
    return int(np.argmax(np.ravel(mask)))


def _t(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def _gram_inner(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``<X X^T, Y Y^T>_F = ||X^T Y||_F^2`` over the last two axes, on the cheaper side.

    Feature space costs ``n p q``; Gram space ``n^2 (p + q)``: features win unless the widths
    exceed ``n``. ``Y is X`` computes one product: ``n p^2`` versus ``n^2 p``.
    """
    n, p, q = X.shape[-2], X.shape[-1], Y.shape[-1]
    if Y is X:
        G = _t(X) @ X if p <= n else X @ _t(X)
        return np.einsum("...ij,...ij->...", G, G)
    if p * q <= n * (p + q):
        C = _t(X) @ Y
        return np.einsum("...ij,...ij->...", C, C)
    return np.einsum("...ij,...ij->...", X @ _t(X), Y @ _t(Y))


def _hsic(inner, rr, total_x, total_y, n: int, debiased: bool):
    """HSIC of the linear kernels of centred ``X``, ``Y`` from feature-space quantities.

    ``inner = <K, L>_F``, ``rr = diag(K) . diag(L)``, ``total_* = trace``. Biased:
    ``HSIC = tr(K H L H) / (n-1)^2 = <K, L> / (n-1)^2`` (``K`` is already centred); the
    ``(n-1)^-2`` cancels in CKA, so ``<K, L>`` is returned as is.

    Debiased (Song et al. 2012, eq. 5), with ``K~``, ``L~`` the Gram matrices with zeroed
    diagonals::

        HSIC_1 = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

    The estimator is invariant to shifting the data (its U-statistic kernel only involves
    differences of samples), so centring first is free and gives ``K 1 = 0``; then
    ``K~ 1 = -diag(K)``, ``1'K~1 = -trace(K)`` and ``tr(K~ L~) = <K, L> - diag(K).diag(L)``::

        HSIC_1 = [<K, L> - n/(n-2) diag(K).diag(L) + trace(K) trace(L) / ((n-1)(n-2))] / (n(n-3))

    Works elementwise on arrays (for the layer-by-layer matrix).
    """
    if not debiased:
        return inner
    return (inner - n / (n - 2) * rr + total_x * total_y / ((n - 1) * (n - 2))) / (n * (n - 3))


def _self_hsic(c: _Centred, inner_self, n: int, debiased: bool, label: Label):
    """HSIC(X, X) (biased or debiased); ValueError where it is not positive."""
    rr = np.einsum("...i,...i->...", c.row_sq, c.row_sq) if debiased else 0.0
    h = _hsic(inner_self, rr, c.total, c.total, n, debiased)
    if np.any(h <= 0):
        name = label(_first(h <= 0))
        raise ValueError(
            f"debiased HSIC({name}, {name}) is not positive: debiased CKA is undefined for this "
            "representation (too few samples, or nearly rank 1?)")
    return h


# --------------------------------------------------------------------------------------------
# CKA: one pair, per head, layer by layer


def linear_cka(X, Y, debiased: bool = False) -> float:
    """Linear CKA between ``X (n, p)`` and ``Y (n, q)``; rows are the same samples.

    ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` after centring columns (Kornblith et al.
    2019). It is invariant to orthogonal transforms and isotropic scaling of either side (and
    to offsets) but not to general invertible linear maps. In ``[0, 1]``.

    ``debiased=True`` uses the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021),
    which removes the upward bias of CKA for finite ``n`` and wide representations: independent
    representations score about 0 and the value may be negative. Needs ``n >= 4``.

    Cost ``O(n (p^2 + q^2 + p q))``: computed in feature space, never building ``n x n`` Gram
    matrices unless the representations are wider than ``n``.
    """
    n_min = _min_rows(debiased)
    X = _as_matrix(X, "X", n_min)
    Y = _as_matrix(Y, "Y", n_min)
    _check_same_rows(X.shape[0], Y.shape[0])
    return float(_paired_cka(X, Y, debiased, _named("X"), _named("Y")))


def _paired_cka(X: np.ndarray, Y: np.ndarray, debiased: bool, label_x: Label,
                label_y: Label) -> np.ndarray:
    """CKA of one pair ``(n, p)``, ``(n, q)`` or of stacks of pairs ``(b, n, p)``, ``(b, n, q)``
    (finite inputs with enough rows): three products per pair, batched over the stack."""
    n = X.shape[-2]
    x, y = _centre(X, label_x), _centre(Y, label_y)
    hsic_xx = _self_hsic(x, _gram_inner(x.data, x.data), n, debiased, label_x)
    hsic_yy = _self_hsic(y, _gram_inner(y.data, y.data), n, debiased, label_y)
    rr = np.einsum("...i,...i->...", x.row_sq, y.row_sq) if debiased else 0.0
    hsic_xy = _hsic(_gram_inner(x.data, y.data), rr, x.total, y.total, n, debiased)
    return hsic_xy / np.sqrt(hsic_xx * hsic_yy)


def per_head_cka(A, B, debiased: bool = False) -> np.ndarray:
    """CKA of ``A[l, h]`` against ``B[l, h]`` for every layer and head.

    ``A``, ``B``: arrays ``(layers, heads, n, head_dim)`` (head dims may differ between ``A``
    and ``B``). Returns ``(layers, heads)`` float64 with ``out[l, h] == linear_cka(A[l, h],
    B[l, h], debiased)``.

    Heads go through batched matmuls in feature space (``head_dim x head_dim`` products,
    ``O(n head_dim^2)`` per head), a few heads at a time so that the float64 copies of float32
    inputs stay small and in cache, with numpy's BLAS on one thread (see
    :func:`_numpy_blas_single_thread`).
    """
    A, B = np.asarray(A), np.asarray(B)
    for name, arr in (("A", A), ("B", B)):
        if arr.ndim != 4:
            raise ValueError(
                f"{name} must be 4-D (layers, heads, samples, head_dim), got shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if A.shape[:2] != B.shape[:2]:
        raise ValueError(f"A has (layers, heads) {A.shape[:2]} but B has {B.shape[:2]}")
    _check_same_rows(A.shape[2], B.shape[2], "A", "B")
    n = A.shape[2]
    _check_rows(n, "A", _min_rows(debiased))
    layers, heads = A.shape[:2]
    flat_a = A.reshape(layers * heads, n, A.shape[3])
    flat_b = B.reshape(layers * heads, n, B.shape[3])

    out = np.empty(layers * heads)
    # Per head: the centred float64 copies and their products (d x d, or n x n if d > n).
    width = A.shape[3] + B.shape[3]
    per_head = 8 * (n * width + 3 * min(n, max(A.shape[3], B.shape[3])) ** 2)
    step = max(1, _CHUNK_BYTES // per_head)
    with _numpy_blas_single_thread():
        for start in range(0, layers * heads, step):
            stop = min(start + step, layers * heads)
            out[start:stop] = _heads_cka(flat_a[start:stop], flat_b[start:stop], start, heads,
                                         debiased)
    return out.reshape(layers, heads)


def _numpy_blas_single_thread():
    """Context holding numpy's own BLAS at one thread (other BLAS libraries, such as the one
    MLX is bound to, untouched); a no-op without ``threadpoolctl``.

    Why: per-head CKA is hundreds of small products (3000 x 64 -> 64 x 64). Multithreaded
    OpenBLAS synchronises its threads on every call, and when another process occupies a core
    the waiting thread spins: on a loaded 2-core machine two threads made the per-head pass
    erratic (sometimes many times slower), while one thread stayed steady and, idle, costs
    little against two.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext()
    controller = ThreadpoolController()
    numpy_blas = [lib.filepath for lib in controller.lib_controllers
                  if lib.user_api == "blas" and "numpy" in lib.filepath]
    if not numpy_blas:
        return contextlib.nullcontext()
    return controller.select(filepath=numpy_blas).limit(limits=1)


def _heads_cka(Xs: np.ndarray, Ys: np.ndarray, offset: int, heads: int,
               debiased: bool) -> np.ndarray:
    """:func:`_paired_cka` on a chunk of flattened heads; errors name ``A[l, h]``."""
    def head(name: str) -> Label:
        return lambda i: f"{name}[{(offset + i) // heads}, {(offset + i) % heads}]"

    for name, arr in (("A", Xs), ("B", Ys)):
        finite = np.isfinite(arr).all(axis=(1, 2))
        if not finite.all():
            raise ValueError(f"{head(name)(_first(~finite))} contains NaN or inf")
    return _paired_cka(Xs, Ys, debiased, head("A"), head("B"))


def cka_matrix(A, B, debiased: bool = False, *, method: str = "auto") -> np.ndarray:
    """``M[i, j] = linear_cka(A[i], B[j], debiased)`` for every pair of layers.

    ``A``, ``B``: sequences (lists, or 3-D arrays along axis 0) of ``(n, d_l)`` representations
    of the same ``n`` samples; widths may differ. Pass the same object twice (``cka_matrix(A,
    A)``) to compute only one triangle.

    Each layer is centred once and its self-similarity ``HSIC(X, X)`` computed once; per pair
    only the cross term ``<K_i, L_j>_F = ||X_i^T Y_j||_F^2`` remains. Two ways to get the cross
    terms, chosen by ``method``:

    - ``"features"``: ``X_i^T Y_j`` per pair, ``n p q`` each (``n P Q`` in all for total widths
      ``P``, ``Q``).
    - ``"gram"``: every layer's Gram matrix is built once, a block of rows at a time (upper
      triangle only, by symmetry), and all cross terms of a block come from one matrix product
      of the flattened blocks: ``n^2 (P + Q) / 2 + n^2 m^2 / 2`` for ``m`` layers in all. It
      wins when the total width exceeds ``n`` (31 layers x 576 features over 3000 tokens: about
      5x fewer flops), even though each layer is narrower than ``n``.
    - ``"auto"`` (default) picks the cheaper by that flop count.
    """
    if method not in ("auto", "features", "gram"):
        raise ValueError(f"method must be 'auto', 'features' or 'gram', got {method!r}")
    same = B is A
    n_min = _min_rows(debiased)
    layers_a = _as_layers(A, "A", n_min)
    layers_b = layers_a if same else _as_layers(B, "B", n_min)
    _check_same_rows(layers_a[0].shape[0], layers_b[0].shape[0], "A[0]", "B[0]")
    n = layers_a[0].shape[0]
    cen_a = [_centre(x, _named(f"A[{i}]")) for i, x in enumerate(layers_a)]
    cen_b = cen_a if same else [_centre(y, _named(f"B[{j}]")) for j, y in enumerate(layers_b)]
    del layers_a, layers_b  # the float64 centred copies are all that is needed from here

    if method == "auto":
        method = _choose_matrix_method(n, [c.data.shape[1] for c in cen_a],
                                       None if same else [c.data.shape[1] for c in cen_b])
    if method == "features":
        inner, self_a, self_b = _cross_inner_features(cen_a, cen_b, same)
    else:
        inner, self_a, self_b = _cross_inner_gram(cen_a, cen_b, same)

    def self_hsic(cens, selfs, name):
        return np.array([_self_hsic(c, s, n, debiased, _named(f"{name}[{i}]"))
                         for i, (c, s) in enumerate(zip(cens, selfs))])

    hsic_a = self_hsic(cen_a, self_a, "A")
    hsic_b = hsic_a if same else self_hsic(cen_b, self_b, "B")
    total_a = np.array([c.total for c in cen_a])
    total_b = np.array([c.total for c in cen_b])
    rr = (np.stack([c.row_sq for c in cen_a]) @ np.stack([c.row_sq for c in cen_b]).T
          if debiased else 0.0)
    hsic_ab = _hsic(inner, rr, total_a[:, None], total_b[None, :], n, debiased)
    return hsic_ab / np.sqrt(hsic_a[:, None] * hsic_b[None, :])


def _as_layers(A, name: str, min_rows: int) -> list[np.ndarray]:
    """A sequence of 2-D layer representations with one shared row count."""
    if isinstance(A, np.ndarray):
        if A.ndim != 3:
            raise ValueError(
                f"{name} must be a sequence of (n, d) layers or a 3-D array, got shape {A.shape}")
        layers = list(A)
    elif isinstance(A, Sequence) and not isinstance(A, (str, bytes)):
        layers = list(A)
    else:
        raise ValueError(f"{name} must be a sequence of (n, d) layer representations")
    if not layers:
        raise ValueError(f"{name} has no layers")
    out = [_as_matrix(x, f"{name}[{i}]", min_rows) for i, x in enumerate(layers)]
    for i, x in enumerate(out[1:], start=1):
        _check_same_rows(x.shape[0], out[0].shape[0], f"{name}[{i}]", f"{name}[0]")
    return out


def _choose_matrix_method(n: int, widths_a: list[int], widths_b: list[int] | None) -> str:
    """Flop counts of the two cross-term routes (multiply-adds); ``widths_b=None``: A vs A."""
    P = sum(widths_a)
    if widths_b is None:
        features = n * (P * P + sum(p * p for p in widths_a)) / 2   # one triangle of pairs
        m = len(widths_a)
        gram = n * n / 2 * P + n * n / 2 * m * m
    else:
        Q = sum(widths_b)
        features = n * (P * Q + sum(p * p for p in widths_a) + sum(q * q for q in widths_b))
        m = len(widths_a) + len(widths_b)
        gram = n * n / 2 * (P + Q) + n * n / 2 * m * m
    return "features" if features <= gram else "gram"


def _cross_inner_features(cen_a, cen_b, same: bool):
    """``<K_i, L_j>`` by ``||X_i^T Y_j||_F^2`` per pair, and each layer's ``<K_i, K_i>``."""
    inner = np.empty((len(cen_a), len(cen_b)))
    for i, x in enumerate(cen_a):
        for j, y in enumerate(cen_b):
            if same and j < i:
                inner[i, j] = inner[j, i]
            else:
                inner[i, j] = _gram_inner(x.data, x.data if same and i == j else y.data)
    self_a = np.diag(inner).copy() if same else [_gram_inner(x.data, x.data) for x in cen_a]
    self_b = self_a if same else [_gram_inner(y.data, y.data) for y in cen_b]
    return inner, self_a, self_b


def _cross_inner_gram(cen_a, cen_b, same: bool):
    """All ``<K_i, L_j>`` (and self terms) from Gram matrices built a row block at a time.

    For a block of rows ``r`` starting at ``r0``, each layer's strip ``K[r, r0:]`` covers the
    block's part of the upper triangle; with ``D = K[r, r]`` the diagonal block,
    ``<K, L> = sum over blocks of 2 <strip_K, strip_L> - <D_K, D_L>``. Stacking every layer's
    flattened strip as a row of ``S`` turns all pairs into one product ``S S^T`` per block.
    """
    layers = [c.data for c in cen_a] + ([] if same else [c.data for c in cen_b])
    m, n = len(layers), layers[0].shape[0]
    rows = int(np.clip(_BLOCK_BYTES // (8 * m * n), 1, n))
    G = np.zeros((m, m))
    # One buffer for all blocks: a fresh 100 MB array per block costs page faults every time.
    buffer = np.empty(m * rows * n)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        b, w = r1 - r0, n - r0
        S = buffer[: m * b * w].reshape(m, b, w)   # contiguous, so flattening below is free
        for k, X in enumerate(layers):
            np.matmul(X[r0:r1], X[r0:].T, out=S[k])
        flat = S.reshape(m, -1)
        diag = np.ascontiguousarray(S[:, :, :b]).reshape(m, -1)
        G += 2 * (flat @ flat.T) - diag @ diag.T
    na = len(cen_a)
    if same:
        return G, np.diag(G).copy(), None
    return G[:na, na:], np.diag(G)[:na].copy(), np.diag(G)[na:].copy()


# --------------------------------------------------------------------------------------------
# CCA family


def _basis(Xc: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of a centred ``Xc``, numerically-zero
    directions dropped (relative tolerance ``max(n, d) * eps`` of the input dtype, as in
    ``numpy.linalg.matrix_rank``): CCA on rank-deficient data would otherwise correlate noise."""
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    keep = s > s[0] * max(Xc.shape) * eps if s.size and s[0] > 0 else np.zeros(s.size, bool)
    return U[:, keep], s[keep]


def _input_eps(X: np.ndarray) -> float:
    return float(np.finfo(X.dtype).eps) if X.dtype.kind == "f" else _EPS


def _centred_basis(X, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``X``: (centred float64 data, orthonormal column basis, singular values)."""
    X = _as_matrix(X, name)
    Xc = _centre(X, _named(name)).data
    U, s = _basis(Xc, _input_eps(X))
    return Xc, U, s


def _canonical(Qx: np.ndarray, Qy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CCA between the column spaces of orthonormal ``Qx`` and ``Qy`` (Bjorck & Golub 1973).

    Returns the canonical correlations ``rho`` (descending, clipped to ``[0, 1]`` against
    rounding) and the X-side canonical variates ``Qx U`` as unit-norm columns, where
    ``Qx^T Qy = U diag(rho) V^T``.
    """
    U, rho, _ = np.linalg.svd(Qx.T @ Qy, full_matrices=False)
    return np.clip(rho, 0.0, 1.0), Qx @ U


def _choose_k(s: np.ndarray, k, var_threshold: float, name: str, width: int) -> int:
    """How many top singular directions SVCCA keeps: ``k`` (capped at the numerical rank:
    directions beyond it carry only rounding noise), or for ``k=None`` the fewest whose squared
    singular values reach ``var_threshold`` of the total (explained variance)."""
    if k is None:
        if not 0.0 < var_threshold <= 1.0:
            raise ValueError(f"var_threshold must be in (0, 1], got {var_threshold}")
        energy = np.cumsum(s**2) / np.sum(s**2)
        # Small slack: a threshold of exactly 1.0 must not fail on energy = 0.9999999999999998.
        return int(np.argmax(energy >= var_threshold - 1e-12)) + 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k for {name} must be a positive integer, got {k!r}")
    if k > width:
        raise ValueError(f"k={k} for {name} but {name} has only {width} features")
    return min(int(k), s.size)


def svcca(X, Y, k: int | tuple[int, int] | None = None,
          var_threshold: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation between top singular subspaces.

    1. Centre each side; keep its top singular directions: ``k`` for both, ``(kx, ky)`` per
       side, or ``None`` for the fewest directions explaining ``var_threshold`` of the variance
       (``k`` is capped at the numerical rank).
    2. CCA between the reduced representations. Their column spaces are spanned by the kept
       left singular vectors ``Ux``, ``Uy``, so the canonical correlations are the singular
       values of ``Ux^T Uy`` (clipped to ``[0, 1]``); there are ``min(kx, ky)`` of them.

    Returns their mean. With all directions kept it is invariant to any invertible linear map
    of either side. Like any CCA, it overfits when ``kx + ky`` approaches ``n``.
    """
    if isinstance(k, (tuple, list)):
        if len(k) != 2:
            raise ValueError(f"k must be an int, a pair (kx, ky) or None, got {k!r}")
        kx, ky = k
    else:
        kx, ky = k, k
    Xc, Ux, sx = _centred_basis(X, "X")
    Yc, Uy, sy = _centred_basis(Y, "Y")
    _check_same_rows(Xc.shape[0], Yc.shape[0])
    kx = _choose_k(sx, kx, var_threshold, "X", Xc.shape[1])
    ky = _choose_k(sy, ky, var_threshold, "Y", Yc.shape[1])
    rho, _ = _canonical(Ux[:, :kx], Uy[:, :ky])
    return float(rho.mean())


def pwcca(X, Y) -> float:
    """Projection-weighted CCA (Morcos et al. 2018): ``sum_i alpha_i rho_i``.

    CCA between centred ``X`` and ``Y`` (numerically rank-deficient directions dropped) gives
    correlations ``rho_i`` and unit-norm X-side canonical variates ``h_i`` (n-vectors). Each
    is weighted by how much of the original neurons it accounts for::

        alpha_i = sum_j |<h_i, x_j>|,   normalised to sum 1,

    with ``x_j`` the columns (neurons) of centred ``X``.

    Asymmetric: the weights come from the X side only, so ``pwcca(X, Y) != pwcca(Y, X)`` in
    general; put the representation whose neurons should set the weights first. (Morcos et
    al.'s reference code instead weights by the side with fewer neurons.) In ``[0, 1]``;
    ``pwcca(X, X) == 1``.
    """
    Xc, Qx, _ = _centred_basis(X, "X")
    Yc, Qy, _ = _centred_basis(Y, "Y")
    _check_same_rows(Xc.shape[0], Yc.shape[0])
    rho, H = _canonical(Qx, Qy)
    alpha = np.abs(H.T @ Xc).sum(axis=1)
    return float(alpha @ rho / alpha.sum())


# --------------------------------------------------------------------------------------------
# All four per-layer metrics of one pair from shared covariance products

# The covariance route resolves singular values only down to about sqrt(eps) of the largest
# (eigenvalues of X^T X carry absolute errors near eps * s_max^2): weaker directions are dropped.
_COVARIANCE_RTOL = 1e-6


def paired_metrics(X, Y, var_threshold: float = 0.99) -> dict[str, float]:
    """``cka``, ``cka_debiased``, ``svcca`` and ``pwcca`` of one pair, from three products.

    Equal (to rounding) to :func:`linear_cka` (biased and debiased), :func:`svcca` with
    ``var_threshold`` and :func:`pwcca`, but every number comes from the centred ``Cxx = X^T X``,
    ``Cyy = Y^T Y`` and ``Cxy = X^T Y`` (``d x d``, never ``n x n``): CKA from their Frobenius
    norms; the CCA family from the eigendecompositions ``Cxx = Vx Sx^2 Vx^T``, since the
    orthonormal basis ``Qx = X Vx Sx^-1`` gives ``Qx^T Qy = Sx^-1 Vx^T Cxy Vy Sy^-1`` and the
    PWCCA weights ``|H^T X| = |U^T Sx Vx^T|`` without forming ``Qx``. That replaces four
    ``n x d`` SVDs per pair with two ``d x d`` eigendecompositions, which is what makes
    analysing every representation affordable.

    Directions are dropped below ``max(max(n, d) * eps_input, 1e-6)`` of the largest singular
    value: the same rank rule as :func:`pwcca` for float32 inputs (captures are float32), and
    the limit of what the covariance route resolves for float64 ones. Needs ``n >= 4``.
    """
    X = _as_matrix(X, "X", 4)
    Y = _as_matrix(Y, "Y", 4)
    _check_same_rows(X.shape[0], Y.shape[0])
    if not 0.0 < var_threshold <= 1.0:
        raise ValueError(f"var_threshold must be in (0, 1], got {var_threshold}")
    n = X.shape[0]
    x, y = _centre(X, _named("X")), _centre(Y, _named("Y"))
    cxx, cyy, cxy = x.data.T @ x.data, y.data.T @ y.data, x.data.T @ y.data
    inner_xx, inner_yy, inner_xy = (np.einsum("ij,ij->", c, c) for c in (cxx, cyy, cxy))
    out = {"cka": float(inner_xy / np.sqrt(inner_xx * inner_yy))}
    rr = float(x.row_sq @ y.row_sq)
    h_xx = _self_hsic(x, inner_xx, n, True, _named("X"))
    h_yy = _self_hsic(y, inner_yy, n, True, _named("Y"))
    h_xy = _hsic(inner_xy, rr, x.total, y.total, n, True)
    out["cka_debiased"] = float(h_xy / np.sqrt(h_xx * h_yy))

    sx, vx = _covariance_basis(cxx, max(n, X.shape[1]) * _input_eps(X))
    sy, vy = _covariance_basis(cyy, max(n, Y.shape[1]) * _input_eps(Y))
    m = (vx.T @ cxy @ vy) / sx[:, None] / sy[None, :]   # Qx^T Qy
    kx = _choose_k(sx, None, var_threshold, "X", X.shape[1])
    ky = _choose_k(sy, None, var_threshold, "Y", Y.shape[1])
    rho_k = np.linalg.svd(m[:kx, :ky], compute_uv=False)
    out["svcca"] = float(np.clip(rho_k, 0.0, 1.0).mean())
    u, rho, _ = np.linalg.svd(m, full_matrices=False)
    alpha = np.abs((u.T * sx[None, :]) @ vx.T).sum(axis=1)
    out["pwcca"] = float(alpha @ np.clip(rho, 0.0, 1.0) / alpha.sum())
    return out


def _covariance_basis(c: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending) and right singular vectors of ``X`` from ``c = X^T X``,
    directions below ``max(rtol, 1e-6)`` of the largest dropped."""
    lam, v = np.linalg.eigh(c)
    lam, v = lam[::-1], v[:, ::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    keep = s > s[0] * max(rtol, _COVARIANCE_RTOL)
    return s[keep], v[:, keep]

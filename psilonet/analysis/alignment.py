"""Two similarity views beside CKA: a local one (mutual k-nearest neighbours) and a metric one
(orthogonal Procrustes distance).

Both take ``(n, d)`` matrices whose rows are the same ``n`` samples (tokens); widths may differ.

**Mutual k-NN alignment** (Huh et al. 2024, "The Platonic Representation Hypothesis"; the
``mutual_knn`` of their ``metrics.py``): each sample's ``k`` nearest neighbours by inner
product (itself excluded) in each representation, and the mean over samples of the fraction
of those ``k`` neighbours the two representations share. 1 means identical neighbourhoods,
about ``k / (n - 1)`` unrelated ones. As in their measurement pipeline the rows are
L2-normalised first (``normalize=True``), so neighbours are by cosine: a token's norm, which
the sink outliers blow up, does not decide who its neighbours are, whereas CKA is dominated
by exactly those norms. ``k = 10`` as in their experiments.

**Orthogonal Procrustes distance** (as netrep's ``LinearMetric(alpha=1)``, its default angular
score): with column-centred ``X`` and ``Y``, the angle between them after the best rotation,

    d(X, Y) = arccos( ||X^T Y||_* / (||X||_F ||Y||_F) )   in [0, pi/2] radians,

since ``max_Q <X Q, Y>_F`` over orthogonal ``Q`` is the nuclear norm (sum of singular values)
of ``X^T Y``. 0 means one is a rotation (and shift) of the other; it is a true metric, and
unlike CKA it is not invariant to rescaling single directions.
"""

from __future__ import annotations

import numpy as np

from psilonet.analysis.similarity import _as_matrix, _centre, _check_same_rows, _named

DEFAULT_K = 10
ALIGNMENT_METRICS = ("mutual_knn", "procrustes")


def knn_sets(X, k: int = DEFAULT_K, *, normalize: bool = True) -> np.ndarray:
    """(n, n) boolean: ``out[i, j]`` when ``j`` is one of the ``k`` nearest neighbours of ``i``
    by inner product (after L2-normalising rows if ``normalize``), ``i`` itself excluded."""
    X = np.asarray(X, dtype=np.float64)
    if normalize:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)
    n = X.shape[0]
    gram = X @ X.T
    np.fill_diagonal(gram, -np.inf)
    top = np.argpartition(-gram, k - 1, axis=1)[:, :k]
    sets = np.zeros((n, n), dtype=bool)
    sets[np.arange(n)[:, None], top] = True
    return sets


def mutual_knn(X, Y, k: int = DEFAULT_K, *, normalize: bool = True) -> float:
    """Mean over samples of |kNN_X(i) & kNN_Y(i)| / k (see the module docstring)."""
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    _check_same_rows(X.shape[0], Y.shape[0])
    n = X.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k: must be in [1, {n - 1}] for {n} samples, got {k}")
    shared = knn_sets(X, k, normalize=normalize) & knn_sets(Y, k, normalize=normalize)
    return float(shared.sum(axis=1).mean() / k)


def procrustes_distance(X, Y) -> float:
    """Angular orthogonal Procrustes distance in radians (see the module docstring)."""
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    _check_same_rows(X.shape[0], Y.shape[0])
    x, y = _centre(X, _named("X")), _centre(Y, _named("Y"))
    # The d x d product's singular values, never an n x n matrix.
    nuclear = np.linalg.svd(x.data.T @ y.data, compute_uv=False).sum()
    return float(np.arccos(np.clip(nuclear / np.sqrt(x.total * y.total), -1.0, 1.0)))


def alignment_metrics(X, Y, k: int = DEFAULT_K) -> dict[str, float]:
    """``mutual_knn`` (k neighbours, normalised rows) and ``procrustes`` of one pair."""
    n = np.shape(X)[0]
    return {"mutual_knn": mutual_knn(X, Y, min(k, n - 1)), "procrustes": procrustes_distance(X, Y)}

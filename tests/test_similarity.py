"""Representation similarity (psilonet.analysis.similarity) against textbook Gram-matrix references."""

from __future__ import annotations

import numpy as np
import pytest

from psilonet.analysis.similarity import (
    _choose_k, cka_matrix, linear_cka, per_head_cka, pwcca, svcca,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_orthogonal(d: int, seed: int = 1) -> np.ndarray:
    Q, R = np.linalg.qr(rng(seed).standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


# ---------------------------------------------------------------------------------------------
# Straightforward references: n x n Gram matrices, the formulas as printed in the papers.


def naive_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Biased HSIC (Gretton et al. 2005): tr(K H L H) / (n-1)^2."""
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def naive_unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012, eq. 5, on the raw (uncentred) Gram matrices."""
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def naive_cka(X: np.ndarray, Y: np.ndarray, debiased: bool = False) -> float:
    hsic = naive_unbiased_hsic if debiased else naive_hsic
    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.fixture
def related():
    """Two related representations with offsets (uncentred) and different widths."""
    g = rng(3)
    X = g.standard_normal((120, 12)) + 4.0
    Y = np.tanh(X @ g.standard_normal((12, 20))) + 0.5 * g.standard_normal((120, 20)) - 2.0
    return X, Y


def test_linear_cka_matches_naive_gram_reference(related):
    X, Y = related
    assert linear_cka(X, Y) == pytest.approx(naive_cka(X, Y), abs=1e-12)
    assert linear_cka(Y, X) == pytest.approx(naive_cka(X, Y), abs=1e-12)


def test_debiased_cka_matches_naive_unbiased_hsic(related):
    X, Y = related
    # The reference works on the raw Gram matrices: agreement also checks shift invariance.
    assert linear_cka(X, Y, debiased=True) == pytest.approx(naive_cka(X, Y, True), abs=1e-10)


def test_wide_representations_take_the_gram_path_and_agree():
    g = rng(4)
    X, Y = g.standard_normal((30, 50)), g.standard_normal((30, 70))
    for debiased in (False, True):
        assert linear_cka(X, Y, debiased) == pytest.approx(naive_cka(X, Y, debiased), abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Invariances


def test_cka_is_one_under_orthogonal_map_scaling_and_offset():
    X = rng(5).standard_normal((300, 16))
    Q = random_orthogonal(16)
    for debiased in (False, True):
        assert linear_cka(X, X @ Q * 3.7, debiased) == pytest.approx(1.0, abs=1e-10)
        assert linear_cka(X, X + 11.0, debiased) == pytest.approx(1.0, abs=1e-10)
        assert linear_cka(X, X @ Q * 3.7 - 2.5, debiased) == pytest.approx(1.0, abs=1e-10)


def test_cka_is_not_invariant_to_general_invertible_maps():
    g = rng(6)
    X = g.standard_normal((1000, 10))
    U, V = random_orthogonal(10, 7), random_orthogonal(10, 8)
    M = U @ np.diag(np.logspace(0, 3, 10)) @ V   # invertible, condition number 1000
    assert linear_cka(X, X @ M) < 0.99
    # ... whereas SVCCA with every direction kept does not see it.
    assert svcca(X, X @ M, k=10) == pytest.approx(1.0, abs=1e-10)


def test_debiased_cka_of_independent_data_is_near_zero_and_below_biased():
    g = rng(9)
    X, Y = g.standard_normal((500, 20)), g.standard_normal((500, 20))
    biased, debiased = linear_cka(X, Y), linear_cka(X, Y, debiased=True)
    assert abs(debiased) < 0.05
    # Biased CKA of independent data is about d / sqrt(d^2 + ...) -> O(d/n) ~ 0.04 here.
    assert biased > debiased + 0.02


# ---------------------------------------------------------------------------------------------
# SVCCA, PWCCA


def low_rank_plus_noise(n=400, d=40, rank=4, noise=0.01, seed=10) -> np.ndarray:
    g = rng(seed)
    signal = g.standard_normal((n, rank)) @ g.standard_normal((rank, d))
    return signal + noise * g.standard_normal((n, d))


def test_svcca_full_rank_is_one_under_invertible_maps():
    g = rng(11)
    X = g.standard_normal((300, 12))
    M = g.standard_normal((12, 12)) + 5 * np.eye(12)
    assert svcca(X, X @ M + 1.0, k=12) == pytest.approx(1.0, abs=1e-10)
    assert svcca(X, X @ M, k=(12, 12)) == pytest.approx(1.0, abs=1e-10)


def test_svcca_var_threshold_keeps_few_directions_of_low_rank_data():
    X = low_rank_plus_noise()
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    assert 1 <= _choose_k(s, None, 0.99, "X", 40) <= 4
    assert _choose_k(s, 7, 0.99, "X", 40) == 7
    assert _choose_k(s, None, 1.0, "X", 40) == 40
    # The signal subspace survives a linear map and fresh noise: SVCCA sees it, CKA less so.
    g = rng(12)
    Y = X @ g.standard_normal((40, 30)) + 0.01 * g.standard_normal((400, 30))
    assert svcca(X, Y) > 0.99
    assert 0 <= svcca(X, rng(13).standard_normal((400, 30)), k=5) < 0.5


def test_svcca_rejects_bad_k():
    X = rng(14).standard_normal((50, 6))
    with pytest.raises(ValueError, match="only 6 features"):
        svcca(X, X, k=7)
    with pytest.raises(ValueError, match="positive integer"):
        svcca(X, X, k=0)
    with pytest.raises(ValueError, match="var_threshold"):
        svcca(X, X, var_threshold=1.5)
    with pytest.raises(ValueError, match="pair"):
        svcca(X, X, k=(2, 3, 4))
    assert svcca(X, X, k=[6, 3]) == pytest.approx(1.0, abs=1e-10)


def test_pwcca_of_x_with_itself_is_one():
    X = rng(15).standard_normal((200, 25))
    assert pwcca(X, X) == pytest.approx(1.0, abs=1e-8)
    assert pwcca(X, X @ random_orthogonal(25) + 3) == pytest.approx(1.0, abs=1e-8)


def test_pwcca_drops_rank_deficient_directions():
    g = rng(16)
    X = g.standard_normal((200, 5))
    X = np.hstack([X, X[:, :2] + X[:, 2:4]])   # 7 columns, rank 5
    assert pwcca(X, X) == pytest.approx(1.0, abs=1e-8)
    assert pwcca(X, X[:, :5]) == pytest.approx(1.0, abs=1e-8)


def test_pwcca_is_bounded_and_asymmetric():
    g = rng(17)
    X = g.standard_normal((300, 10))
    Y = np.hstack([X[:, :4] @ g.standard_normal((4, 4)), g.standard_normal((300, 26))])
    forward, backward = pwcca(X, Y), pwcca(Y, X)
    assert 0 <= forward <= 1 and 0 <= backward <= 1
    assert abs(forward - backward) > 1e-3
    independent = pwcca(g.standard_normal((300, 10)), g.standard_normal((300, 15)))
    assert 0 <= independent < 0.5


# ---------------------------------------------------------------------------------------------
# Layer-by-layer matrix and per-head CKA


@pytest.fixture
def layer_stacks():
    g = rng(18)
    base = g.standard_normal((60, 8))
    A = [np.hstack([base @ g.standard_normal((8, w)), g.standard_normal((60, 3))])
         for w in (5, 9, 40, 80)]          # widths 8..83 around n = 60: both sides of n
    B = [a @ g.standard_normal((a.shape[1], 7)) + g.standard_normal((60, 7)) for a in A[:3]]
    return A, B


@pytest.mark.parametrize("method", ["auto", "features", "gram"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_pairwise_loop(layer_stacks, method, debiased):
    A, B = layer_stacks
    M = cka_matrix(A, B, debiased, method=method)
    loop = np.array([[linear_cka(a, b, debiased) for b in B] for a in A])
    assert M.shape == (4, 3)
    np.testing.assert_allclose(M, loop, rtol=0, atol=1e-10)
    # A against itself: one triangle computed, still the full pairwise matrix with unit diagonal.
    MA = cka_matrix(A, A, debiased, method=method)
    loop_a = np.array([[linear_cka(a, b, debiased) for b in A] for a in A])
    np.testing.assert_allclose(MA, loop_a, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.diag(MA), 1.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(MA, MA.T, rtol=0, atol=1e-12)


def test_cka_matrix_accepts_3d_arrays_and_float32():
    g = rng(19)
    A = g.standard_normal((3, 40, 6)).astype(np.float32)
    B = np.stack([a @ g.standard_normal((6, 6)) for a in A.astype(np.float64)])
    M = cka_matrix(A, B)
    loop = np.array([[linear_cka(a, b) for b in B] for a in A])
    np.testing.assert_allclose(M, loop, rtol=0, atol=1e-10)
    assert np.diag(cka_matrix(A, A)) == pytest.approx(np.ones(3), abs=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_per_head_cka_equals_loop(debiased):
    g = rng(20)
    A = g.standard_normal((3, 4, 50, 8)).astype(np.float32)
    B = (A @ g.standard_normal((8, 6)).astype(np.float32)
         + g.standard_normal((3, 4, 50, 6)).astype(np.float32))
    out = per_head_cka(A, B, debiased)
    loop = np.array([[linear_cka(A[l, h], B[l, h], debiased) for h in range(4)]
                     for l in range(3)])
    assert out.shape == (3, 4) and out.dtype == np.float64
    np.testing.assert_allclose(out, loop, rtol=0, atol=1e-9)


def test_per_head_cka_heads_wider_than_samples():
    g = rng(21)
    A, B = g.standard_normal((2, 2, 10, 16)), g.standard_normal((2, 2, 10, 12))
    loop = np.array([[linear_cka(A[l, h], B[l, h]) for h in range(2)] for l in range(2)])
    np.testing.assert_allclose(per_head_cka(A, B), loop, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_raise_value_errors_naming_the_problem():
    g = rng(22)
    X = g.standard_normal((100, 5))
    with pytest.raises(ValueError, match="X has 100 rows but Y has 90: rows must be the same"):
        linear_cka(X, g.standard_normal((90, 5)))
    with pytest.raises(ValueError, match="X has 3 rows; at least 4"):
        linear_cka(X[:3], X[:3], debiased=True)
    assert np.isfinite(linear_cka(X[:3], X[:3] * 2))   # biased CKA is fine with 3 rows
    with pytest.raises(ValueError, match="X has 1 rows; at least 2"):
        linear_cka(X[:1], X[:1])
    bad = X.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        linear_cka(bad, X)
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match="Y contains NaN or inf"):
        linear_cka(X, bad)
    with pytest.raises(ValueError, match="X must be 2-D"):
        linear_cka(X[:, 0], X)
    with pytest.raises(ValueError, match="Y has zero variance"):
        linear_cka(X, np.full((100, 3), 7.0))
    with pytest.raises(ValueError, match="must hold real numbers"):
        linear_cka(X.astype(complex), X)
    for fn in (svcca, pwcca):
        with pytest.raises(ValueError, match="rows must be the same samples"):
            fn(X, X[:90])
        with pytest.raises(ValueError, match="Y contains NaN or inf"):
            fn(X, bad)


def test_bad_inputs_of_batched_functions_name_the_layer_or_head():
    g = rng(23)
    layers = [g.standard_normal((20, 4)) for _ in range(3)]
    with pytest.raises(ValueError, match=r"B\[1\] has 19 rows but B\[0\] has 20"):
        cka_matrix(layers, [layers[0], layers[1][:19]])
    with pytest.raises(ValueError, match=r"A\[0\] has 20 rows but B\[0\] has 19"):
        cka_matrix(layers, [x[:19] for x in layers])
    with pytest.raises(ValueError, match=r"B\[2\] has zero variance"):
        cka_matrix(layers, [layers[0], layers[1], np.ones((20, 4))])
    with pytest.raises(ValueError, match="no layers"):
        cka_matrix([], layers)
    with pytest.raises(ValueError, match="method"):
        cka_matrix(layers, layers, method="fast")

    A = g.standard_normal((2, 3, 20, 4))
    B = A.copy()
    B[1, 2, 5, 0] = np.nan
    with pytest.raises(ValueError, match=r"B\[1, 2\] contains NaN or inf"):
        per_head_cka(A, B)
    B = A.copy()
    B[1, 1] = 3.0
    with pytest.raises(ValueError, match=r"B\[1, 1\] has zero variance"):
        per_head_cka(A, B)
    with pytest.raises(ValueError, match="A has 20 rows but B has 19"):
        per_head_cka(A, A[:, :, :19])
    with pytest.raises(ValueError, match="must be 4-D"):
        per_head_cka(A[0], A[0])
    with pytest.raises(ValueError, match="A has 3 rows; at least 4"):
        per_head_cka(A[:, :, :3], A[:, :, :3], debiased=True)


def test_cka_matrix_route_choice_follows_flop_counts():
    from psilonet.analysis.similarity import _choose_matrix_method

    # Many layers narrower than n but wider than n together: per-layer Grams are cheaper.
    assert _choose_matrix_method(3000, [576] * 31, [576] * 31) == "gram"
    assert _choose_matrix_method(3000, [576] * 31, None) == "gram"
    # A few narrow layers: feature space.
    assert _choose_matrix_method(3000, [64, 64], [64]) == "features"

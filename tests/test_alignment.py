"""Mutual k-NN alignment and the orthogonal Procrustes distance (psilonet.analysis.alignment)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from psilonet.analysis import alignment as A
from psilonet.analysis import compare
from psilonet.app import charts


def reference_mutual_knn(feats_a: np.ndarray, feats_b: np.ndarray, topk: int) -> float:
    """platonic-rep's metrics.py mutual_knn, line by line in numpy, on L2-normalised features
    (their measure_alignment.py normalises before measuring)."""
    def nearest(feats):
        feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
        sim = feats @ feats.T
        np.fill_diagonal(sim, -1e8)
        return np.argsort(-sim, axis=1, kind="stable")[:, :topk]

    knn_a, knn_b = nearest(feats_a), nearest(feats_b)
    n = knn_a.shape[0]
    mask_a, mask_b = np.zeros((n, n)), np.zeros((n, n))
    mask_a[np.arange(n)[:, None], knn_a] = 1.0
    mask_b[np.arange(n)[:, None], knn_b] = 1.0
    return float(((mask_a * mask_b).sum(axis=1) / topk).mean())


def related(seed: int, n: int = 200, d: int = 24, e: int = 16):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, d))
    return x, x @ g.standard_normal((d, e)) * 0.5 + g.standard_normal((n, e))


@pytest.mark.parametrize("seed, k", [(0, 10), (1, 5), (2, 1)])
def test_mutual_knn_equals_the_reference(seed, k):
    x, y = related(seed)
    got = A.mutual_knn(x, y, k)
    assert got == pytest.approx(reference_mutual_knn(x, y, k), abs=1e-12)
    assert 0.0 < got < 1.0
    assert A.mutual_knn(x, x, k) == 1.0 and A.mutual_knn(y.astype(np.float32), y, k) == 1.0


def test_mutual_knn_of_unrelated_data_is_near_chance():
    g = np.random.default_rng(5)
    x, y = g.standard_normal((400, 16)), g.standard_normal((400, 16))
    assert A.mutual_knn(x, y, 10) < 5 * 10 / 399
    with pytest.raises(ValueError, match=r"k: must be in \[1, 399\]"):
        A.mutual_knn(x, y, 400)


def test_procrustes_is_zero_for_a_rotation_and_matches_an_explicit_alignment():
    x, y = related(3, e=24)
    q = ortho_group.rvs(24, random_state=0)
    assert A.procrustes_distance(x, x @ q + 3.0) == pytest.approx(0.0, abs=1e-6)
    # The explicit route: centre, rotate X onto Y (scipy), then netrep's angular distance.
    xc, yc = x - x.mean(0), y - y.mean(0)
    r, _ = orthogonal_procrustes(xc, yc)
    aligned = xc @ r
    cos = (aligned * yc).sum() / (np.linalg.norm(aligned) * np.linalg.norm(yc))
    assert A.procrustes_distance(x, y) == pytest.approx(np.arccos(cos), abs=1e-9)
    assert 0.2 < A.procrustes_distance(x, y) < np.pi / 2
    # Different widths, as between representations of different models.
    assert 0 < A.procrustes_distance(x, y[:, :10]) < np.pi / 2


def test_the_analysis_stores_both_per_layer_and_the_curve_marks_zero_for_the_distance():
    g = np.random.default_rng(4)
    base = [g.standard_normal((60, 8)).astype(np.float32) for _ in range(3)]
    trained = [b + 0.3 * g.standard_normal(b.shape).astype(np.float32) for b in base]
    heads = g.standard_normal((2, 2, 60, 4)).astype(np.float32)
    source = compare.Source("cap-1", "docs", ["baseline", "trained"], 3, 2)
    rows = compare.similarity_rows(source, base, heads, trained, heads, (0, 2))
    layer = {(r[3], r[4]): r[7] for r in rows if r[2] == "layer"}
    for l in range(3):
        assert layer[("mutual_knn", l)] == pytest.approx(A.mutual_knn(base[l], trained[l]))
        assert layer[("procrustes", l)] == pytest.approx(A.procrustes_distance(base[l], trained[l]))
    assert any(r[2] == "novelty" and r[3] == "procrustes:mean" for r in rows)
    import pandas as pd
    sim = pd.DataFrame(rows, columns=["source", "dataset", "view", "metric", "layer", "layer_b", "head", "value",
                                      "representation"])
    spec = charts.layer_similarity_curve(sim, "procrustes").to_dict()
    text = json.dumps(spec)
    assert "Procrustes distance" in text and "dashed line: 0 = unchanged" in text
    assert {"value": 0.0} in [r for rows in spec["datasets"].values() for r in rows if "series" not in r]

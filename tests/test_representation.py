"""Representations (raw, rms, no-sink) on synthetic data with planted attention-sink rows."""

from __future__ import annotations

import numpy as np
import pytest

from psilonet.analysis import representation as R
from psilonet.analysis import similarity


def planted(n: int = 400, d: int = 32, sinks: int = 8, seed: int = 0):
    """Unrelated X, Y (two layers each) sharing a few rows of huge norm along one dimension."""
    g = np.random.default_rng(seed)
    xs = [g.standard_normal((n, d)).astype(np.float32) for _ in range(2)]
    ys = [g.standard_normal((n, d)).astype(np.float32) for _ in range(2)]
    rows = g.choice(n, size=sinks, replace=False)
    for m in xs + ys:
        m[rows, 5] = 500.0   # the massive activation: one dimension, same tokens
    return xs, ys, np.sort(rows)


def test_planted_outliers_make_raw_cka_near_one_and_the_other_representations_do_not():
    xs, ys, rows = planted()
    drop = R.sink_tokens(xs, ys)
    np.testing.assert_array_equal(drop, rows)
    values = {}
    for name in R.REPRESENTATIONS:
        (x, _), (y, _) = R.transform(name, xs, None, drop), R.transform(name, ys, None, drop)
        values[name] = similarity.paired_metrics(x[0], y[0])
        for metric, v in similarity.paired_metrics(x[0], x[0]).items():   # itself: 1 under every choice
            assert v == pytest.approx(1.0, abs=1e-6), (name, metric)
    assert values["raw"]["cka"] > 0.95
    assert values["rms"]["cka"] < 0.5 and values["no-sink"]["cka"] < 0.2
    assert values["no-sink"]["cka_debiased"] == pytest.approx(0.0, abs=0.05)


def test_rms_rows_have_unit_rms_and_no_sink_drops_rows_everywhere():
    xs, ys, rows = planted()
    heads = np.random.default_rng(1).standard_normal((2, 3, 400, 4))
    r, h = R.transform("rms", xs, heads, rows)
    np.testing.assert_allclose(np.sqrt(np.mean(r[1].astype(np.float64) ** 2, axis=1)), 1.0, rtol=1e-5)
    assert h is heads  # head outputs are not normalised (nothing normalises them in the model)
    r, h = R.transform("no-sink", xs, heads, rows)
    assert r[0].shape[0] == 400 - len(rows) and h.shape[2] == 400 - len(rows)
    assert R.rms_normalise(np.zeros((2, 3))).sum() == 0


def test_outlier_statistics_name_the_planted_tokens_and_dimension():
    xs, _, rows = planted()
    stats, outliers, dims = R.norm_stat_rows("baseline", xs)
    assert [s[-1] for s in stats] == [len(rows), len(rows)]
    assert sorted({o[2] for o in outliers}) == list(rows)
    assert dims[0][3] == 5 and dims[0][4] > 0.99


def test_paired_metrics_equal_the_separate_functions():
    g = np.random.default_rng(3)
    x = g.standard_normal((300, 24))
    y = x @ g.standard_normal((24, 20)) * 0.3 + g.standard_normal((300, 20))
    x[:3] *= 40
    got = similarity.paired_metrics(x.astype(np.float32), y.astype(np.float32))
    want = {"cka": similarity.linear_cka(x, y), "cka_debiased": similarity.linear_cka(x, y, debiased=True),
            "svcca": similarity.svcca(x, y), "pwcca": similarity.pwcca(x, y)}
    for metric, v in want.items():
        assert got[metric] == pytest.approx(v, abs=1e-5), metric


def test_unknown_representation_is_named():
    with pytest.raises(R.RepresentationError, match="representation"):
        R.check("centred")

"""Charts of the bio mechanisms: the data they embed and their refusals."""

from __future__ import annotations

import pandas as pd
import pytest

from psilonet.app import bio_charts
from psilonet.generation import bio_eval


def _values(chart) -> list[dict]:
    spec = chart.to_dict()
    return spec["datasets"][next(iter(spec["datasets"]))]


def test_pool_heatmap_holds_one_generation_per_layer_and_head():
    pool = pd.DataFrame([dict(label=lab, layer=l, head=h, level=0.9, attended=0.5 + 0.01 * l)
                         for lab in ("sober", "fatigue 1") for l in range(3) for h in range(2)])
    chart = bio_charts.pool_heatmap(pool, "fatigue 1")
    rows = _values(chart)
    assert len(rows) == 6 and {r["layer"] for r in rows} == {0, 1, 2}
    assert chart.to_dict()["encoding"]["color"]["scale"]["domain"] == [0.5, 1.0]
    assert bio_charts.pool_heatmap(pool, "sober", "level").to_dict()["encoding"]["color"]["scale"]["domain"] == [0.9, 1.0]
    with pytest.raises(ValueError, match="level"):
        bio_charts.pool_heatmap(pool.drop(columns="level"), "sober")


def test_fast_norm_chart_drops_empty_layers_for_its_log_scale():
    norms = pd.DataFrame(dict(label=["hebbian 1"] * 3, layer=[0, 1, 2], norm=[0.0, 2.0, 5.0]))
    assert [r["layer"] for r in _values(bio_charts.fast_norm_chart(norms))] == [1, 2]


def test_eval_chart_shows_each_mechanism_against_sober_with_its_interval():
    rows = [(c, w, m, s, 2.0 + s * (m == "hebbian") + 0.01 * w, 3.0) for c in ("a", "b") for w in range(3)
            for m, s in (("sober", 0.0), ("fatigue", 0.5), ("hebbian", 0.5))]
    summary = bio_eval.summarize(pd.DataFrame(rows, columns=bio_eval.RESULT_COLUMNS))
    chart = bio_charts.bio_eval_chart(summary)
    data = _values(chart)
    assert {(r["corpus"], r["mechanism"]) for r in data} == {(c, m) for c in "ab" for m in ("fatigue", "hebbian")}
    heb = next(r for r in data if r["mechanism"] == "hebbian")
    assert heb["diff"] == pytest.approx(0.5) and heb["low"] <= heb["diff"] <= heb["high"]
    with pytest.raises(ValueError, match="value"):
        bio_charts.bio_eval_chart(summary, "perplexity")

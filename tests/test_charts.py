"""Chart builders: specs built from synthetic store-shaped frames, inspected via ``to_dict()``."""

from __future__ import annotations

import json
from datetime import datetime

import altair as alt
import numpy as np
import pandas as pd
import pytest

from psilonet.app import charts

CHART_TYPES = (alt.Chart, alt.LayerChart, alt.HConcatChart, alt.FacetChart)


# --------------------------------------------------------------------------- helpers


def spec_of(chart) -> dict:
    assert isinstance(chart, CHART_TYPES)
    spec = chart.to_dict()
    json.dumps(spec)  # a valid, serialisable Vega-Lite spec
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    return spec


def datasets(spec: dict) -> list[list[dict]]:
    return list(spec.get("datasets", {}).values())


def all_rows(spec: dict) -> list[dict]:
    return [row for rows in datasets(spec) for row in rows]


def rows_with(spec: dict, key: str) -> list[dict]:
    """Rows of the datasets whose rows carry ``key``."""
    return [row for rows in datasets(spec) for row in rows if key in row]


def find(obj, key):
    """Every value under ``key`` anywhere in a nested spec."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                out.append(v)
            out.extend(find(v, key))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(find(v, key))
    return out


def titles(spec: dict) -> list[str]:
    return [t for t in find(spec, "title") if isinstance(t, str)]


def title_text(spec: dict) -> str:
    t = spec["title"]
    return t["text"] if isinstance(t, dict) else t


def subtitle_text(spec: dict) -> str:
    sub = spec["title"].get("subtitle", "") if isinstance(spec["title"], dict) else ""
    return " ".join(sub) if isinstance(sub, list) else sub


def has_tooltip(spec: dict) -> bool:
    return bool(find(spec, "tooltip"))


# --------------------------------------------------------------------------- fixtures


def metrics_frame(n_steps: int = 50, eval_every: int = 10) -> pd.DataFrame:
    t = datetime(2024, 1, 1)
    rows = []
    for s in range(n_steps):
        rows.append((s, "train", "loss", 3.0 - s / n_steps, t))
        rows.append((s, "train", "grad_norm", 1.0 + 0.01 * s, t))
        rows.append((s, "train", "lr", 1e-3, t))
        if s % eval_every == 0:
            rows.append((s, "val", "skip_loss", 2.9 - s / n_steps, t))
            rows.append((s, "val", "base_loss", 3.1, t))
    return pd.DataFrame(rows, columns=["step", "split", "name", "value", "time"])


def configs_frame() -> pd.DataFrame:
    rows = []
    for dist in ("3", "3,4,5"):
        for variant in ("plain", "gated"):
            for alpha in (0.2, 0.5, 0.8):
                rows.append(dict(config_key=f"{dist}|{alpha}|{variant}", label=f"d{dist} a{alpha} {variant}",
                                 distances=dist, alpha=alpha, variant=variant, n=3, failed=0,
                                 mean=alpha * 2 - (0.5 if variant == "gated" else 0), std=0.1,
                                 ci_low=alpha * 2 - 0.3, ci_high=alpha * 2 + 0.3, best=False, n_paired=3,
                                 p_vs_best=0.04, mean_skip_loss=2.5, mean_base_loss=2.6))
    df = pd.DataFrame(rows)
    df.loc[0, "best"] = True
    df.loc[0, "p_vs_best"] = np.nan
    df.loc[1, ["ci_low", "ci_high", "std"]] = np.nan  # one seed: no CI
    # configs whose every run failed: n == 0, no statistics
    failed = dict(rows[0], config_key="9|0.5|plain", label="d9", distances="9", alpha=0.5, n=0, failed=3,
                  mean=np.nan, std=np.nan, ci_low=np.nan, ci_high=np.nan, best=False, n_paired=0,
                  p_vs_best=np.nan, mean_skip_loss=np.nan, mean_base_loss=np.nan)
    failed2 = dict(failed, config_key="3|0.9|plain", distances="3", alpha=0.9)
    return pd.concat([df, pd.DataFrame([failed, failed2])], ignore_index=True)


N_LAYERS, N_HEADS = 5, 4


def sim_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for source, dataset, shift in (("run-a", "wiki", 0.0), ("run-b", "code", -0.2)):
        for metric in ("cka", "cka_debiased", "svcca", "pwcca"):
            for l in range(N_LAYERS + 1):
                rows.append((source, dataset, "layer", metric, l, None, None, 1.0 - 0.1 * l + shift))
        for metric in ("cka", "cka_debiased"):
            for l in range(N_LAYERS):
                for h in range(N_HEADS):
                    rows.append((source, dataset, "head", metric, l, None, h, float(rng.uniform(0.2, 0.9)) + shift))
        for i in range(N_LAYERS + 1):
            for j in range(N_LAYERS + 1):
                rows.append((source, dataset, "cross_layer", "cka", i, j, None, 1.0 / (1 + abs(i - j)) + shift))
        rows.append((source, dataset, "novelty", "cka:mean", 1, 3, None, 0.5))
    df = pd.DataFrame(rows, columns=charts.SIMILARITY_COLUMNS)
    # as DuckDB returns INTEGER columns holding NULLs
    for col in ("layer", "layer_b", "head"):
        df[col] = df[col].astype("Int32")
    return df


def paths_frame(n_tokens: int = 4, n_layers: int = 6, sources=("run-a",)) -> pd.DataFrame:
    rows = []
    for source in sources:
        for side in ("baseline", "trained"):
            for unit, n in (("token", n_tokens), ("sequence", 2)):
                for u in range(n):
                    for l in range(n_layers + 1):
                        rows.append((source, side, unit, u, f"tok{u}", l, 0.1 * l + u, 0.05 * l * (side == "trained")))
    return pd.DataFrame(rows, columns=charts.PATH_COLUMNS)


def variance_frame(sources=("run-a",)) -> pd.DataFrame:
    rows = []
    for source in sources:
        rows += [(source, 0, 0.4213), (source, 1, 0.1877), (source, 2, 0.05)]
    return pd.DataFrame(rows, columns=["source", "component", "ratio"])


def taps_frame(n_steps: int, n_layers: int = 6, distances=(3, 4, 5)) -> pd.DataFrame:
    steps = np.repeat(np.arange(n_steps), n_layers * len(distances))
    layers = np.tile(np.repeat(np.arange(n_layers), len(distances)), n_steps)
    dist = np.tile(np.array(distances), n_steps * n_layers)
    weight = np.full(len(steps), 1.0 / len(distances))
    weight[steps == n_steps - 1] = np.tile(np.array([0.6, 0.3, 0.1]), n_layers)
    return pd.DataFrame({"step": steps, "layer": layers, "distance": dist, "weight": weight})


def tokens_frame(n_pos: int = 8, intensities=(0.0, 0.5, 1.0), gens_per_intensity: int = 1) -> pd.DataFrame:
    rows, gen = [], 0
    for inten in intensities:
        for _ in range(gens_per_intensity):
            for p in range(n_pos):
                rows.append((gen, inten, p, f" w{p}", 1.0 + inten + 0.1 * p))
            gen += 1
    return pd.DataFrame(rows, columns=list(charts.TOKEN_COLUMNS))


# --------------------------------------------------------------------------- training curves


def test_loss_curves_series_and_baseline():
    metrics = metrics_frame()
    spec = spec_of(charts.loss_curves(metrics, base_loss=3.1))
    series = {row["series"] for row in rows_with(spec, "series")}
    assert series == {charts.TRAIN_LOSS_LABEL, charts.VAL_LOSS_LABEL, charts.BASELINE_LABEL}
    train = [r for r in rows_with(spec, "series") if r["series"] == charts.TRAIN_LOSS_LABEL]
    val = [r for r in rows_with(spec, "series") if r["series"] == charts.VAL_LOSS_LABEL]
    assert len(train) == 50 and len(val) == 5
    assert [r["value"] for r in val] == pytest.approx([2.9 - s / 50 for s in range(0, 50, 10)])
    base = [r for r in rows_with(spec, "series") if r["series"] == charts.BASELINE_LABEL]
    assert base and all(r["value"] == pytest.approx(3.1) for r in base)
    assert "rule" in json.dumps(spec)
    assert spec["width"] == "container" and title_text(spec)
    assert "step" in titles(spec) and has_tooltip(spec)
    assert charts.BASELINE_LABEL in find(spec, "domain")[0]
    assert "_" not in charts.VAL_LOSS_LABEL + charts.TRAIN_LOSS_LABEL  # human names, not column names
    marks = [m["type"] if isinstance(m, dict) else m for m in find(spec, "mark")]
    assert "text" not in marks and marks.count("rule") == 1  # the baseline is shown once: rule + legend entry
    assert find(spec, "tickMinStep")[0] == 1
    # no time column, no other metrics in the spec
    assert not any("time" in r for r in all_rows(spec))
    assert not any(r.get("value") == 1e-3 for r in all_rows(spec))


@pytest.mark.parametrize("base", [None, float("nan")])
def test_loss_curves_without_baseline(base):
    spec = spec_of(charts.loss_curves(metrics_frame(), base_loss=base))
    assert charts.BASELINE_LABEL not in {r.get("series") for r in all_rows(spec)}
    assert "rule" not in json.dumps(spec)


def test_loss_curves_thins_long_runs():
    spec = spec_of(charts.loss_curves(metrics_frame(n_steps=6000, eval_every=100), base_loss=2.0))
    train = [r for r in rows_with(spec, "series") if r["series"] == charts.TRAIN_LOSS_LABEL]
    assert len(train) <= charts.MAX_CURVE_POINTS
    steps = [r["step"] for r in train]
    assert steps[0] == 0 and steps[-1] == 5999


def test_grad_norm_chart():
    spec = spec_of(charts.grad_norm_chart(metrics_frame()))
    rows = rows_with(spec, "value")
    assert len(rows) == 50 and rows[0]["value"] == pytest.approx(1.0)
    assert spec["width"] == "container" and has_tooltip(spec) and "gradient norm" in titles(spec)


def test_training_charts_missing_columns():
    with pytest.raises(ValueError, match="split"):
        charts.loss_curves(metrics_frame().drop(columns=["split"]), 3.0)
    with pytest.raises(ValueError, match="name.*value|value.*name"):
        charts.grad_norm_chart(metrics_frame().drop(columns=["name", "value"]))


# --------------------------------------------------------------------------- sweeps


def test_therapeutic_window():
    configs = configs_frame()
    spec = spec_of(charts.therapeutic_window(configs))
    rows = [r for r in rows_with(spec, "series")]
    # n == 0 configs dropped (including the only row of distances "9")
    assert all(r["n"] > 0 for r in rows)
    assert "9" not in {r["series"] for r in rows}
    assert not any(r["alpha"] == 0.9 for r in rows)
    assert {r["series"] for r in rows} == {"3", "3 gated", "3,4,5", "3,4,5 gated"}
    assert find(spec, "domain")[0] == ["3", "3 gated", "3,4,5", "3,4,5 gated"] or \
        ["3", "3 gated", "3,4,5", "3,4,5 gated"] in find(spec, "domain")
    # error bars skip the row without a CI; the points keep it
    point_rows = [d for d in datasets(spec) if d and "series" in d[0] and len(d) == 12]
    bar_rows = [d for d in datasets(spec) if d and "series" in d[0] and len(d) == 11]
    assert point_rows and bar_rows
    assert all(r["ci_low"] is not None for r in bar_rows[0])
    tips = {t.get("field") for t in find(spec, "tooltip")[-1]}
    assert {"n", "std", "ci_low", "ci_high", "p_vs_best"} <= tips
    assert spec["width"] == "container" and "alpha (skip mix)" in titles(spec)


def test_therapeutic_window_missing_columns():
    with pytest.raises(ValueError, match="ci_low"):
        charts.therapeutic_window(configs_frame().drop(columns=["ci_low"]))


# --------------------------------------------------------------------------- similarity


def test_similarity_domain():
    sim = sim_frame()
    lo, hi = charts.similarity_domain(sim, "head", "cka")
    values = sim[(sim.view == "head") & (sim.metric == "cka")]["value"]
    assert (lo, hi) == (pytest.approx(values.min()), pytest.approx(values.max()))
    assert charts.similarity_domain(sim, "head", "nope") == (0.0, 1.0)
    assert charts.similarity_domain(sim.iloc[0:0], "layer", "cka") == (0.0, 1.0)


def test_layer_similarity_curve():
    sim = sim_frame()
    spec = spec_of(charts.layer_similarity_curve(sim, "svcca"))
    rows = rows_with(spec, "series")
    assert len(rows) == 2 * (N_LAYERS + 1)
    assert {r["series"] for r in rows} == {"run-a (wiki)", "run-b (code)"}
    lo, hi = min(r["value"] for r in rows), 1.0
    pad = 0.1 * (hi - lo)
    domains = find(spec, "domain")
    assert len(domains) == 2 and all(d == [pytest.approx(lo - pad), pytest.approx(hi + pad)] for d in domains)
    assert {"value": 1.0} in rows_with(spec, "value")  # the reference line at 1.0
    assert spec["width"] == "container" and spec["height"] >= 300 and has_tooltip(spec)
    assert "SVCCA per layer" in json.dumps(spec["title"])
    spec = spec_of(charts.layer_similarity_curve(sim, "cka", "rms"))
    assert "Linear CKA per layer" in json.dumps(spec["title"]) and "RMS-normalised" in json.dumps(spec["title"])


def test_head_heatmap_uses_domain():
    sim = sim_frame()
    spec = spec_of(charts.head_heatmap(sim, "cka", "run-a", domain=(-0.25, 1.5)))
    rows = rows_with(spec, "head")
    assert len(rows) == N_LAYERS * N_HEADS
    assert all(isinstance(r["head"], int) and isinstance(r["layer"], int) for r in rows)
    assert spec["encoding"]["color"]["scale"]["domain"] == [-0.25, 1.5]
    assert spec["encoding"]["x"]["type"] == "ordinal" and spec["encoding"]["y"]["type"] == "ordinal"
    assert spec["encoding"]["y"]["sort"] == "ascending"  # layer 0 at the top
    assert isinstance(spec["width"], int)
    assert {t["field"] for t in spec["encoding"]["tooltip"]} == {"layer", "head", "value"}
    # default domain: shared over all sources
    default = spec_of(charts.head_heatmap(sim, "cka", "run-b"))
    assert default["encoding"]["color"]["scale"]["domain"] == pytest.approx(
        list(charts.similarity_domain(sim, "head", "cka")))


def test_cross_layer_heatmap():
    sim = sim_frame()
    spec = spec_of(charts.cross_layer_heatmap(sim, "run-b", (0.0, 1.0)))
    rows = rows_with(spec, "layer_b")
    assert len(rows) == (N_LAYERS + 1) ** 2
    assert spec["encoding"]["color"]["scale"]["domain"] == [0.0, 1.0]
    assert spec["encoding"]["x"]["field"] == "layer_b"
    assert spec["encoding"]["x"]["title"] == "trained state (0 = embeddings)"  # residual states, not blocks
    assert spec["encoding"]["y"]["field"] == "layer"
    assert spec["encoding"]["y"]["title"] == "baseline state (0 = embeddings)"
    assert min(r["value"] for r in rows) == pytest.approx(1.0 / (1 + N_LAYERS) - 0.2)


def test_side_by_side_shares_colour():
    sim = sim_frame()
    domain = charts.similarity_domain(sim, "cross_layer", "cka")
    combined = charts.side_by_side([charts.cross_layer_heatmap(sim, s, domain) for s in ("run-a", "run-b")])
    assert isinstance(combined, alt.HConcatChart)
    spec = spec_of(combined)
    assert spec["resolve"]["scale"]["color"] == "shared"
    assert len(spec["hconcat"]) == 2
    assert all(c["encoding"]["color"]["scale"]["domain"] == pytest.approx(list(domain)) for c in spec["hconcat"])
    with pytest.raises(ValueError):
        charts.side_by_side([])


def test_heatmaps_side_by_side_keep_the_sources_with_rows_on_one_scale():
    sim = sim_frame()
    heads = spec_of(charts.head_heatmaps(sim, "cka", ["run-b", "run-a", "run-z"], "rms"))
    assert [c["title"]["subtitle"].split(" (")[0] for c in heads["hconcat"]] == ["run-b", "run-a"]  # run-z: no rows
    domain = list(charts.similarity_domain(sim, "head", "cka"))
    assert all(c["encoding"]["color"]["scale"]["domain"] == pytest.approx(domain) for c in heads["hconcat"])
    assert heads["resolve"]["scale"]["color"] == "shared"
    assert sum(c["width"] for c in heads["hconcat"]) <= charts.SIDE_BY_SIDE_WIDTH
    # one source alone: the scale is that source's range, not the other's
    only_a = spec_of(charts.cross_layer_heatmaps(sim, ["run-a"]))
    a_rows = sim[(sim.view == "cross_layer") & (sim.source == "run-a")].value
    assert only_a["hconcat"][0]["encoding"]["color"]["scale"]["domain"] == pytest.approx([a_rows.min(), a_rows.max()])
    with pytest.raises(ValueError, match="none of the sources run-z"):
        charts.cross_layer_heatmaps(sim, ["run-z"])


def test_novelty_stats_matches_pandas():
    sim = sim_frame()
    out = charts.novelty_stats(sim, "cka", 1, 3)
    assert list(out.columns) == ["source", "dataset", "mean", "min", "max"]
    layer = sim[(sim.view == "layer") & (sim.metric == "cka") & sim.layer.between(1, 3)]
    expected = layer.groupby(["source", "dataset"])["value"].agg(["mean", "min", "max"]).reset_index()
    pd.testing.assert_frame_equal(out.reset_index(drop=True), expected.sort_values("source").reset_index(drop=True))
    assert out.loc[out.source == "run-a", "mean"].item() == pytest.approx(np.mean([0.9, 0.8, 0.7]))
    with pytest.raises(ValueError):
        charts.novelty_stats(sim, "cka", 3, 1)


def test_similarity_missing_columns():
    sim = sim_frame().drop(columns=["view", "head"])
    for call in (lambda: charts.layer_similarity_curve(sim, "cka"),
                 lambda: charts.head_heatmap(sim, "cka", "run-a", (0, 1)),
                 lambda: charts.cross_layer_heatmap(sim, "run-a", (0, 1)),
                 lambda: charts.similarity_domain(sim, "head", "cka"),
                 lambda: charts.novelty_stats(sim, "cka", 0, 2)):
        with pytest.raises(ValueError, match="view, head"):
            call()


# --------------------------------------------------------------------------- trajectories


def test_trajectory_chart():
    spec = spec_of(charts.trajectory_chart(paths_frame(), variance_frame(), "token", None))
    rows = rows_with(spec, "pc1")
    assert len(rows) == 2 * 4 * 7  # sides x tokens x states
    assert "PC1 (42.1% var)" in titles(spec) and "PC2 (18.8% var)" in titles(spec)
    dumped = json.dumps(spec)
    assert '"order"' in dumped and '"strokeDash"' in dumped
    line = spec["layer"][0]["encoding"]
    assert line["order"]["field"] == "layer"
    assert line["strokeDash"]["scale"]["domain"] == ["baseline", "trained"]
    assert line["strokeDash"]["scale"]["range"][0] == [1, 0]  # baseline solid
    points = spec["layer"][1]["encoding"]
    assert points["color"]["field"] == "label" and points["color"]["type"] == "nominal"  # one colour per token
    assert line["color"]["field"] == "label"
    assert points["size"]["field"] == "layer" and points["size"]["type"] == "quantitative"
    tags = {r["tag"] for r in rows_with(spec, "tag")}
    assert tags == {"", "L0", "L6"}  # start and end labelled, by a filter on the path rows


def test_trajectory_end_labels_that_would_overlap_are_drawn_once():
    paths = paths_frame()
    # Every trained path ends where its baseline path ends: one "L6" per token, not two.
    last = paths.layer == paths.layer.max()
    paths.loc[last & (paths.side == "trained"), "pc2"] = 0.0
    rows = rows_with(spec_of(charts.trajectory_chart(paths, variance_frame(), "token")), "tag")
    ends = [(r["pc1"], r["pc2"]) for r in rows if r["tag"] == "L6"]
    assert len(ends) == 4 and len(set(ends)) == 4  # tokens 1 apart on PC1 keep their own labels
    apart = rows_with(spec_of(charts.trajectory_chart(paths_frame(), variance_frame(), "token")), "tag")
    assert sum(r["tag"] == "L6" for r in apart) == 8  # ends far apart keep every label


def test_trajectory_chart_filters_units_and_sources():
    spec = spec_of(charts.trajectory_chart(paths_frame(), variance_frame(), "token", [1, 3]))
    assert {r["unit_id"] for r in rows_with(spec, "pc1")} == {1, 3}
    spec = spec_of(charts.trajectory_chart(paths_frame(), variance_frame(), "sequence", None))
    assert len(rows_with(spec, "pc1")) == 2 * 2 * 7
    two = paths_frame(sources=("run-a", "run-b"))
    with pytest.raises(ValueError, match="source"):
        charts.trajectory_chart(two, variance_frame(("run-a", "run-b")), "token", None)
    spec = spec_of(charts.trajectory_chart(two, variance_frame(("run-a", "run-b")), "token", None, source="run-b"))
    assert len(rows_with(spec, "pc1")) == 2 * 4 * 7


def test_trajectory_chart_row_limit():
    spec = spec_of(charts.trajectory_chart(paths_frame(n_tokens=400, n_layers=9), variance_frame(), "token", None))
    assert len(rows_with(spec, "pc1")) <= charts.MAX_ROWS
    assert "first" in subtitle_text(spec)


def test_trajectory_missing_columns():
    with pytest.raises(ValueError, match="pc2"):
        charts.trajectory_chart(paths_frame().drop(columns=["pc2"]), variance_frame(), "token", None)
    with pytest.raises(ValueError, match="ratio"):
        charts.trajectory_chart(paths_frame(), variance_frame().drop(columns=["ratio"]), "token", None)


# --------------------------------------------------------------------------- taps and gates


def test_tap_weight_evolution_small():
    spec = spec_of(charts.tap_weight_evolution(taps_frame(20)))
    assert len(rows_with(spec, "weight")) == 20 * 6 * 3
    assert spec["facet"]["column"]["field"] == "distance"
    inner = spec["spec"]
    assert inner["mark"]["type"] == "rect" if isinstance(inner["mark"], dict) else inner["mark"] == "rect"
    assert inner["encoding"]["x"]["field"] == "step" and inner["encoding"]["y"]["field"] == "layer"
    weights = [r["weight"] for r in rows_with(spec, "weight")]
    assert inner["encoding"]["color"]["scale"]["domain"] == pytest.approx([min(weights), max(weights)])
    assert "observed range" in subtitle_text(spec)
    n_distances = len({r["distance"] for r in rows_with(spec, "weight")})
    assert n_distances * inner["width"] + 20 * (n_distances - 1) <= charts.PAGE_WIDTH  # the panels fit the page together
    assert "subsampled" not in subtitle_text(spec)


def test_tap_weight_evolution_subsamples():
    taps = taps_frame(1000)  # 18 000 rows
    spec = spec_of(charts.tap_weight_evolution(taps))
    rows = rows_with(spec, "weight")
    steps = sorted({r["step"] for r in rows})
    assert len(steps) <= charts.MAX_TAP_STEPS and steps[0] == 0 and steps[-1] == 999
    assert len(rows) == len(steps) * 18  # whole steps kept
    assert "subsampled" in subtitle_text(spec) and "of 1000" in subtitle_text(spec)


def test_tap_weight_heatmap():
    spec = spec_of(charts.tap_weight_heatmap(taps_frame(5)))
    rows = rows_with(spec, "weight")
    assert len(rows) == 6 * 3
    assert sorted({r["weight"] for r in rows}) == pytest.approx([0.1, 0.3, 0.6])  # final step only
    assert spec["encoding"]["color"]["scale"]["domain"] == pytest.approx([0.1, 0.6])  # the data's range
    assert spec["encoding"]["x"]["field"] == "distance" and spec["encoding"]["x"]["type"] == "ordinal"
    assert "step 4" in subtitle_text(spec)


def test_gate_alpha_heatmap():
    gates = pd.DataFrame([(s, l, h, 0.1 * h + 0.01 * s) for s in (0, 10) for l in range(3) for h in range(4)],
                         columns=list(charts.GATE_COLUMNS))
    spec = spec_of(charts.gate_alpha_heatmap(gates))
    rows = rows_with(spec, "alpha")
    assert len(rows) == 12
    assert rows[0]["alpha"] == pytest.approx(0.1)  # step 10, head 0
    assert spec["encoding"]["color"]["scale"]["domain"] == pytest.approx([0.1, 0.4])  # final step's range
    flat = gates.assign(alpha=0.5)
    assert spec_of(charts.gate_alpha_heatmap(flat))["encoding"]["color"]["scale"]["domain"] == pytest.approx([0.49, 0.51])
    assert spec["encoding"]["x"]["field"] == "head" and spec["encoding"]["y"]["field"] == "layer"


def test_tap_and_gate_missing_columns():
    with pytest.raises(ValueError, match="distance"):
        charts.tap_weight_evolution(taps_frame(3).drop(columns=["distance"]))
    with pytest.raises(ValueError, match="weight"):
        charts.tap_weight_heatmap(taps_frame(3).drop(columns=["weight"]))
    with pytest.raises(ValueError, match="alpha"):
        charts.gate_alpha_heatmap(pd.DataFrame({"step": [0], "layer": [0], "head": [0]}))


# --------------------------------------------------------------------------- entropy


def test_entropy_heatmap():
    spec = spec_of(charts.entropy_heatmap(tokens_frame()))
    rows = rows_with(spec, "entropy")
    assert len(rows) == 3 * 8
    assert "next-token entropy (bits)" in title_text(spec)
    assert spec["encoding"]["x"]["field"] == "pos" and spec["encoding"]["x"]["type"] == "ordinal"
    assert spec["encoding"]["y"]["type"] == "ordinal"
    assert spec["encoding"]["y"]["sort"] == ["0 (sober)", "0.5", "1"]  # presets named
    assert {t["field"] for t in spec["encoding"]["tooltip"]} >= {"token_text", "entropy"}
    assert isinstance(spec["width"], int)
    assert spec["height"] >= 20 * 3  # rows tall enough to read
    assert spec["encoding"]["color"]["legend"]["orient"] == "top"


def test_dose_overview_one_row_per_prompt():
    gens = pd.DataFrame([(line, f"prompt <{line}> " + "x" * 60, i, 1.0 + i + line)
                         for line in (1, 2, 3) for i in (0.0, 0.2) for _ in range(2)],
                        columns=["prompt_line", "prompt", "intensity", "mean_entropy"])
    spec = spec_of(charts.dose_overview(gens))
    rows = rows_with(spec, "mean_entropy")
    assert len(rows) == 6  # seeds averaged
    assert spec["encoding"]["y"]["sort"][0].startswith("1. prompt <1>") and spec["height"] >= 3 * 20
    assert spec["encoding"]["x"]["sort"] == ["0 (sober)", "0.2 (dose)"]  # the number, then the preset


def test_entropy_heatmap_shared_intensity_and_limit():
    spec = spec_of(charts.entropy_heatmap(tokens_frame(n_pos=4, intensities=(0.5,), gens_per_intensity=2)))
    assert spec["encoding"]["y"]["sort"] == ["0.5 · #0", "0.5 · #1"]
    big = spec_of(charts.entropy_heatmap(tokens_frame(n_pos=3000, intensities=(0.0, 1.0))))
    assert len(rows_with(big, "entropy")) <= charts.MAX_ROWS
    assert "positions up to" in subtitle_text(big)


def test_layer_entropy_profile_averages():
    raw = pd.DataFrame([(i, l, p, 2.0 + i + l + p) for i in (0.0, 1.0) for l in range(4) for p in (0, 1)],
                       columns=["intensity", "layer", "pos", "entropy"])
    spec = spec_of(charts.layer_entropy_profile(raw))
    rows = rows_with(spec, "entropy")
    assert len(rows) == 2 * 4
    row = next(r for r in rows if r["intensity"] == 1.0 and r["layer"] == 2)
    assert row["entropy"] == pytest.approx(5.5)  # mean of 5 and 6
    assert "pos" not in row
    assert spec["width"] == "container" and "mean entropy (bits)" in titles(spec)


def test_entropy_missing_columns():
    with pytest.raises(ValueError, match="token_text"):
        charts.entropy_heatmap(tokens_frame().drop(columns=["token_text"]))
    with pytest.raises(ValueError, match="intensity"):
        charts.layer_entropy_profile(pd.DataFrame({"layer": [0], "entropy": [1.0]}))


# --------------------------------------------------------------------------- all builders


def test_empty_frames_still_give_specs():
    sim = sim_frame().iloc[0:0]
    for chart in (charts.loss_curves(metrics_frame().iloc[0:0], 2.0),
                  charts.grad_norm_chart(metrics_frame().iloc[0:0]),
                  charts.therapeutic_window(configs_frame().iloc[0:0]),
                  charts.layer_similarity_curve(sim, "cka"),
                  charts.head_heatmap(sim, "cka", "x", (0, 1)),
                  charts.cross_layer_heatmap(sim, "x", (0, 1)),
                  charts.trajectory_chart(paths_frame().iloc[0:0], variance_frame(), "token", None),
                  charts.tap_weight_evolution(taps_frame(1).iloc[0:0]),
                  charts.tap_weight_heatmap(taps_frame(1).iloc[0:0]),
                  charts.entropy_heatmap(tokens_frame().iloc[0:0]),
                  charts.layer_entropy_profile(pd.DataFrame(columns=["intensity", "layer", "entropy"]))):
        spec_of(chart)


# --------------------------------------------------------------------------- charts name what they show


def test_layer_axes_say_whether_they_count_states_or_blocks():
    sim = sim_frame()
    curve = spec_of(charts.layer_similarity_curve(sim[sim.view == "layer"], "cka"))
    assert charts.STATES_AXIS in titles(curve) and "0 = embeddings" in charts.STATES_AXIS
    heads = spec_of(charts.head_heatmap(sim, "cka", "run-a", (0, 1)))
    assert heads["encoding"]["y"]["title"] == charts.BLOCKS_AXIS  # heads live in blocks
    assert "block" in charts.BLOCKS_AXIS and "embeddings" not in charts.BLOCKS_AXIS
    taps = spec_of(charts.tap_weight_heatmap(taps_frame(3)))
    assert taps["encoding"]["y"]["title"] == charts.BLOCKS_AXIS
    assert all(spec_of(p)["encoding"]["y"]["title"] == charts.BLOCKS_AXIS
               for p in charts.tap_weight_panels(taps_frame(3)))


def test_the_novelty_table_is_titled_with_its_window_and_metric():
    title = charts.novelty_title("svcca", 3, 7)
    assert charts.METRIC_TITLES["svcca"] in title and "3–7" in title and "0 = embeddings" in title
    assert charts.novelty_title("cka", 3, 7) != title


def test_the_outlier_threshold_is_in_the_legend_with_its_ratio():
    stats = pd.DataFrame([(side, layer, 1.0 + layer, 5.0, 40.0, 10.0 * (1.0 + layer), layer)
                          for side in ("baseline", "trained") for layer in range(3)],
                         columns=list(charts.NORM_COLUMNS))
    spec = spec_of(charts.token_norm_profile(stats, "capture-x"))
    colour = spec["encoding"]["color"]
    assert colour["scale"]["domain"][-1] == "outlier threshold (10x median)"
    assert colour["scale"]["range"][-1] == "#999999" and "legend" in colour  # drawn, and named in the legend
    assert {r["statistic"] for r in rows_with(spec, "statistic")} == set(colour["scale"]["domain"])
    assert [r["norm"] for r in rows_with(spec, "statistic") if r["statistic"].startswith("outlier")] == \
        [10.0, 20.0, 30.0] * 2


def test_intensities_show_their_number_and_preset_name():
    gens = pd.DataFrame([(1, "p", i, 1.0 + i) for i in (0.0, 0.1, 0.3, 0.45)],
                        columns=["prompt_line", "prompt", "intensity", "mean_entropy"])
    sort = spec_of(charts.dose_overview(gens))["encoding"]["x"]["sort"]
    assert sort == ["0 (sober)", "0.1 (micro-dose)", "0.3 (double dose)", "0.45"]

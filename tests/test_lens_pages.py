"""The capture's stored lens and attention summaries, the Lens and Attention pages and their charts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from psilonet.analysis import attention as A
from psilonet.analysis import capture, capture_lens
from psilonet.analysis import lens as L
from psilonet.store import Store

from conftest import open_app_page


def capture_run(data) -> str:
    return Store(data).list_runs(kind="capture").run_id.iloc[0]


# ---------------------------------------------------------------------- stored summaries

def test_capture_summaries_equal_a_direct_lens_and_pattern_computation(filled):
    """The stored corpus lens, attention summaries, grid and patterns of both sides equal
    lens.logit_lens and attention.patterns run afresh on the same windows."""
    from psilonet.training import loop as training

    data, train_id = filled
    store = Store(data)
    run_id = capture_run(data)
    cfg = capture.CaptureConfig.from_dict({k: v for k, v in store.get_run(run_id)["config"].items()
                                           if k in capture.CaptureConfig.__dataclass_fields__})
    trained, tokenizer, _ = training.load_trained(store, train_id, data_dir=data)
    windows = capture.evaluation_windows(tokenizer, cfg, data)
    n = capture_lens.summary_windows(len(windows), cfg.seq_len, cfg.lens_positions)
    assert n == len(windows) == 4  # the fixture's 4 x 16 tokens, under the default 128 positions
    with store.open_run(run_id) as reader:
        summary, att, grid = reader.lens_summary(), reader.attention_summary(), reader.lens_grid()
        stored_base = reader.stored_matrices(capture_lens.PATTERNS_FILE, "trained", "base")
        stored_tap = reader.stored_matrices(capture_lens.PATTERNS_FILE, "trained", "2")
    assert set(summary.side) == set(att.side) == set(grid.side) == {"baseline", "trained"}
    g = min(cfg.grid_positions, cfg.seq_len)
    for side, model in (("baseline", trained.base), ("trained", trained)):
        lens = L.logit_lens(model, windows[:n], top_k=1)
        mine = summary[summary.side == side].set_index("layer")
        has = lens.next_tokens >= 0
        np.testing.assert_allclose(mine.kl_final, lens.kl_final.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mine.entropy, lens.entropy.mean(axis=(0, 2)), rtol=1e-5)
        np.testing.assert_allclose(mine.rank_mean, [lens.rank_next[:, l][has].mean() for l in range(lens.num_layers + 1)])
        np.testing.assert_allclose(mine.rank_median, [np.median(lens.rank_next[:, l][has]) for l in range(lens.num_layers + 1)])
        top = lens.top_ids[..., 0]
        np.testing.assert_allclose(mine.top1_final, (top == top[:, -1:]).mean(axis=(0, 2)))
        assert mine.top1_final.iloc[-1] == 1 and mine.kl_final.iloc[-1] == 0
        cells = grid[(grid.side == side)]
        assert len(cells) == (lens.num_layers + 1) * g
        row = cells[(cells.layer == 1)].sort_values("pos")
        assert list(row.top1) == [tokenizer.decode([int(i)]) for i in top[0, 1, :g]]
        assert list(row.token_text) == [tokenizer.decode([int(i)]) for i in windows[0, :g]]
        np.testing.assert_allclose(row.kl_final, lens.kl_final[0, 1, :g], rtol=1e-5, atol=1e-6)
        for layer in (0, 2):
            pats = A.patterns(model, windows[:n], layer)
            for tap, p in pats.items():
                want = A.summaries(p)
                got = att[(att.side == side) & (att.layer == layer) & (att.tap == str(tap))].sort_values("head")
                for col in ("entropy", "sink", "distance"):
                    np.testing.assert_allclose(got[col], want[col].mean(0), rtol=1e-4, atol=1e-6)
                if side == "trained":
                    stored = stored_base if tap == A.BASE else stored_tap if tap == 2 else None
                    if stored is not None:
                        np.testing.assert_allclose(stored[(layer, 0)], p[0, 0, :g, :g], atol=1e-6)
    assert (2, 0) in stored_tap and (0, 0) not in stored_tap  # taps only where the block has them


def test_capture_without_summaries_and_an_old_run_read_empty(filled, tmp_path):
    import shutil

    from jobs import capture as capture_job

    data, train_id = tmp_path / "data", filled[1]
    shutil.copytree(filled[0], data)  # the session's data folder stays as the other tests expect it
    # --lens-positions 0 writes none of them: the reader gives empty frames, as for an old run.
    assert capture_job.main(["--run", train_id, "--seq-len", "8", "--samples", "2", "--max-tokens", "8",
                             "--lens-positions", "0", "--data-dir", str(data), "--quiet"]) == 0
    run_id = capture_run(data)
    with Store(data).open_run(run_id) as reader:
        assert reader.lens_summary().empty and reader.attention_summary().empty and reader.lens_grid().empty
        assert reader.stored_matrices(capture_lens.PATTERNS_FILE, "trained", "base") == {}
        assert list(reader.lens_summary().columns) == ["side", "layer", "positions", "kl_final", "rank_mean",
                                                       "rank_median", "top1_final", "entropy"]
    assert Store(data).get_run(run_id)["summary"]["lens_windows"] == 0


# ---------------------------------------------------------------------- pages

def open_page(page: str, params: dict | None = None):
    at = open_app_page(page, params)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def specs(at) -> list[str]:
    """Each chart's spec as text, its unicode unescaped (labels hold · and α)."""
    return [json.dumps(json.loads(c.proto.spec), ensure_ascii=False) for c in at.get("vega_lite_chart")]


def test_lens_page_draws_the_stored_grid_and_curves_and_keeps_its_state_in_the_url(filled, monkeypatch):
    data, _ = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    run_id = capture_run(data)
    at = open_page("lens", {"run": run_id, "colour": "kl_final", "side": "baseline", "pos": "2,9"})
    assert at.radio(key="lens_colour").value == "kl_final" and at.radio(key="lens_side").value == "baseline"
    assert at.slider(key="slider_pos").value == (2, 9)
    drawn = specs(at)
    assert len(drawn) == 3  # the grid, KL to final, next-token rank
    assert "KL to the final layer (nats)" in drawn[0] and '"text"' in drawn[0]
    assert "baseline (frozen model)" in drawn[1] and "trained (skip model)" in drawn[1]
    assert at.get("download_button")
    at.radio(key="lens_colour").set_value("p_top1").run()
    assert at.query_params["colour"] == "p_top1" and at.query_params["run"] == run_id
    assert at.query_params["pos"] == "2,9"


def test_lens_page_reads_a_typed_prompt_with_a_dose(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("lens", {"view": "live", "model": train_id, "prompt": "Hello there friend", "doses": "0.1,0.3"})
    assert at.multiselect(key="lens_doses").value == ["micro-dose", "double dose"]
    at.button(key="lens_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    drawn = specs(at)
    assert len(drawn) == 3
    for label in ("baseline (frozen model)", "trained, sober", "trained, dose 0.1", "trained, dose 0.3"):
        assert label in drawn[1], label
    assert at.query_params["view"] == "live" and at.query_params["doses"] == "0.1,0.3"
    # The tuned lens without a tuned-lens run: refused in words, nothing runs.
    at = open_page("lens", {"view": "live", "lens": "tuned"})
    assert any("No tuned lens is trained" in w.value for w in at.warning)
    assert at.button(key="lens_go").disabled


def test_attention_page_draws_the_head_grid_and_summaries_and_keeps_its_state(filled, monkeypatch):
    data, _ = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    run_id = capture_run(data)
    at = open_page("attention", {"run": run_id, "layer": "2", "n": "6", "metric": "entropy", "side": "trained"})
    assert at.selectbox(key="att_layer").value == 2 and at.slider(key="att_n").value == 6
    drawn = specs(at)
    assert len(drawn) == 3  # head grid, baseline and trained summary heatmaps
    assert "tap d=1" in drawn[0] and "tap d=2" in drawn[0] and "base attention" in drawn[0]
    assert "α " in drawn[0] and "weight " in drawn[0]  # the gated run's learned weights in the labels
    assert "baseline: attention entropy" in drawn[1] and "trained: attention entropy" in drawn[2]
    at.radio(key="att_metric").set_value("distance").run()
    assert at.query_params["metric"] == "distance" and at.query_params["layer"] == "2"
    at = open_page("attention", {"run": run_id, "layer": "99"})
    assert len(at.warning) == 1 and "`layer=99`" in at.warning[0].value


def test_pages_name_the_command_for_a_capture_without_summaries(filled, tmp_path, monkeypatch):
    import shutil

    from psilonet.store import tables as T

    data = tmp_path / "data"
    shutil.copytree(filled[0], data)
    run_id = capture_run(data)
    db = Store(data).run_dir(run_id) / "run.duckdb"
    import duckdb  # an old capture: made before these tables existed

    with duckdb.connect(str(db)) as con:
        for table in (T.LENS_SUMMARY, T.ATTENTION_SUMMARY, T.LENS_GRID):
            con.execute(f"DROP TABLE {table.name}")
    (Store(data).run_dir(run_id) / capture_lens.PATTERNS_FILE).unlink()
    monkeypatch.setenv("PSILONET_DATA", str(data))
    for page in ("lens", "attention"):
        at = open_page(page, {"run": run_id})
        assert any("jobs.capture --run" in i.value for i in at.info), page
        assert not at.get("vega_lite_chart")


def test_empty_store_pages(tmp_path, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    for page in ("lens", "attention"):
        at = open_page(page)
        assert any("No complete capture run" in i.value for i in at.info)


def test_dose_page_shows_where_each_dose_takes_hold_for_a_stored_run(filled, monkeypatch):
    data, _ = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    dose_id = Store(data).list_runs(kind="dose").run_id.iloc[-1]
    at = open_page("dose", {"view": "stored", "dose_run": dose_id})
    before = len(at.get("vega_lite_chart"))
    at.button(key="depth_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    drawn = specs(at)
    assert len(drawn) == before + 1 and "Where each dose takes hold" in drawn[-1]
    assert at.query_params["depth"] == "1"


# ---------------------------------------------------------------------- charts and frames

def grid_frame(layers: int = 4, positions: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(layer=l, pos=t, token_text=f" tok{t}\n", top1=f"next{l}{t}", p_top1=rng.random(),
                              kl_final=rng.random() * 5) for l in range(layers) for t in range(positions)])


def test_lens_grid_marks_every_cell_with_its_token_and_fits_a_narrow_page():
    from psilonet.app import lens_charts as C

    chart = C.lens_grid(grid_frame(), "kl_final", "a window")
    spec = chart.to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rect", "text"]
    assert spec["width"] <= C.NARROW_WIDTH and spec["height"] == 4 * 16
    assert spec["layer"][0]["encoding"]["y"]["sort"] == "descending"  # the last state at the top
    colour = spec["layer"][0]["encoding"]["color"]
    assert colour["field"] == "kl_final" and colour["scale"]["domain"][1] <= 5
    rows = chart.data
    assert rows["input"].iloc[1] == "1 ·tok1⏎" and len(rows) == 80  # whitespace made visible
    assert C.lens_grid(grid_frame(), "p_top1").to_dict()["layer"][0]["encoding"]["color"]["scale"]["domain"] == [0, 1]
    with pytest.raises(ValueError, match="colour must be one of"):
        C.lens_grid(grid_frame(), "rank")
    with pytest.raises(ValueError, match="missing column"):
        C.lens_grid(grid_frame().drop(columns="top1"))
    assert C.token_label("abcdefghij") == "abcdef…" and C.token_label(" a") == "·a"


def test_layer_curves_overlay_rows_and_put_the_rank_on_a_log_scale():
    from psilonet.app import lens_charts as C

    curves = pd.DataFrame({"row": ["baseline"] * 3 + ["dose 0.2"] * 3, "layer": [0, 1, 2] * 2,
                           "kl_final": [3.0, 1.0, 0.0, 4.0, 2.0, 0.0], "rank_median": [900, 10, 1, np.nan, 30, 2],
                           "kl_sober": [0.0] * 3 + [0.0, 0.5, 0.7]})
    rank = C.layer_curve(curves, "rank_median")
    assert rank.to_dict()["encoding"]["y"]["scale"]["type"] == "log"
    assert len(rank.data) == 5  # a NaN rank (no next token) is left out, not drawn at 0
    kl = C.layer_curve(curves, "kl_final").to_dict()
    assert kl["encoding"]["color"]["sort"] == ["baseline", "dose 0.2"] and "type" not in kl["encoding"]["y"]["scale"]
    assert "takes hold" in str(C.layer_curve(curves, "kl_sober").to_dict()["title"])
    with pytest.raises(ValueError, match="value must be one of"):
        C.layer_curve(curves, "entropy")


def test_head_grid_facets_heads_by_tap_and_sizes_cells_to_fit():
    from psilonet.app import attention_widgets as W
    from psilonet.app import lens_charts as C

    rng = np.random.default_rng(1)
    mats = {"base": {(2, h): rng.random((8, 8)) for h in range(3)}, "2": {(2, h): rng.random((8, 8)) for h in range(3)}}
    frame = W.pattern_frame(mats, 2, 6, {2: 0.25}, {0: 0.9})
    assert len(frame) == 2 * 3 * 21  # the lower triangle of 6 x 6 per head and tap: keys after the query left out
    assert set(frame.tap_label) == {"base attention", "tap d=2 · weight 0.25"}
    assert set(frame.head_label) == {"head 0 · α 0.90", "head 1", "head 2"}
    spec = C.head_grid(frame, [f"t{i}" for i in range(8)], "Block 2").to_dict()
    assert spec["facet"]["row"]["field"] == "head_label" and spec["facet"]["column"]["sort"][0] == "base attention"
    side = spec["spec"]["width"]
    assert side == spec["spec"]["height"] and 2 * side + 150 <= C.NARROW_WIDTH
    base_only = C.head_grid(frame[frame.tap == "base"], ["t"] * 8, "Block 2").to_dict()
    assert base_only["columns"] == 3 and base_only["facet"]["field"] == "head_label"
    with pytest.raises(ValueError, match="missing column"):
        C.head_grid(frame.drop(columns="weight"), [], "x")


def test_summary_heatmaps_share_one_colour_scale():
    from psilonet.app import lens_charts as C

    summary = pd.DataFrame([dict(side=s, tap="base", layer=l, head=h, entropy=1.0, sink=v, distance=2.0)
                            for s, v in (("baseline", 0.2), ("trained", 0.8)) for l in range(3) for h in range(4)])
    a = C.summary_heatmap(summary, "sink", "baseline").to_dict()
    b = C.summary_heatmap(summary, "sink", "trained").to_dict()
    assert a["encoding"]["color"]["scale"]["domain"] == b["encoding"]["color"]["scale"]["domain"] == [0.2, 0.8]
    with pytest.raises(ValueError, match="metric must be one of"):
        C.summary_heatmap(summary, "head", "baseline")


def test_layer_means_and_batch_rows():
    from psilonet.app import lens_widgets as W

    lens = L.Lens(top_ids=np.array([[[[1], [2]], [[1], [1]]]]), top_p=np.ones((1, 2, 2, 1)),
                  p_next=np.array([[[0.5, np.nan], [0.5, np.nan]]]), rank_next=np.array([[[7, 0], [1, 0]]]),
                  entropy=np.array([[[1.0, 3.0], [0.0, 1.0]]]), kl_final=np.array([[[2.0, 4.0], [0.0, 0.0]]]),
                  kl_sober=np.zeros((1, 2, 2)), next_tokens=np.array([[5, -1]]))
    means = L.layer_means(lens)
    np.testing.assert_allclose(means["kl_final"], [3.0, 0.0])
    np.testing.assert_allclose(means["rank_median"], [7, 1])  # only the position with a next token
    np.testing.assert_allclose(means["top1_final"], [0.5, 1.0])
    rows = W.batch_rows([0.1, 0.0], [1.0], [])
    assert [W.row_label(r) for r in rows] == ["sober", "dose 0.1", "fatigue 1"]


def test_each_export_permalink_reopens_the_same_lens_or_attention_view(filled, monkeypatch):
    from urllib.parse import parse_qsl, urlsplit

    from test_links import PUBLIC, export_permalink, widget_state

    data, _ = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    monkeypatch.setenv("PSILONET_PUBLIC_URL", PUBLIC)
    run_id = capture_run(data)
    cases = {"lens": {"run": run_id, "colour": "kl_final", "pos": "1,5", "zzz": "1"},
             "attention": {"run": run_id, "layer": "3", "n": "5", "metric": "distance", "side": "trained"}}
    for page, params in cases.items():
        at = open_page(page, params)
        assert not at.warning, [w.value for w in at.warning]
        link = export_permalink(at)
        query = dict(parse_qsl(urlsplit(link).query))
        assert link.startswith(f"{PUBLIC}/{page}?") and query == dict(at.query_params) and "zzz" not in query
        again = open_page(page, query)
        assert widget_state(again) == widget_state(at) and dict(again.query_params) == query, page


def test_lens_page_reads_a_prompt_through_a_tuned_lens_of_the_run(filled, tmp_path, monkeypatch):
    import shutil

    from jobs import tuned_lens as tuned_job

    data, train_id = tmp_path / "data", filled[1]
    shutil.copytree(filled[0], data)
    assert tuned_job.main(["--run", train_id, "--data-dir", str(data), "--dataset", "smol-stories", "--seq-len", "16",
                           "--train-samples", "4", "--val-samples", "2", "--steps", "2", "--quiet"]) == 0
    tuned_id = Store(data).list_runs(kind="tuned_lens").run_id.iloc[0]
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("lens", {"view": "live", "model": train_id, "lens": "tuned", "prompt": "Hello there"})
    assert at.selectbox(key="lens_tuned").value == tuned_id and at.query_params["tuned"] == tuned_id
    at.button(key="lens_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    drawn = specs(at)
    assert len(drawn) == 3 and "trained, dose 0.2" in drawn[1]
    assert "baseline (frozen model)" not in drawn[1]  # the tuned lens is fitted to the trained run only
    # The base model has no tuned lens fitted to it: the page says so and the button stays off.
    at = open_page("lens", {"view": "live", "lens": "tuned"})
    assert any("No tuned lens is trained for base model" in w.value for w in at.warning)


def test_a_baseline_only_capture_draws_both_pages(filled, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from jobs import capture as capture_job

    data = tmp_path / "data"
    shutil.copytree(filled[0], data)
    assert capture_job.main(["--model", str(tiny_model_dir), "--seq-len", "8", "--samples", "2", "--max-tokens", "8",
                             "--data-dir", str(data), "--quiet"]) == 0
    run_id = capture_run(data)
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("lens", {"run": run_id})
    assert at.radio(key="lens_side").options == ["baseline (frozen model)"] and len(specs(at)) == 3
    at = open_page("attention", {"run": run_id})
    drawn = specs(at)
    assert len(drawn) == 2 and '"columns": 3' in drawn[0] and "tap d=" not in drawn[0]  # heads wrapped, no taps


def test_the_dose_depth_view_reads_the_sober_row_not_a_steered_or_fatigued_one():
    import pandas as pd

    from psilonet.app.lens_widgets import sober_rows

    gens = pd.DataFrame({"intensity": [0.0, 0.0, 0.0, 0.2], "steering": [5.0, None, 0.0, 0.0],
                         "fatigue": [0.0, 1.0, 0.0, 0.0], "text": ["steered", "tired", "sober", "dosed"]})
    assert list(sober_rows(gens).text) == ["sober"]
    assert list(sober_rows(gens.drop(columns=["steering", "fatigue"])).text) == ["steered", "tired", "sober"]

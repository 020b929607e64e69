"""Ablations of skip components (psilonet.analysis.ablation, jobs.ablate): per-row masks in one
batch, the two reference rows, paired statistics, the stored run and bad input."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from jobs import ablate as ablate_job
from jobs import train as train_job
from psilonet.analysis import ablation
from psilonet.model.skip import SkipConfig, SkipModel
from psilonet.store import Store
from psilonet.store import tables as T
from tests.conftest import make_tiny_model
from tests.test_skip import randomise


def row_loss(model, windows: np.ndarray) -> np.ndarray:
    t = mx.array(windows)
    return np.array(nn.losses.cross_entropy(model(t[:, :-1]), t[:, 1:], reduction="none").mean(axis=1))


@pytest.mark.parametrize("blend", ["additive", "convex"])
def test_all_off_is_the_base_and_none_off_the_trained_model_bit_for_bit(blend):
    base = make_tiny_model()
    model = randomise(SkipModel.from_base(base, SkipConfig(distances=[1, 2], skip_start=1, gates=True,
                                                           alpha=0.5, blend=blend)))
    comps = ablation.components(model)
    names = [c.name for c in comps]
    assert names[:2] == [ablation.NONE_OFF, ablation.ALL_OFF]
    assert "block 1" in names and "block 2 tap d=2" in names and "block 5 head 3" in names
    assert "block 1 tap d=1" not in names  # one available tap: the tap is the block
    windows = np.random.default_rng(0).integers(0, 97, (2, 13))
    rows = [(c, w) for w in range(2) for c in comps]
    batch = windows[[w for _, w in rows]]
    got = ablation.row_losses(model, batch, [c for c, _ in rows])
    # The same tokens through the frozen base and the unmasked skip model, in the same batch shape.
    base_loss, trained_loss = row_loss(base, batch), row_loss(model, batch)
    for r, (c, _) in enumerate(rows):
        if c.name == ablation.ALL_OFF:
            assert got[r] == base_loss[r]
        elif c.name == ablation.NONE_OFF:
            assert got[r] == trained_loss[r]
        else:
            assert got[r] != trained_loss[r], c.name  # every component changes the loss
    # A row's loss does not depend on which component its neighbours turn off.
    alone = ablation.row_losses(model, batch[3:5], [rows[3][0], rows[4][0]])
    np.testing.assert_allclose(alone, got[3:5], rtol=1e-5)


@pytest.mark.parametrize("batch_rows", [1, 5, 64])
def test_rows_started_from_the_trained_states_equal_their_full_passes(batch_rows):
    base = make_tiny_model(seed=4)
    model = randomise(SkipModel.from_base(base, SkipConfig(distances=[1, 2], skip_start=1, gates=True, alpha=0.5,
                                                           blend="convex")))
    comps = ablation.components(model)
    windows = np.random.default_rng(5).integers(0, 97, (3, 10))
    got = ablation.ablate(model, windows, comps, batch_rows=batch_rows).set_index(["component", "window_idx"]).loss
    todo = list(ablation.pairs(comps, len(windows)))
    full = ablation.row_losses(model, windows[[w for _, w in todo]], [c for c, _ in todo])  # every block, one batch
    np.testing.assert_allclose([got[(c.name, w)] for c, w in todo], full, rtol=1e-5)
    assert [ablation.first_block(model, c) for c in comps[:3]] == [6, 1, 1]  # none off, all off, block 1


def test_summary_pairs_windows_and_ranks_components():
    base = make_tiny_model(seed=2)
    model = randomise(SkipModel.from_base(base, SkipConfig(distances=[2], skip_start=2, blend="additive")))
    comps = ablation.components(model, layers=[3, 4])
    assert [c.name for c in comps] == ["none off", "all off", "block 3", "block 4"]
    windows = np.random.default_rng(1).integers(0, 97, (4, 11))
    losses = ablation.ablate(model, windows, comps, batch_rows=3)
    assert len(losses) == 4 * 4
    table = ablation.summarize(losses, comps, ablation.learned_weights(model)).set_index("component")
    by = losses.pivot(index="window_idx", columns="component", values="loss")
    diff = by["block 3"] - by["none off"]
    half = 3.182446305284263 * diff.std(ddof=1) / 2  # t(0.975, 3) * s / sqrt(4)
    assert table.delta_loss["block 3"] == pytest.approx(diff.mean())
    assert table.ci_high["block 3"] == pytest.approx(diff.mean() + half)
    assert table.delta_loss["none off"] == 0.0 and table.learned["block 3"] == pytest.approx(0.65)
    ranks = table.dropna(subset=["rank"]).sort_values("rank")
    assert list(ranks.delta_loss) == sorted(ranks.delta_loss, reverse=True)
    with pytest.raises(ablation.AblationError, match="layers: 1 not a skip layer"):
        ablation.components(model, layers=[1])


def test_weight_effect_correlation_is_spearman_of_the_absolute_weight_per_kind():
    import pandas as pd
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    learned = rng.normal(size=8)
    effect = np.abs(learned) * 2 + rng.normal(scale=0.01, size=8)  # ordered by |weight|, not by weight
    table = pd.DataFrame({"kind": ["reference"] + ["tap"] * 4 + ["head"] * 4 + ["block"] * 2,
                          "learned": [np.nan, *learned, 0.5, 0.5], "delta_loss": [0.0, *effect, 0.1, 0.2]})
    got = ablation.weight_effect_correlation(table).set_index("kind")
    assert set(got.index) == {"tap", "head"}  # blocks: constant weights, no correlation
    assert got.spearman["head"] == pytest.approx(1.0) and got.n["head"] == 4
    want = spearmanr(np.abs(learned[:4]), effect[:4])
    assert got.spearman["tap"] == pytest.approx(want.statistic) and got.p_value["tap"] == pytest.approx(want.pvalue)
    assert ablation.weight_effect_correlation(table.iloc[:3]).empty  # fewer than 3 of each kind


def one_line(err: str, message: str) -> None:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("ablate-data")
    assert train_job.main(["--model", str(tiny_model_dir), "--seq-len", "12", "--val-samples", "3",
                           "--train-samples", "4", "--lr", "1e-3", "--skip-start", "3", "--distances", "1", "2",
                           "--gates", "--blend", "additive", "--alpha", "0.5", "--data-dir", str(data),
                           "--quiet"]) == 0
    return data, Store(data).list_runs(kind="train").run_id.iloc[0]


def test_job_stores_a_ranked_ablation_run(trained, capsys):
    data, train_id = trained
    assert ablate_job.main(["--run", train_id, "--layers", "4", "5", "--json", "--data-dir", str(data)]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"component", "delta_loss", "ci_low", "ci_high"} <= set(objs[0])
    by = {o["component"]: o for o in objs}
    assert set(by) == {"none off", "all off", "block 4", "block 5", "block 4 tap d=1", "block 4 tap d=2",
                       "block 5 tap d=1", "block 5 tap d=2", *(f"block {l} head {h}" for l in (4, 5) for h in range(4))}
    store = Store(data)
    run = store.list_runs(kind="ablation").iloc[0]
    assert run.parent == train_id
    with store.open_run(run.run_id) as reader:
        stored = reader.rows(T.ABLATION)
        per_window = reader.rows(T.ABLATION_LOSS)
    assert len(stored) == len(objs) and len(per_window) == len(objs) * 3
    # "none off" is the trained model's validation loss, "all off" the frozen baseline's (all 3 windows).
    summary = store.get_run(train_id)["summary"]
    ref = stored.set_index("component").loss
    assert ref["none off"] == pytest.approx(summary["skip_loss"], abs=1e-5)
    assert ref["all off"] == pytest.approx(summary["base_loss"], abs=1e-5)
    corr = ablation.weight_effect_correlation(stored)
    assert {f"spearman_{k}": pytest.approx(v) for k, v in zip(corr.kind, corr.spearman)} == {
        k: v for k, v in run.summary.items() if k.startswith("spearman_")}, corr


@pytest.mark.parametrize("argv, message", [
    (["--layers", "9"], "--layers: 9 not a skip layer of this run (its skip layers are 3..5)"),
    (["--layers", "1", "4"], "--layers: 1 not a skip layer"),
    (["--windows", "1"], "--windows: need at least 2 windows"),
    (["--windows", "8"], "--windows: the run has 3 validation windows, asked for 8"),
    (["--run", "train-nope"], "--run: "),
])
def test_bad_input_is_one_line_and_writes_nothing(trained, capsys, argv, message):
    data, train_id = trained
    before = len(Store(data).list_runs())
    argv = argv if "--run" in argv else ["--run", train_id, *argv]
    assert ablate_job.main([*argv, "--data-dir", str(data)]) == 2
    one_line(capsys.readouterr().err, message)
    assert len(Store(data).list_runs()) == before


def test_a_run_without_skip_modules_is_refused(trained, tiny_model_dir, capsys):
    from jobs import dose as dose_job

    data, _ = trained
    assert dose_job.main(["--model", str(tiny_model_dir), "--prompt", "Hi", "--intensities", "0",
                          "--max-tokens", "2", "--no-chat", "--data-dir", str(data)]) == 0
    dose_id = Store(data).list_runs(kind="dose").run_id.iloc[0]
    capsys.readouterr()
    before = len(Store(data).list_runs())
    assert ablate_job.main(["--run", dose_id, "--data-dir", str(data)]) == 2
    one_line(capsys.readouterr().err, f"--run: {dose_id} is a dose run; it has no skip modules to ablate")
    assert len(Store(data).list_runs()) == before


# ------------------------------------------------------------------ the app: Causes page, patching view


def _page(data, page: str, params: dict):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import APP

    at = AppTest.from_file(APP, default_timeout=90)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_causes_page_shows_the_ablation_and_attributes_a_prompt(trained, monkeypatch):
    data, train_id = trained
    store = Store(data)
    if store.list_runs(kind="ablation").empty:
        assert ablate_job.main(["--run", train_id, "--layers", "4", "5", "--data-dir", str(data), "--quiet"]) == 0
    ablation_id = store.list_runs(kind="ablation").run_id.iloc[0]
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = _page(data, "causes", {"run": ablation_id, "dla_run": train_id, "dla_prompt": "Hello there", "part": "skip"})
    assert not at.error, [e.value for e in at.error]
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    titles = json.dumps([s.get("title") for s in specs])
    # Δ loss per tap and per head, each beside what training learned, and learned weight vs effect.
    for title in ("tap off", "gate off", "Final tap weights", "Final per-head gate alphas", "large learned weights"):
        assert title in titles, title
    tooltips = json.dumps(specs[0]["encoding"]["tooltip"])
    assert "ci_low" in tooltips and "ci_high" in tooltips
    next(b for b in at.button if b.label == "Attribute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Direct logit attribution: skip" in json.dumps([json.loads(c.proto.spec).get("title")
                                                          for c in at.get("vega_lite_chart")])


def test_dose_page_patches_the_prompt(trained, monkeypatch):
    data, train_id = trained
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = _page(data, "dose", {"run": train_id, "prompt": "Hello there friend", "chat": "0", "pint": "0.5"})
    next(b for b in at.button if b.label == "Patch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Where the dose acts" in c.proto.spec for c in at.get("vega_lite_chart"))
    rows = at.session_state["patch_rows"]
    assert list(rows.layer) == list(range(6)) and rows.restored.iloc[-1] == 1.0
    assert at.query_params["pint"] == "0.5" and at.query_params["patch"] == "1"

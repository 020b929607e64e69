"""Capture and analysis jobs end to end on a tiny trained model."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from jobs import analyze as analyze_job
from jobs import capture as capture_job
from psilonet.analysis import capture
from psilonet.model import forward
from psilonet.store import Store
from psilonet.training.loop import TrainConfig, load_trained, prepare, train


@pytest.fixture(scope="module")
def trained_store(tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("capture")
    cfg = TrainConfig.from_dict(dict(model=str(tiny_model_dir), seq_len=16, train_samples=16, val_samples=4,
                                     epochs=1, lr=1e-2, skip={"distances": [2], "skip_start": 2}))
    run_id, _ = train(prepare(cfg), Store(data), progress=False)
    return data, run_id


def capture_args(data, *extra):
    return ["--dataset", "python-docs", "--seq-len", "16", "--samples", "6", "--max-tokens", "40",
            "--batch-size", "4", "--quiet", "--data-dir", str(data), *extra]


def test_capture_records_every_point_once_and_lines_up(trained_store, capsys):
    data, run_id = trained_store
    assert capture_job.main(capture_args(data, "--run", run_id)) == 0, capsys.readouterr().err
    store = Store(data)
    cap = store.list_runs(kind="capture").iloc[0]
    assert cap.parent == run_id and cap.summary["tokens"] == 40
    with store.open_run(cap.run_id) as reader:
        tokens = reader.capture_tokens()
        stored = {(side, point): reader.matrices(capture.ACTIVATIONS_FILE, side, point)
                  for side in ("baseline", "trained") for point in ("resid", "head")}
    assert {k: len(v) for k, v in stored.items()} == {(s, p): 7 if p == "resid" else 6 * 4 for s, p in stored}
    assert {m.shape[0] for v in stored.values() for m in v.values()} == {40}
    base0, trained0 = stored["baseline", "resid"][0, -1], stored["trained", "resid"][0, -1]
    trained_last, head = stored["trained", "resid"][6, -1], stored["trained", "head"][3, 1]
    assert len(tokens) == 40 and tokens.pos.between(0, 15).all()
    np.testing.assert_array_equal(base0, trained0)  # the embeddings are shared
    # the stored rows are the states of one forward pass at the kept positions
    model, tokenizer, _ = load_trained(store, run_id)
    windows = capture.evaluation_windows(tokenizer, capture.CaptureConfig("python-docs", 16, 6, 40, 0, 4))
    _, cache = forward.run_with_cache(model, mx.array(windows))
    rows, cols = tokens.seq.to_numpy(), tokens.pos.to_numpy()
    np.testing.assert_allclose(np.array(cache["blocks.5.hook_resid_post"])[rows, cols], trained_last, atol=1e-4)
    np.testing.assert_allclose(np.array(cache["blocks.3.attn.hook_z"])[rows, cols, 1], head, atol=1e-4)


def test_capture_time_norm_statistics_equal_numpy_on_the_stored_matrices(trained_store, capsys):
    data, run_id = trained_store
    store = Store(data)
    caps = store.list_runs(kind="capture")
    if caps.empty:
        assert capture_job.main(capture_args(data, "--run", run_id)) == 0
        caps = store.list_runs(kind="capture")
    with store.open_run(caps.run_id.iloc[0]) as reader:
        stats, outliers, dims = reader.norm_stats(), reader.norm_outliers(), reader.outlier_dims()
        for side in ("baseline", "trained"):
            resid = reader.matrices(capture.ACTIVATIONS_FILE, side, "resid")
            mine = stats[stats.side == side].set_index("layer")
            assert len(mine) == 7
            for layer in range(7):
                norms = np.linalg.norm(resid[(layer, -1)].astype(np.float64), axis=1)
                row = mine.loc[layer]
                assert row["median"] == pytest.approx(np.median(norms), rel=1e-6)
                assert row["p99"] == pytest.approx(np.percentile(norms, 99), rel=1e-6)
                assert row["max"] == pytest.approx(norms.max(), rel=1e-6)
                over = np.flatnonzero(norms > 10 * np.median(norms))
                assert row["n_over"] == over.size
                listed = outliers[(outliers.side == side) & (outliers.layer == layer)]
                assert list(listed.token_idx) == list(over)
                assert len(dims[(dims.side == side) & (dims.layer == layer)]) == (3 if over.size else 0)


def test_analysis_fills_every_view(trained_store, tiny_model_dir, capsys):
    data, run_id = trained_store
    assert capture_job.main(capture_args(data, "--run", run_id)) == 0
    assert capture_job.main(capture_args(data, "--dataset", "smol-stories", "--model", str(tiny_model_dir))) == 0
    store = Store(data)
    caps = store.list_runs(kind="capture")
    trained_cap = caps[caps.parent == run_id].run_id.iloc[0]
    baseline_cap = caps[caps.parent.isna()].run_id.iloc[0]
    assert analyze_job.main(["--captures", trained_cap, baseline_cap, "--layers", "2-4", "--data-dir", str(data)]) == 0
    run = store.list_runs(kind="analysis").iloc[0]
    with store.open_run(run.run_id) as reader:
        every = reader.similarity()
        sim, paths, var = reader.similarity(representation="raw"), reader.trajectories("raw"), reader.pca_variance("raw")
        sinks = reader.sink_tokens()
    assert set(every.representation) == {"raw", "rms", "no-sink"}
    for rep, part in every.groupby("representation"):  # every view under every representation
        assert set(part[part.source == trained_cap].view) == {"layer", "head", "cross_layer", "novelty"}, rep
        assert len(part) == len(sim)
    assert set(sinks.columns) >= {"source", "token_idx", "first_layer", "max_ratio"}
    mine = sim[sim.source == trained_cap]
    assert set(mine.view) == {"layer", "head", "cross_layer", "novelty"}
    layer_cka = mine[(mine.view == "layer") & (mine.metric == "cka")].set_index("layer").value
    assert layer_cka.loc[0] == pytest.approx(1.0) and layer_cka.loc[1] == pytest.approx(1.0)  # before any skip
    assert layer_cka.loc[6] < 0.999  # the trained skips changed the later layers
    assert len(mine[(mine.view == "head") & (mine.metric == "cka")]) == 6 * 4
    assert len(mine[mine.view == "cross_layer"]) == 7 * 7
    novelty = mine[mine.view == "novelty"].set_index("metric").value
    assert novelty["cka:mean"] == pytest.approx(layer_cka.loc[2:4].mean())
    other = sim[sim.source == baseline_cap]
    assert set(other.view) == {"cross_layer"} and other.dataset.iloc[0] == "smol-stories"
    assert set(paths.side) == {"baseline", "trained"} and set(paths.unit) == {"token", "sequence"}
    assert paths.layer.nunique() == 7 and (var.ratio.between(0, 1)).all()


def test_bad_inputs(trained_store, capsys):
    data, run_id = trained_store
    assert analyze_job.main(["--captures", run_id, "--data-dir", str(data)]) == 2
    assert f"{run_id} is a train run, not a capture; capture it first" in capsys.readouterr().err
    cap = Store(data).list_runs(kind="capture").run_id.iloc[0]
    assert analyze_job.main(["--captures", cap, "--layers", "3-99", "--data-dir", str(data)]) == 2
    assert "--layers: 3-99 is outside the model's layers 0-6" in capsys.readouterr().err
    weights = Store(data).run_dir(run_id) / "skip_weights.safetensors"
    weights.rename(weights.with_suffix(".moved"))
    try:
        assert capture_job.main(capture_args(data, "--run", run_id)) == 2
        assert "skip_weights.safetensors does not exist" in capsys.readouterr().err
    finally:
        weights.with_suffix(".moved").rename(weights)

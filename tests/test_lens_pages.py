"""The capture's stored lens and attention summaries, the Lens and Attention pages and their charts."""

from __future__ import annotations

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

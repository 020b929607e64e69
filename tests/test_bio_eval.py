"""The bio-mechanism evaluation: paired per-window losses and their summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mlx.core as mx
import mlx.nn as nn

from psilonet.generation import bio_eval
from psilonet.model import loading as modeling


def test_summary_pairs_each_window_with_its_sober_row():
    rows = []
    for corpus, shift in (("a", 0.0), ("b", 1.0)):
        for w, base in enumerate([2.0, 3.0, 4.0]):
            rows.append((corpus, w, "sober", 0.0, base + shift, 5.0))
            rows.append((corpus, w, "fatigue", 0.5, base + shift + 0.1 * (w + 1), 5.5))
    table = bio_eval.summarize(pd.DataFrame(rows, columns=bio_eval.RESULT_COLUMNS))
    fat = table[(table.mechanism == "fatigue") & (table.corpus == "b")].iloc[0]
    assert fat.n == 3 and fat.loss_diff == pytest.approx(0.2) and fat.entropy_diff == pytest.approx(0.5)
    # t(0.975, 2) * sd([.1, .2, .3]) / sqrt(3)
    assert fat.loss_ci_high - fat.loss_diff == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    sober = table[table.mechanism == "sober"]
    assert (sober.loss_diff == 0).all() and len(table) == 4


def test_evaluate_on_both_offline_corpora(tiny_model_dir):
    model, tokenizer = modeling.load_model(str(tiny_model_dir))
    cfg = bio_eval.BioEvalConfig(strengths=[1.0], windows=2, seq_len=12)
    seen = []
    results = bio_eval.evaluate(model, tokenizer, cfg, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (4, 4)
    assert set(results.corpus) == {"python-docs", "smol-stories"} and len(results) == 4 * 3
    # The sober row is the plain model's loss on the same window.
    from psilonet import corpora
    window = corpora.load_windows(tokenizer, "python-docs", seq_len=13, n_train=0, n_val=2, seed=0).val[1]
    tokens = mx.array(window[None])
    plain = nn.losses.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:], reduction="mean").item()
    got = results[(results.corpus == "python-docs") & (results.window_idx == 1)].set_index("mechanism")
    assert got.loss["sober"] == pytest.approx(plain, abs=1e-5)
    assert got.loss["fatigue"] != got.loss["sober"] and got.loss["hebbian"] != got.loss["sober"]
    summary = bio_eval.summarize(results)
    assert summary.set_index(["corpus", "mechanism"]).n.eq(2).all()


@pytest.mark.parametrize("change, message", [
    (dict(strengths=[0.0]), "strengths: 0 is the sober baseline"),
    (dict(strengths=[3.0]), "strengths: each must be at most 2"),
    (dict(strengths=[]), "strengths: give at least one"),
    (dict(mechanisms=["noise"]), "mechanisms: must be one of"),
    (dict(windows=1), "windows: must be in"),
    (dict(corpora=["no-such-corpus"]), "corpora: unknown corpus"),
])
def test_bad_config_fails_before_any_model(change, message):
    with pytest.raises(ValueError, match=message):
        bio_eval.BioEvalConfig(**change).check()


def test_job_stores_every_window_and_the_paired_summary(tiny_model_dir, tmp_path, capsys):
    from jobs import bio_eval as job
    from psilonet.store import Store

    assert job.main(["--model", str(tiny_model_dir), "--windows", "2", "--seq-len", "8", "--strengths", "1",
                     "--mechanisms", "hebbian", "--data-dir", str(tmp_path)]) == 0
    store = Store(tmp_path)
    run = store.list_runs(kind="bio_eval").iloc[0]
    assert run.state == "complete"
    with store.open_run(run.run_id) as reader:
        rows = reader.bio_eval()
        assert reader.bio_pool().empty  # a table this run never wrote reads as empty
    assert len(rows) == 2 * 2 * 2 and set(rows.mechanism) == {"sober", "hebbian"}
    summary = store.get_run(run.run_id)["summary"]
    assert set(summary) == {"python-docs/hebbian@1/loss_diff", "smol-stories/hebbian@1/loss_diff"}
    assert "run " in capsys.readouterr().out


def test_job_refuses_bad_options_before_loading_a_model(tmp_path, capsys):
    from jobs import bio_eval as job

    assert job.main(["--model", str(tmp_path / "nowhere"), "--strengths", "0", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --strengths: 0 is the sober baseline, always measured; give strengths > 0"

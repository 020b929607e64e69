"""Sweeps on a tiny model: the grid, the statistics, and failures that do not stop the sweep."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from jobs import sweep as sweep_job
from psilonet.store import Store
from psilonet.training import stats


def test_mean_ci_matches_student_t():
    x = [1.0, 2.0, 4.0, 7.0]
    mean, std, lo, hi = stats.mean_ci(x)
    half = sps.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert (mean, std) == pytest.approx((3.5, np.std(x, ddof=1)))
    assert (lo, hi) == pytest.approx((3.5 - half, 3.5 + half))
    assert math.isnan(stats.mean_ci([1.0])[2])


def test_summary_pairs_seeds_against_the_best():
    rows = [("a", "A", s, v) for s, v in enumerate([1.0, 1.2, 0.9])] + \
           [("b", "B", s, v) for s, v in enumerate([0.1, 0.4, 0.2])] + [("c", "C", 0, 5.0)]
    table = stats.summarize(pd.DataFrame(rows, columns=["config_key", "label", "seed", "improvement_pct"]))
    best = table[table.best]
    assert list(best.label) == ["C"]  # highest mean, one seed
    b = table.set_index("label").loc["B"]
    assert b.n_paired == 1 and math.isnan(b.p_vs_best)  # one shared seed: no test
    table = stats.summarize(pd.DataFrame(rows[:6], columns=["config_key", "label", "seed", "improvement_pct"]))
    b = table.set_index("label").loc["B"]
    assert b.n_paired == 3
    assert b.p_vs_best == pytest.approx(sps.ttest_rel([1.0, 1.2, 0.9], [0.1, 0.4, 0.2]).pvalue)


def sweep_args(model_dir, data_dir, *extra):
    return ["--model", str(model_dir), "--dataset", "python-docs", "--seq-len", "16", "--train-samples", "8",
            "--val-samples", "4", "--lr", "1e-3", "--skip-start", "1", "--data-dir", str(data_dir), "--quiet", *extra]


def test_two_by_two_by_two_sweep(tiny_model_dir, tmp_path, capsys):
    code = sweep_job.main(sweep_args(tiny_model_dir, tmp_path, "--distances", "1", "2", "--alphas", "0.3", "0.6",
                                     "--seeds", "0", "1"))
    assert code == 0, capsys.readouterr().err
    store = Store(tmp_path)
    runs = store.list_runs()
    sweep = runs[runs.kind == "sweep"].iloc[0]
    children = runs[runs.parent == sweep.run_id]
    assert len(children) == 8 and set(children.state) == {"complete"}
    with store.open_run(sweep.run_id) as reader:
        configs, per_run = reader.sweep_configs(), reader.sweep_runs()
    assert len(configs) == 4 and set(configs.n) == {2} and configs.best.sum() == 1
    assert (configs.ci_low <= configs["mean"]).all() and (configs["mean"] <= configs.ci_high).all()
    assert len(per_run) == 8 and set(per_run.seed) == {0, 1}
    # the statistics come from the children's own summaries
    for _, cfg in configs.iterrows():
        mine = per_run[per_run.config_key == cfg.config_key]
        assert cfg["mean"] == pytest.approx(mine.improvement_pct.mean())
        assert set(mine.improvement_pct.round(6)) == {
            round(children.set_index("run_id").loc[r].summary["improvement_pct"], 6) for r in mine.run_id}
    assert sweep.summary["runs"] == 8 and sweep.summary["failed"] == 0
    # seeds change the data order, so the two seeds of a config differ
    assert per_run.groupby("config_key").improvement_pct.nunique().eq(2).all()


def test_failing_configs_are_recorded_and_the_sweep_goes_on(tiny_model_dir, tmp_path, capsys):
    # lr=1e30 makes every run diverge to a non-finite loss: a real failure, not a simulated one.
    code = sweep_job.main(sweep_args(tiny_model_dir, tmp_path, "--distances", "1", "2", "--lr", "1e30"))
    assert code == 1  # recorded, but a sweep with no successful run is not a success
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: every run of sweep") and "Traceback" not in "\n".join(err)
    store = Store(tmp_path)
    runs = store.list_runs()
    sweep = runs[runs.kind == "sweep"].iloc[0]
    children = runs[runs.parent == sweep.run_id]
    assert len(children) == 2 and set(children.state) == {"failed"}
    assert all("TrainingDiverged" in e for e in children.error)
    assert sweep.state == "complete" and sweep.summary["failed"] == 2
    with store.open_run(sweep.run_id) as reader:
        configs = reader.sweep_configs()
    assert list(configs.failed) == [1, 1] and list(configs.n) == [0, 0]


def test_bad_grid_fails_before_any_run(tiny_model_dir, tmp_path, capsys):
    code = sweep_job.main(sweep_args(tiny_model_dir, tmp_path, "--distances", "1", "9"))
    assert code == 2
    assert "error: --distances: 9 is larger than the model allows" in capsys.readouterr().err
    assert Store(tmp_path).list_runs().empty

"""A sweep on a two-node Ray cluster on this machine (loopback only) survives losing a node.

One cluster (a head node and a worker node, one CPU each) serves the module: the first test
kills the worker node while one of its trials trains, the second runs on the head node left.
"""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from psilonet.store import Store

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="Ray is optional: pip install -r requirements-scale.txt")

TIMEOUT = 240  # seconds for one sweep; each takes well under a minute on two loaded cores


@pytest.fixture(scope="module")
def cluster():
    from bench.ray_node_loss import loopback_cluster

    with loopback_cluster() as (c, worker):
        yield c, worker


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the sweep did not end within {TIMEOUT} s: {err[-2000:]}")
    return proc.returncode, out, err


def sweep_rows(store: Store, sweep_id: str):
    with store.open_run(sweep_id) as reader:
        return reader.sweep_runs()


def test_a_lost_node_is_retried_on_the_live_one(cluster, tiny_model_dir, tmp_path):
    from bench.ray_node_loss import kill_node_while_training, start_sweep, sweep_command

    c, worker = cluster
    store = Store(tmp_path)
    proc = start_sweep(sweep_command(str(tiny_model_dir), c.address, "--distances", "1", "--seeds", "0", "1"),
                       tmp_path)
    killed = kill_node_while_training(c, worker, store, proc, timeout=TIMEOUT)
    code, out, err = finish(proc)
    assert code == 0, err[-2000:]
    assert "unexpected" not in err and "Traceback" not in err

    sweep = store.list_runs(kind="sweep").iloc[0]
    assert sweep.state == "complete"
    assert sweep.summary["completed"] == 2 and sweep.summary["lost"] == 0 and sweep.summary["failed"] == 0
    assert sweep.summary["retried"] >= 1
    rows = sweep_rows(store, sweep.run_id)
    assert sorted(rows.seed) == [0, 1] and set(rows.state) == {"complete"}  # every seed of the config
    assert "2 runs: 2 completed, 0 failed, 0 lost" in out and "lost    " not in out

    runs = store.list_runs(kind="train")
    assert runs.set_index("run_id").state[killed] == "killed"  # the attempt on the dead node
    assert not (runs.state == "running").any()  # nothing left running ...
    for run in runs.itertuples():  # ... or half-written: only complete runs are published
        assert (store.runs_dir / run.run_id).exists() == (run.state == "complete")
    assert sorted(runs[runs.state == "complete"].run_id) == sorted(rows.run_id)


def test_a_trial_whose_training_raises_is_failed_not_retried(cluster, tiny_model_dir, tmp_path):
    from bench.ray_node_loss import start_sweep, sweep_command

    c, _ = cluster
    store = Store(tmp_path)
    # lr=1e30 makes the loss non-finite: the training itself raises TrainingDiverged.
    command = sweep_command(str(tiny_model_dir), c.address, "--distances", "1", "--seeds", "0", "--lr", "1e30",
                            train_samples=8)
    code, out, err = finish(start_sweep(command, tmp_path))
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: every run of sweep")
    assert "unexpected" not in err and "Traceback" not in err

    sweep = store.list_runs(kind="sweep").iloc[0]
    assert sweep.summary["failed"] == 1 and sweep.summary["lost"] == 0 and sweep.summary["retried"] == 0
    runs = store.list_runs(kind="train")
    assert len(runs) == 1 and runs.state.iloc[0] == "failed"  # one attempt: not retried
    assert "TrainingDiverged" in runs.error.iloc[0]
    row = sweep_rows(store, sweep.run_id).iloc[0]
    assert row.state == "failed" and "TrainingDiverged" in row.error
    assert "failed  d=1 alpha=0.65 seed 0: TrainingDiverged" in out

"""Training on a tiny random model with the real tokenizer: the run, the frozen base, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from jobs import train as train_job
from psilonet.model import loading as modeling
from psilonet.model.skip import SkipConfig
from psilonet.store import Store
from psilonet.training.evaluation import mean_token_loss
from psilonet.training.loop import TrainConfig, load_trained, prepare, train

ROOT = Path(__file__).resolve().parent.parent


def tiny_cfg(model_dir, **overrides) -> TrainConfig:
    skip = overrides.pop("skip", {})
    base = dict(model=str(model_dir), dataset="python-docs", seq_len=16, train_samples=16, val_samples=8,
                epochs=2, batch_size=4, lr=1e-3, seed=0)
    return TrainConfig.from_dict({**base, **overrides, "skip": {"distances": [2], "skip_start": 2, **skip}})


def test_training_run_records_everything_and_keeps_the_base_frozen(tiny_model_dir, tmp_path):
    store = Store(tmp_path)
    cfg = tiny_cfg(tiny_model_dir, skip={"distances": [1, 2], "gates": True, "alpha": 0.5,
                                         "sparsity": "entropy", "sparsity_weight": 0.01})
    prep = prepare(cfg)
    before = {k: np.array(v) for k, v in tree_flatten(prep.base.parameters())}
    run_id, summary = train(prep, store, progress=False)
    after = dict(tree_flatten(prep.base.parameters()))
    assert all(np.array_equal(before[k], np.array(after[k])) for k in before), "a base weight changed"

    run = store.get_run(run_id)
    assert run["state"] == "complete" and run["config"]["skip"]["gates"] is True
    with store.open_run(run_id) as reader:
        train_rows = reader.metrics(split="train")
        val = reader.metrics(split="val").pivot(index="step", columns="name", values="value")
        taps, gates = reader.tap_weights(), reader.gate_alphas()
    assert sorted(train_rows.query("name == 'loss'").step) == list(range(1, 9))
    assert {"grad_norm", "tokens_per_s"} <= set(train_rows.name)
    assert list(val.index) == [0, 4, 8]  # start, then each epoch
    assert np.allclose(val.base_loss, val.base_loss.iloc[0])  # same tokens every time
    assert summary["skip_loss"] == pytest.approx(val.skip_loss.iloc[-1])
    assert summary["improvement_pct"] == pytest.approx(100 * (val.base_loss.iloc[-1] - val.skip_loss.iloc[-1]) / val.base_loss.iloc[-1])
    # tap weights sum to one per block and step, and they moved during training
    assert np.allclose(taps.groupby(["step", "layer"]).weight.sum(), 1.0)
    assert set(taps.step) == set(range(9))
    assert not np.allclose(taps.query("step == 0").weight.values, taps.query("step == 8").weight.values)
    assert gates["head"].nunique() == 4 and set(gates.step) == set(range(9))

    model, _, loaded_cfg = load_trained(store, run_id)
    assert loaded_cfg == cfg
    assert mean_token_loss(model, prep.windows.val, 4) == pytest.approx(summary["skip_loss"], rel=1e-5)
    assert mean_token_loss(model, prep.windows.val) == pytest.approx(summary["skip_loss"], rel=1e-5)


def test_additive_training_starts_at_the_baseline(tiny_model_dir, tmp_path):
    store = Store(tmp_path)
    run_id, _ = train(prepare(tiny_cfg(tiny_model_dir, epochs=1, skip={"blend": "additive"})), store, progress=False)
    with store.open_run(run_id) as reader:
        val = reader.metrics(split="val").pivot(index="step", columns="name", values="value")
    assert val.loc[0, "skip_loss"] == pytest.approx(val.loc[0, "base_loss"], abs=1e-6)
    assert val.loc[0, "improvement_pct"] == pytest.approx(0.0, abs=1e-4)


def run_job(args, data_dir, **kw):
    env = {**os.environ, "PSILONET_DATA": str(data_dir)}
    return subprocess.Popen([sys.executable, "-m", "jobs.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_training_resumes_from_its_checkpoint_to_the_same_result(tiny_model_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--dataset", "python-docs", "--seq-len", "16",
            "--train-samples", "160", "--val-samples", "8", "--epochs", "2", "--lr", "1e-3",
            "--distances", "2", "--skip-start", "2", "--checkpoint-every", "10", "--quiet"]
    proc = run_job(args, tmp_path / "a")
    staging = tmp_path / "a" / "runs" / ".staging"
    deadline = time.time() + 120
    while time.time() < deadline and not list(staging.glob("*/checkpoint/state.json")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(tmp_path / "a")
    run_id = store.list_runs().run_id.iloc[0]
    assert store.get_run(run_id)["state"] == "killed"

    resumed = run_job(["--resume", run_id, "--quiet"], tmp_path / "a")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    straight = run_job(args, tmp_path / "b")
    straight.communicate(timeout=300)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    ra, rb = a.get_run(run_id), b.list_runs().iloc[0]
    assert ra["state"] == "complete" and ra["summary"]["steps"] == 80
    with a.open_run(run_id) as reader:
        losses = reader.metrics(names=["loss"])
    assert list(losses.step) == list(range(1, 81))  # replayed steps are not duplicated
    assert ra["summary"]["skip_loss"] == pytest.approx(rb.summary["skip_loss"], rel=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--distances", "9"], "--distances: 9 is larger than the model allows"),
    (["--alpha", "1.5"], "--alpha: must be in [0, 1]"),
    (["--dataset", "nope"], "--dataset: unknown corpus 'nope'"),
    (["--seq-len", "4096"], "--seq-len: 4096 is longer than the model's context of 512"),
    (["--train-samples", "999999"], "--train-samples/--val-samples: corpus 'python-docs' yields"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
])
def test_bad_options_fail_in_one_line_before_any_work(tiny_model_dir, tmp_path, capsys, args, message):
    code = train_job.main(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: " + message), err
    assert len(err.splitlines()) == 1
    assert Store(tmp_path).list_runs().empty


def test_empty_distances_and_bad_config_file(tiny_model_dir, tmp_path, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text("distances = []\n")
    assert train_job.main(["--model", str(tiny_model_dir), "--config", str(conf), "--data-dir", str(tmp_path)]) == 2
    assert "error: --distances: give at least one" in capsys.readouterr().err
    conf.write_text("alpha = [1, 2\n")
    assert train_job.main(["--config", str(conf), "--data-dir", str(tmp_path)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


def test_ranks_shard_batches_and_refuse_a_distributed_resume(tiny_model_dir):
    from psilonet.training.loop import Ranks, TrainConfigError

    cfg = tiny_cfg(tiny_model_dir)
    rows = np.arange(4)
    assert Ranks().lead and list(Ranks().shard(rows)) == [0, 1, 2, 3]
    second = Ranks(None, 1, 2)
    assert not second.lead and list(second.shard(rows)) == [2, 3]
    second.check(cfg, resume=None)
    with pytest.raises(TrainConfigError, match="^resume: "):
        second.check(cfg, resume="some-run")
    with pytest.raises(TrainConfigError, match="^batch_size: 4 does not split evenly over 3 ranks"):
        Ranks(None, 0, 3).check(cfg, resume=None)

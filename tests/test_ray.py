"""Sweeps as Ray Tune trials on a local Ray cluster, and re-running a sweep after a kill."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psilonet.store import Store
from psilonet.training.loop import TrainConfig
from psilonet.training.ray_engine import RayConfig
from psilonet.training.sweep import SweepSpec, run_sweep

ROOT = Path(__file__).resolve().parent.parent
HAVE_RAY = importlib.util.find_spec("ray") is not None


def spec(model_dir) -> SweepSpec:
    base = TrainConfig.from_dict(dict(model=str(model_dir), seq_len=16, train_samples=8, val_samples=4, epochs=1,
                                      lr=1e-3, skip={"skip_start": 1}))
    return SweepSpec(base, distance_sets=[[1], [2]], alphas=[0.5], seeds=[0, 1])


def per_config(store: Store, sweep_id: str):
    with store.open_run(sweep_id) as reader:
        return reader.sweep_runs().set_index(["label", "seed"]).sort_index()


@pytest.mark.skipif(not HAVE_RAY, reason="Ray is optional: pip install -r requirements-scale.txt")
def test_ray_engine_gives_the_local_results(tiny_model_dir, tmp_path):
    local_store, ray_store = Store(tmp_path / "local"), Store(tmp_path / "ray")
    local_id, _ = run_sweep(spec(tiny_model_dir), local_store, progress=False)
    from psilonet.training import ray_engine

    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}})
    try:
        ray_id, _ = run_sweep(spec(tiny_model_dir), ray_store, engine="ray", ray=RayConfig(cpus_per_trial=1),
                           progress=False)
    finally:
        ray.shutdown()
    a, b = per_config(local_store, local_id), per_config(ray_store, ray_id)
    assert list(a.index) == list(b.index) and set(b.state) == {"complete"}
    # Ray trials run BLAS with one thread, the local sweep with two: float32 sums in another order
    # move the losses by ~1e-6 relative, and improvement % (a difference of two close losses,
    # in percentage points) by up to 100 * 2e-5; compare it on that absolute scale.
    for column in ("base_loss", "skip_loss"):
        assert a[column].to_numpy() == pytest.approx(b[column].to_numpy(), rel=1e-5)
    assert a["improvement_pct"].to_numpy() == pytest.approx(b["improvement_pct"].to_numpy(), abs=2e-3)
    ra, rb = local_store.list_runs(), ray_store.list_runs()
    assert sorted(ra.kind) == sorted(rb.kind) and len(rb[rb.parent == ray_id]) == 4
    assert ray_store.get_run(ray_id)["config"]["engine"] == "ray"


def test_a_killed_sweep_reruns_only_the_missing_configs(tiny_model_dir, tmp_path):
    args = [sys.executable, "-m", "jobs.sweep", "--model", str(tiny_model_dir), "--seq-len", "16",
            "--train-samples", "400", "--val-samples", "4", "--lr", "1e-3", "--skip-start", "1",
            "--distances", "1", "2", "--seeds", "0", "--quiet"]
    env = {**os.environ, "PSILONET_DATA": str(tmp_path)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Store(tmp_path)
    deadline = time.time() + 180
    while time.time() < deadline:  # kill it while the second config trains
        runs = store.list_runs(kind="train")
        if len(runs) == 2 and (runs.state == "complete").sum() == 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runs = store.list_runs(kind="train")
    assert sorted(runs.state) == ["complete", "killed"]
    assert not (store.runs_dir / runs[runs.state == "killed"].run_id.iloc[0]).exists()  # nothing half-published

    rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    sweeps = store.list_runs(kind="sweep")
    latest = sweeps.iloc[0]
    assert latest.state == "complete" and latest.summary["trained"] == 1 and latest.summary["reused"] == 1
    assert len(store.list_runs(kind="train")) == 3  # one new run, the completed one reused
    with store.open_run(latest.run_id) as reader:
        assert set(reader.sweep_runs().state) == {"complete"}

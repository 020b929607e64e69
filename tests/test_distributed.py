"""One training config data-parallel over two ranks (mlx.launch, ring backend, localhost) ends
at the same skip weights as one process on the same global batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from psilonet.store import Store

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")


@pytest.mark.skipif(LAUNCH is None, reason="mlx.launch is not installed")
def test_two_ranks_train_to_the_same_weights_as_one_process(tiny_model_dir, tmp_path):
    args = ["-m", "jobs.train", "--model", str(tiny_model_dir), "--dataset", "python-docs", "--seq-len", "16",
            "--train-samples", "16", "--val-samples", "4", "--epochs", "1", "--batch-size", "4", "--lr", "1e-2",
            "--distances", "1", "2", "--skip-start", "1", "--gates", "--alpha", "0.5", "--quiet"]
    env = {**os.environ, "PSILONET_DATA": str(tmp_path / "one")}
    one = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "PSILONET_DATA": str(tmp_path / "two")}
    two = subprocess.run([LAUNCH, "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2", sys.executable, *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    runs_one, runs_two = Store(tmp_path / "one").list_runs(), Store(tmp_path / "two").list_runs()
    assert len(runs_two) == 1 and runs_two.config.iloc[0]["ranks"] == 2  # only rank 0 wrote a run
    w1 = mx.load(str(Store(tmp_path / "one").run_dir(runs_one.run_id.iloc[0]) / "skip_weights.safetensors"))
    w2 = mx.load(str(Store(tmp_path / "two").run_dir(runs_two.run_id.iloc[0]) / "skip_weights.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        np.testing.assert_allclose(np.array(w1[key]), np.array(w2[key]), atol=2e-4, rtol=1e-3, err_msg=key)  # Adam amplifies float noise in tiny gradients
    moved = max(float(mx.abs(w1[k]).max()) for k in w1 if k.endswith("gate_logits"))
    assert moved != pytest.approx(0.0)
    assert runs_one.summary.iloc[0]["skip_loss"] == pytest.approx(runs_two.summary.iloc[0]["skip_loss"], rel=1e-4)

"""Scaling on one machine, measured in one run:

1. sweep throughput (configs per hour) of the local engine (one config after another) against
   Ray Tune with two single-CPU trials at a time, on the same small grid of the default model;
2. data-parallel training throughput (tokens/s) of ``mlx.launch`` with 2 ranks (ring backend,
   localhost) against one process on the same global batches.

    python -m bench.scale [--train-samples 16] [--seq-len 48]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sweep_seconds(engine: str, data_dir: Path, common: list[str], threads: str | None) -> float:
    env = {**os.environ, "PSILONET_DATA": str(data_dir)}
    models = ROOT / "data" / "models"
    (data_dir / "models").parent.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models").exists():
        (data_dir / "models").symlink_to(models)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = threads
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.sweep", *common, "--engine", engine, "--quiet"],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def tokens_per_s(cmd: list[str], data_dir: Path, threads: str | None = None) -> float:
    env = {**os.environ, "PSILONET_DATA": str(data_dir)}
    if threads:
        env["OPENBLAS_NUM_THREADS"] = threads
    if not (data_dir / "models").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "models").symlink_to(ROOT / "data" / "models")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sys.path.insert(0, str(ROOT))
    from psilonet.store import Store

    store = Store(data_dir)
    run = store.list_runs(kind="train").iloc[0]
    with store.open_run(run.run_id) as reader:
        rates = reader.metrics(names=["tokens_per_s"]).value
    return float(rates.iloc[1:].median())  # the first step includes warm-up


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--skip-sweeps", action="store_true", help="only the data-parallel comparison")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="psilonet-scale-"))
    try:
        grid = ["--distances", "3", "4", "--alphas", "0.65", "--seeds", "0", "1", "--train-samples",
                str(args.train_samples), "--val-samples", "8", "--seq-len", str(args.seq_len)]
        n = 4
        if not args.skip_sweeps:
            local = sweep_seconds("local", tmp / "local", grid, None)
            ray = sweep_seconds("ray", tmp / "ray", [*grid, "--cpus-per-trial", "1"], None)
            print(f"sweep of {n} configs (default model, {args.train_samples} windows of {args.seq_len} tokens each):")
            print(f"  local, sequential (2 BLAS threads) : {n / local * 3600:6.0f} configs/hour ({local:.0f} s)")
            print(f"  Ray, 2 trials x 1 CPU (1 thread)   : {n / ray * 3600:6.0f} configs/hour ({ray:.0f} s)")
            print(f"  ratio Ray / local                  : x{local / ray:.2f}")

        train = ["-m", "jobs.train", "--train-samples", str(args.train_samples), "--val-samples", "8",
                 "--seq-len", str(args.seq_len), "--batch-size", "4", "--quiet"]
        one = tokens_per_s([sys.executable, *train], tmp / "one")
        launch = shutil.which("mlx.launch", path=str(Path(sys.executable).parent))
        ranks = [launch, "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2", sys.executable, *train]
        two = tokens_per_s(ranks, tmp / "two")
        two_single = tokens_per_s(ranks, tmp / "two-single", threads="1")
        print("data-parallel training, global batch 4 (2 per rank), one 2-core machine:")
        print(f"  1 process (2 BLAS threads)      : {one:6.1f} tokens/s")
        print(f"  2 ranks (2 BLAS threads each)   : {two:6.1f} tokens/s  x{two / one:.2f}")
        print(f"  2 ranks (1 BLAS thread each)    : {two_single:6.1f} tokens/s  x{two_single / one:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

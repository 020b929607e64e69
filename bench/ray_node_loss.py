"""What a lost Ray node costs a sweep: the same small sweep on a two-node Ray cluster on this
machine (``ray.cluster_utils.Cluster``, one CPU per node, loopback only), once undisturbed and
once with the second node killed (``remove_node(..., allow_graceful=False)``, what a machine
that dies looks like) while one of its trials trains. The lost trial is retried on the head
node; the figure is the sweep's wall time with the loss against without, both interleaved
over rounds in one process (median and quartiles of the per-round ratio).

    python -m bench.ray_node_loss [--rounds 3] [--train-samples 80] [--model FOLDER]

``--model`` defaults to a tiny random llama written into a temporary folder (the default
model's tokenizer), the model the test of this behaviour uses (tests/test_ray_cluster.py).
The cluster helpers here are shared with that test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Ray rewrites a 127.0.0.1 address to this machine's outward address before connecting, unless its
# "local only" switch is set; with it the driver reaches a cluster that listens on loopback only.
DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def loopback_cluster(cpus_per_node: int = 1):
    """A head node and one worker node on this machine, bound to loopback: yields (cluster, worker)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=cpus_per_node, node_ip_address=LOOPBACK,
                                                                include_dashboard=False))
    try:
        yield cluster, add_worker(cluster, cpus_per_node)
    finally:
        cluster.shutdown()


def add_worker(cluster, cpus: int = 1):
    return cluster.add_node(num_cpus=cpus, node_ip_address=LOOPBACK)


def _ancestors(pid: int) -> list[int]:
    """The parent chain of a process on this host (from /proc), nearest first."""
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ...": comm may hold spaces
        chain.append(pid)
    return chain


def runs_on_node(pid: int, node) -> bool:
    """Whether process ``pid`` is one of the node's workers (Ray's raylet starts them)."""
    from ray._private import ray_constants

    raylets = {p.process.pid for p in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, [])}
    return bool(raylets & set(_ancestors(pid)))


def kill_node_while_training(cluster, node, store, proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait until a training run on ``node`` is running, then kill the node; return that run's id."""
    import pandas as pd

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        runs = store.list_runs(kind="train")
        for run in runs[runs.state == "running"].itertuples():
            if not pd.isna(run.pid) and runs_on_node(int(run.pid), node):
                cluster.remove_node(node, allow_graceful=False)
                return run.run_id
        time.sleep(0.2)
    raise RuntimeError("no training run started on the second node in time")


def sweep_command(model: str, address: str, *grid: str, train_samples: int = 80) -> list[str]:
    return [sys.executable, "-m", "jobs.sweep", "--model", model, "--seq-len", "16", "--train-samples",
            str(train_samples), "--val-samples", "4", "--lr", "1e-3", "--skip-start", "1", *grid,
            "--engine", "ray", "--address", address, "--cpus-per-trial", "1", "--quiet"]


def start_sweep(command: list[str], data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, **DRIVER_ENV, "PSILONET_DATA": str(data_dir)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tiny_model(folder: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_model, save_model_folder  # the tests' tiny llama, built the same way

    from psilonet.model import loading as modeling

    model = make_tiny_model(seed=0, vocab_size=49152, max_position_embeddings=512)
    return str(save_model_folder(model, folder, modeling.fetch_default_model(progress=False)))


def timed_sweep(cluster, node, model: str, data_dir: Path, grid: list[str], train_samples: int,
                lose_node: bool) -> float:
    start = time.perf_counter()
    proc = start_sweep(sweep_command(model, cluster.address, *grid, train_samples=train_samples), data_dir)
    if lose_node:
        from psilonet.store import Store

        kill_node_while_training(cluster, node, Store(data_dir), proc)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=80)
    parser.add_argument("--model", help="model folder (default: a tiny random llama)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="psilonet-node-loss-"))
    grid = ["--distances", "1", "2", "--seeds", "0", "1"]
    try:
        model = args.model or tiny_model(tmp / "tiny-model")
        whole, lost, ratios = [], [], []
        with loopback_cluster() as (cluster, node):
            for r in range(args.rounds):
                a = timed_sweep(cluster, node, model, tmp / f"whole-{r}", grid, args.train_samples, lose_node=False)
                b = timed_sweep(cluster, node, model, tmp / f"lost-{r}", grid, args.train_samples, lose_node=True)
                node = add_worker(cluster)  # the next round starts with two nodes again
                whole.append(a), lost.append(b), ratios.append(b / a)
                print(f"round {r + 1}: two nodes {a:5.1f} s, second node lost {b:5.1f} s (x{b / a:.2f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def spread(xs: list[float]) -> str:
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        return f"median {statistics.median(xs):.2f} (quartiles {q[0]:.2f}-{q[2]:.2f})"

    print(f"sweep of 4 trials (2 configs x 2 seeds, {args.train_samples} windows each), 2 nodes x 1 CPU:")
    print(f"  undisturbed           : {spread(whole)} s")
    print(f"  second node lost      : {spread(lost)} s")
    print(f"  ratio lost / whole    : x{spread(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

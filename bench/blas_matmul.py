"""float32 matmul GFLOP/s in MLX with the BLAS fix (OpenBLAS/BLIS bound first) and without it.

MLX binds its BLAS once per process, so each variant runs in a child process; the variants
alternate over several rounds so that machine noise hits both alike, and the ratio of medians
is printed.

    python -m bench.blas_matmul [--size 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
from psilonet import runtime
runtime.setup()
import mlx.core as mx
n, reps = int(sys.argv[1]), int(sys.argv[2])
a = mx.random.normal((n, n)); b = mx.random.normal((n, n)); mx.eval(a, b)
mx.eval(a @ b)
best = 0.0
for _ in range(3):
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
print(json.dumps({"blas": runtime.active_blas().describe(), "gflops": best}))
"""


def measure(blas: str, size: int, reps: int) -> dict:
    env = {**os.environ, "PSILONET_BLAS": blas}
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(reps)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {"auto": [], "reference": []}
    names = {}
    for _ in range(args.rounds):
        for blas, reps in (("auto", 10), ("reference", 1)):
            r = measure(blas, args.size, reps)
            results[blas].append(r["gflops"])
            names[blas] = r["blas"]
    fast, slow = (statistics.median(results[k]) for k in ("auto", "reference"))
    print(f"float32 matmul {args.size}^3, median of {args.rounds} rounds")
    print(f"  with the fix    : {fast:8.1f} GFLOP/s  [{names['auto']}]")
    print(f"  without the fix : {slow:8.1f} GFLOP/s  [{names['reference']}]")
    print(f"  ratio           : {fast / slow:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

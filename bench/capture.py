"""Capture throughput against a plain forward pass of the same batches (target: <= 1.5x).

In one process on the default model: tokens/s of ``model(x)`` (logits, evaluated), of the
same pass without the LM head, and of
``capture.capture_model`` (one forward pass per batch returning every residual state and every
head's output, gathering the kept tokens into numpy) on the same batches, the baseline and a
d=3 skip model. Variants alternate over rounds; medians are compared.

    python -m bench.capture [--batches 4] [--batch-size 8] [--seq-len 64] [--rounds 3]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import statistics
import sys
import time

import mlx.core as mx
import numpy as np

from psilonet.analysis import capture
from psilonet.model import forward, loading as modeling
from psilonet.model.skip import SkipConfig, SkipModel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    base, _ = modeling.load_model()
    print(f"BLAS: {runtime.active_blas().describe()}")
    rng = np.random.default_rng(0)
    windows = rng.integers(0, base.args.vocab_size, (args.batches * args.batch_size, args.seq_len)).astype(np.int32)
    keep = capture.select_positions(len(windows), args.seq_len, 10**9, 0)  # every token: the worst case
    tokens = windows.size

    for name, model in (("baseline", base), ("skip d=3", SkipModel.from_base(base, SkipConfig(distances=[3])))):
        def plain():
            for start in range(0, len(windows), args.batch_size):
                mx.eval(model(mx.array(windows[start : start + args.batch_size])))

        def trunk():  # the same pass without the LM head, which capture does not need
            for start in range(0, len(windows), args.batch_size):
                mx.eval(forward.hidden_states(model, mx.array(windows[start : start + args.batch_size]))[-1])

        def captured():
            capture.capture_model(model, windows, keep, args.batch_size, progress=False)

        plain(), trunk(), captured()  # warm-up
        times = {"plain": [], "trunk": [], "capture": []}
        for _ in range(args.rounds):
            for label, fn in (("plain", plain), ("trunk", trunk), ("capture", captured)):
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
        p, t, c = (statistics.median(times[k]) for k in ("plain", "trunk", "capture"))
        print(f"{name:9s} plain forward {tokens / p:5.0f} tok/s, without LM head {tokens / t:5.0f} tok/s, "
              f"capture {tokens / c:5.0f} tok/s: capture costs x{c / p:.2f} a plain forward "
              f"(target <= 1.5), x{c / t:.2f} the pass without LM head")
    return 0


if __name__ == "__main__":
    sys.exit(main())

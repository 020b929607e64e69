"""The logit lens over a 1,000-token capture against the capture itself (target: at most 2x).

In one process on the default model and the same evaluation windows (``--windows`` of
``--seq-len`` tokens of a corpus, ``--max-tokens`` positions kept by the capture):

* ``capture``: :func:`psilonet.analysis.capture.capture_model`, one forward pass per batch
  returning every residual state and head output of the kept tokens as numpy;
* ``lens``: :func:`psilonet.analysis.lens.logit_lens` over the same batches (every position of
  every window: top-k, next-token probability and rank, entropy, KL to final and to row 0).

The two alternate batch by batch over ``--rounds`` after a warm-up; the ratio lens / capture of
each round is reported as median and quartiles. Then one batch is profiled stage by stage with the lens
module's own functions (the forward pass, the ``L + 1`` unembeddings, numpy's log-softmax,
the top-k, the remaining statistics), which says where the time goes. The last line is
``goal lens vs capture: VALUE (target 2x) met|missed``.

    python -m bench.lens [--windows 16] [--seq-len 64] [--max-tokens 1000] [--batch-size 8] [--rounds 3]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import os
import statistics
import sys
import time

import mlx.core as mx
import numpy as np

from psilonet.analysis import capture, lens
from psilonet.model import forward, loading as modeling


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores"


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def profile(model, batch: np.ndarray, top_k: int = 5) -> dict[str, float]:
    """Seconds per stage of one lens pass over ``batch`` with the lens module's own functions,
    layer by layer as :func:`~psilonet.analysis.lens.logit_lens` runs them, but each stage
    evaluated on its own (no overlap of MLX and numpy)."""
    out = dict.fromkeys(("forward (states)", "unembeddings (MLX matmul)", "log-softmax (numpy)", "top-k",
                         "entropy, KLs, rank"), 0.0)
    start = time.perf_counter()
    states = forward.hidden_states(model, mx.array(batch))
    mx.eval(states)
    out["forward (states)"] = time.perf_counter() - start
    lp = p = diff = final_lp = final_p = None
    for l in [len(states) - 1] + list(range(len(states) - 1)):
        start = time.perf_counter()
        z = forward.logits_from(model, states[l]).astype(mx.float32)
        mx.eval(z)
        mid = time.perf_counter()
        out["unembeddings (MLX matmul)"] += mid - start
        if lp is None:
            lp, p, diff = (np.empty(z.shape, np.float32) for _ in range(3))
        lens._log_softmax(z, lp, p)
        now = time.perf_counter()
        out["log-softmax (numpy)"] += now - mid
        if final_lp is None:
            final_lp, final_p = lp.copy(), p.copy()
        lens._top_k(lp, top_k)
        then = time.perf_counter()
        out["top-k"] += then - now
        lens._dot(p, lp), lens._dot(final_p, np.subtract(final_lp, lp, out=diff))
        lens._dot(p[:1], np.subtract(lp[:1], lp, out=diff)), np.count_nonzero(lp > lp[..., :1], axis=-1)
        out["entropy, KLs, rank"] += time.perf_counter() - then
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="python-docs")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.windows, args.seq_len, args.max_tokens, args.batch_size, args.rounds) < 1 or args.seq_len < 2:
        print("error: every count must be >= 1 and --seq-len >= 2", file=sys.stderr)
        return 2
    model, tokenizer = modeling.load_model()
    cfg = capture.CaptureConfig(dataset=args.dataset, seq_len=args.seq_len, samples=args.windows,
                                max_tokens=min(args.max_tokens, args.windows * args.seq_len))
    windows = capture.evaluation_windows(tokenizer, cfg)
    keep = capture.select_positions(len(windows), args.seq_len, cfg.max_tokens, cfg.seed)
    print(f"CPU: {cpu_name()}, load average {os.getloadavg()[0]:.1f} at start")
    print(f"BLAS: {runtime.active_blas().describe()}")
    print(f"{len(windows)} {args.dataset} windows x {args.seq_len} tokens, capture keeps {len(keep)}, "
          f"the lens reads all {windows.size}; batches of {args.batch_size}")

    seq = args.seq_len
    batches = []
    for start in range(0, len(windows), args.batch_size):
        part = windows[start : start + args.batch_size]
        kept = keep[(keep >= start * seq) & (keep < (start + len(part)) * seq)] - start * seq
        batches.append((part, kept))

    def captured(part, kept):
        capture.capture_model(model, part, kept, args.batch_size, progress=False)

    def lensed(part, kept):
        lens.logit_lens(model, part)

    for part, kept in batches:  # warm-up
        captured(part, kept), lensed(part, kept)
    # The two alternate batch by batch (which goes first alternates too), so that a burst of load
    # from the other jobs on this machine falls on both rather than on one whole pass.
    times: dict[str, list[float]] = {"capture": [], "lens": []}
    for r in range(args.rounds):
        spent = {"capture": 0.0, "lens": 0.0}
        for b, (part, kept) in enumerate(batches):
            pair = (("capture", captured), ("lens", lensed)) if (r + b) % 2 == 0 else (("lens", lensed), ("capture", captured))
            for label, fn in pair:
                start = time.perf_counter()
                fn(part, kept)
                spent[label] += time.perf_counter() - start
        for label, seconds in spent.items():
            times[label].append(seconds)
    ratios = [l / c for l, c in zip(times["lens"], times["capture"])]
    for label, ts in times.items():
        print(f"{label:8s} median {statistics.median(ts):6.2f} s ({windows.size / statistics.median(ts):5.0f} tok/s), "
              f"rounds {', '.join(f'{t:.2f}' for t in ts)}")
    stages = profile(model, windows[: args.batch_size])
    total = sum(stages.values())
    print(f"one batch of {args.batch_size} windows, stage by stage ({total:.2f} s):")
    for name, seconds in stages.items():
        print(f"  {name:32s} {seconds:6.2f} s  {100 * seconds / total:4.0f}%")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    low, high = quartiles(ratios)
    med = statistics.median(ratios)
    print(f"goal lens vs capture: x{med:.2f} (quartiles {low:.2f}-{high:.2f}, {len(ratios)} rounds) "
          f"(target 2x) {'met' if med <= 2 else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the capture's stored lens and attention summaries add to a capture, on the demo's settings.

In one process on the default model: ``capture.capture_model`` over the evaluation windows (the
activations a capture stores for one side) against ``capture_lens.summarise`` over the first
``--lens-positions`` positions' windows (the corpus lens, attention summaries, grid and patterns
of that side), interleaved over rounds; prints each round, then the median ratio and quartiles.

    python -m bench.capture_summaries [--samples 24] [--max-tokens 1000] [--lens-positions 64] [--rounds 3]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import statistics
import sys
import time

from psilonet.analysis import capture, capture_lens
from psilonet.model import loading as modeling


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=1000)
    parser.add_argument("--lens-positions", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.samples, args.max_tokens, args.lens_positions, args.rounds) < 1:
        print("error: --samples, --max-tokens, --lens-positions and --rounds must be >= 1", file=sys.stderr)
        return 2
    model, tokenizer = modeling.load_model(None, None)
    cfg = capture.CaptureConfig(samples=args.samples, max_tokens=args.max_tokens,
                                lens_positions=args.lens_positions).validate()
    windows = capture.evaluation_windows(tokenizer, cfg)
    keep = capture.select_positions(len(windows), cfg.seq_len, cfg.max_tokens, cfg.seed)
    n = capture_lens.summary_windows(len(windows), cfg.seq_len, cfg.lens_positions)
    decode = lambda i: tokenizer.decode([i])
    print(f"BLAS: {runtime.active_blas().describe()}")
    print(f"capture: {len(windows)} windows x {cfg.seq_len} tokens, {len(keep)} kept; summaries: {n} window(s) "
          f"({n * cfg.seq_len} positions x {modeling.DEFAULT_MODEL} model's states)")
    ratios, t_cap, t_sum = [], [], []
    for r in range(args.rounds):
        start = time.perf_counter()
        capture.capture_model(model, windows, keep, cfg.batch_size, progress=False)
        t_cap.append(time.perf_counter() - start)
        start = time.perf_counter()
        capture_lens.summarise("baseline", model, windows[:n], decode, grid_positions=cfg.grid_positions)
        t_sum.append(time.perf_counter() - start)
        ratios.append(t_sum[-1] / t_cap[-1])
        print(f"round {r + 1}: capture {t_cap[-1]:.1f} s, summaries {t_sum[-1]:.1f} s, ratio {ratios[-1]:.3f}", flush=True)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"capture median {statistics.median(t_cap):.1f} s, summaries median {statistics.median(t_sum):.1f} s; "
          f"ratio summaries / capture: median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

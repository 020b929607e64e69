"""What attending over the written span saves: the compiled decode step with spans growing in
steps of ``SPAN_STEP`` against attention over the whole KV buffer, at several buffer capacities.

Default model, greedy, sober; ms per step over ``--tokens`` steps after a short prompt (so the
written span stays under one ``SPAN_STEP`` while the capacity grows). Variants run interleaved
over rounds in one process; each ratio is taken within a round.

    python -m bench.decode_spans [--rows 8] [--tokens 24] [--rounds 3]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import statistics
import sys
import time

import mlx.core as mx

from psilonet.generation import decode_step
from psilonet.model import loading as modeling

PROMPT = "The history of the city begins in the early middle ages, when"
CAPACITIES = (64, 256, 1024)


def ms_per_step(model, ids: list[int], rows: int, capacity: int, span_step: int, tokens: int) -> float:
    dec = decode_step.Decoder(model, rows, capacity, span_step=span_step)
    t = dec.prefill(ids)["tokens"]
    mx.eval(t)
    start = time.perf_counter()
    for _ in range(tokens):
        t = dec.step(t)["tokens"]
        mx.eval(t)
    return 1000 * (time.perf_counter() - start) / tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.rows, args.tokens, args.rounds) < 1:
        print("error: --rows, --tokens and --rounds must be >= 1", file=sys.stderr)
        return 2
    model, tokenizer = modeling.load_model()
    print(f"BLAS: {runtime.active_blas().describe()}")
    ids = tokenizer.encode(PROMPT)
    variants = {(cap, name): (cap, step) for cap in CAPACITIES
                for name, step in (("spans", decode_step.SPAN_STEP), ("whole buffer", cap))}
    for cap, step in variants.values():  # traces every compiled graph once
        ms_per_step(model, ids, args.rows, cap, step, 2)
    times: dict = {key: [] for key in variants}
    keys = list(variants)
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            times[key].append(ms_per_step(model, ids, args.rows, *variants[key], args.tokens))
    print(f"ms per step, {args.rows} rows, {args.tokens} steps, median [min-max] over {args.rounds} rounds:")
    for cap in CAPACITIES:
        spans, whole = times[(cap, "spans")], times[(cap, "whole buffer")]
        ratio = [a / b for a, b in zip(spans, whole)]
        print(f"  capacity {cap:5d}: spans {statistics.median(spans):6.1f} [{min(spans):.1f}-{max(spans):.1f}]"
              f"   whole buffer {statistics.median(whole):6.1f} [{min(whole):.1f}-{max(whole):.1f}]"
              f"   spans / whole x{statistics.median(ratio):.2f} [{min(ratio):.2f}-{max(ratio):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

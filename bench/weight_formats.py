"""Would fewer bytes per weight make decode faster here? One decode row through every block's
weight products in each format MLX offers, as ratios to float32 measured in the same process.

A single-stream decode step reads every weight once, so on a machine whose memory bandwidth
bounds it, half-precision or quantized weights (a half or a quarter to an eighth of the bytes)
would be the way past the float32 ceiling, if MLX's CPU kernels for them stream as fast. The
chain has the default model's shapes (30 blocks of q, k, v, o, gate, up and down products, each
block with its own matrices so that they come from memory, and the LM head), random weights,
one row; formats run interleaved over rounds, and each ratio is taken within a round.

    python -m bench.weight_formats [--rounds 5]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import statistics
import sys
import time

import mlx.core as mx


D, F, KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
SHAPES = [(D, D), (KV, D), (KV, D), (D, D), (F, D), (F, D), (D, F)]


def formats(weights: list[mx.array]) -> dict:
    """Each format as a function of (x, i) -> x @ weights[i].T, with its weights prepared."""
    out = {"float32": (lambda x, i: x @ weights[i].T)}
    for name, dtype in (("bfloat16", mx.bfloat16), ("float16", mx.float16)):
        cast = [w.astype(dtype) for w in weights]
        mx.eval(cast)
        out[name] = (lambda c, t: lambda x, i: x.astype(t) @ c[i].T)(cast, dtype)
    for bits in (8, 4):
        quantized = [mx.quantize(w, group_size=64, bits=bits) for w in weights]
        mx.eval(quantized)
        out[f"{bits}-bit (group 64)"] = (lambda q, b: lambda x, i: mx.quantized_matmul(
            x, *q[i], transpose=True, group_size=64, bits=b))(quantized, bits)
    return out


def chain_ms(product, weights: list[mx.array], repeats: int = 3) -> float:
    """Best of ``repeats`` of one row through every product (one row per token, as in decode)."""
    vecs = {D: mx.ones((1, D)), F: mx.ones((1, F))}
    mx.eval(list(vecs.values()))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        outs = [product(vecs[w.shape[1]], i) for i, w in enumerate(weights)]
        mx.eval(outs)
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        print("error: --rounds must be >= 1", file=sys.stderr)
        return 2
    print(f"BLAS: {runtime.active_blas().describe()}")
    weights = [mx.random.normal(shape) * 0.02 for _ in range(LAYERS) for shape in SHAPES]
    weights.append(mx.random.normal((VOCAB, D)) * 0.02)
    mx.eval(weights)
    variants = formats(weights)
    for product in variants.values():  # warm-up
        chain_ms(product, weights, repeats=1)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(chain_ms(variants[name], weights))
    print(f"one row through all {LAYERS} blocks' weight products and the LM head, ms, "
          f"median [min-max] over {args.rounds} rounds; time relative to float32 within each round:")
    for name in names:
        ratio = [t / f for t, f in zip(times[name], times["float32"])]
        print(f"  {name:18s} {statistics.median(times[name]):7.1f} [{min(times[name]):.1f}-{max(times[name]):.1f}]"
              f"   x{statistics.median(ratio):.2f} [{min(ratio):.2f}-{max(ratio):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The quantized matmul kernels against MLX's, on the default model's weight products.

One decode step's weight products (30 blocks of q, k, v, o, gate, up and down, each block with
its own matrices so that they stream from memory, and the 8-bit LM head), random weights in
MLX's affine layout with group 32 (the GGUF's), for 1 and 8 rows: float32 ``x @ W.T``,
``mx.quantized_matmul``, and the psilonet extension with float32, int16 and int8 activations,
and with int16 activations on the panel layout (``kernels.h``; what q4/q8 models decode with).
Variants run interleaved over rounds; each ratio to float32 is taken within a round and printed
as median [quartiles].

    python -m bench.qmm [--rounds 5] [--rows 1 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx
import mlx.core as mx

from psilonet.kernels import qmm

D, F, KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
SHAPES = [(D, D), (KV, D), (KV, D), (D, D), (F, D), (F, D), (D, F)]
GROUP = 32


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def variants(weights: list[mx.array]) -> dict:
    bits = [4] * (len(weights) - 1) + [8]  # the GGUF's: Q4_1 blocks, an 8-bit embedding/head
    packed = [mx.quantize(w, group_size=GROUP, bits=b) for w, b in zip(weights, bits)]
    mx.eval(packed)
    out = {"float32": lambda x, i: x @ weights[i].T,
           "mx.quantized_matmul": lambda x, i: mx.quantized_matmul(
               x, *packed[i], transpose=True, group_size=GROUP, bits=bits[i])}
    ext = qmm.extension()
    if ext is not None:
        for code, name in enumerate(ext.MODES):  # 0 float, 1 int8, 2 int16
            out[f"extension, {name} x"] = (lambda c: lambda x, i: ext.quantized_matmul(
                x, *packed[i], GROUP, bits[i], c))(code)
        panels = [qmm.pack_panels(*p, bits=b) for p, b in zip(packed, bits)]
        if all(p is not None for p in panels):  # the panel kernel is built
            out["extension, int16 x, panels"] = lambda x, i: ext.quantized_matmul_panel(
                x, panels[i].w, panels[i].scales, panels[i].biases, GROUP, bits[i])
    return out


def chain_ms(product, weights, rows: int) -> float:
    vecs = {D: mx.random.normal((rows, D)), F: mx.random.normal((rows, F))}
    mx.eval(list(vecs.values()))
    start = time.perf_counter()
    mx.eval([product(vecs[w.shape[1]], i) for i, w in enumerate(weights)])
    return 1000 * (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(not 1 <= r <= 64 for r in args.rows):
        print("error: --rounds must be >= 1 and each --rows between 1 and 64", file=sys.stderr)
        return 2
    print(f"BLAS: {runtime.active_blas().describe()}")
    print(qmm.describe())
    weights = [mx.random.normal(shape) * 0.02 for _ in range(LAYERS) for shape in SHAPES]
    weights.append(mx.random.normal((VOCAB, D)) * 0.02)
    mx.eval(weights)
    products = variants(weights)
    names = list(products)
    for rows in args.rows:
        for name in names:  # warm-up
            chain_ms(products[name], weights, rows)
        times = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(chain_ms(products[name], weights, rows))
        print(f"{rows} row(s) through all {LAYERS} blocks' products and the LM head, ms median "
              f"[quartiles] over {args.rounds} rounds; ratio to float32 within each round:")
        for name in names:
            q1, med, q3 = quartiles(times[name])
            r1, rm, r3 = quartiles([t / f for t, f in zip(times[name], times["float32"])])
            print(f"  {name:22s} {med:7.2f} [{q1:.2f}-{q3:.2f}]   x{rm:.2f} [{r1:.2f}-{r3:.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

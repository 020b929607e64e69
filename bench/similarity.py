"""CKA speed: psilonet.analysis.similarity against a straightforward n x n Gram-matrix implementation.

    python -m bench.similarity [--baseline-layers 2] [--matrix-pairs 3] [--skip-features]

Two workloads on synthetic but structured float32 activations (B is A through a random
near-orthogonal map plus noise, so the CKA values are far from 0 and 1):

1. ``per_head_cka`` over 30 layers x 9 heads, 3000 tokens, head_dim 64, against a loop that
   builds K = X X^T and L = Y Y^T (3000 x 3000) per head, double-centres them and sums
   ``Kc * Lc``. The loop takes most of a second per head, so by default it runs on the first
   ``--baseline-layers`` layers only and its full time is extrapolated (printed as such).
2. ``cka_matrix`` for 31 layers x 576 features x 3000 tokens (every pair of layers of two
   models), with the automatic route and the per-pair feature-space route, against the naive
   pairwise loop of the Gram version on a ``--matrix-pairs`` x ``--matrix-pairs`` corner,
   again extrapolated to all 961 pairs.
3. One capture's analysis (``--analysis-tokens``): every representation (rms, raw, no-sink) as
   ``jobs.analyze`` computes it now, against the single raw choice computed the way it was
   before (each per-layer metric by its own function), interleaved over rounds.

Everything runs in one process on the same data; each line says what was measured and what
was extrapolated, and the largest absolute difference between the two results.
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import os
import time

import numpy as np

from psilonet.analysis import compare
from psilonet.analysis.similarity import (_choose_matrix_method, cka_matrix, linear_cka, per_head_cka, pwcca,
                                          svcca)

TOKENS = 3000


def naive_gram_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Textbook linear CKA: n x n Gram matrices, centred as H K H, HSIC as sums (float64)."""
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    K, L = X @ X.T, Y @ Y.T

    def centred(G: np.ndarray) -> np.ndarray:   # H G H with H = I - 11'/n
        return G - G.mean(axis=0) - G.mean(axis=1)[:, None] + G.mean()

    Kc, Lc = centred(K), centred(L)
    return float((Kc * Lc).sum() / np.sqrt((Kc * Kc).sum() * (Lc * Lc).sum()))


def related_pair(shape: tuple[int, ...], width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``A`` of ``shape (..., TOKENS, width)`` driven by shared token factors, and
    ``B = A @ (near-orthogonal map) + noise``, both float32."""
    g = np.random.default_rng(seed)
    factors = g.standard_normal((TOKENS, 2 * width)).astype(np.float32)
    mix = g.standard_normal((*shape, 2 * width, width)).astype(np.float32) / np.sqrt(2 * width)
    A = factors @ mix + 0.3 * g.standard_normal((*shape, TOKENS, width), dtype=np.float32)
    Q, _ = np.linalg.qr(g.standard_normal((width, width)))
    near = (Q + 0.2 * g.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    B = A @ near + 0.5 * g.standard_normal(A.shape, dtype=np.float32)
    return A, B


def row(label: str, value: str) -> None:
    print(f"  {label:<31}: {value}")


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_per_head(baseline_layers: int) -> None:
    layers, heads, head_dim = 30, 9, 64
    A, B = related_pair((layers, heads), head_dim, seed=0)
    print(f"per_head_cka: {layers} layers x {heads} heads, {TOKENS} tokens, head_dim {head_dim}, "
          "float32 inputs")
    ours_t, ours = best_time(lambda: per_head_cka(A, B), repeats=3)
    deb_t, _ = best_time(lambda: per_head_cka(A, B, debiased=True), repeats=3)

    sub = min(baseline_layers, layers)
    t = time.perf_counter()
    naive = np.array([[naive_gram_cka(A[l, h], B[l, h]) for h in range(heads)]
                      for l in range(sub)])
    naive_t = (time.perf_counter() - t) * layers / sub
    label = "measured" if sub == layers else f"extrapolated from {sub * heads} heads"
    row("ours (feature space, batched)", f"{ours_t:8.3f} s   debiased: {deb_t:.3f} s")
    row("naive n x n Gram loop", f"{naive_t:8.1f} s   ({label})")
    row("speed-up", f"{naive_t / ours_t:8.0f}x")
    row("max |ours - naive|", f"{np.abs(ours[:sub] - naive).max():.2e}   "
        f"(CKA range {ours.min():.3f}..{ours.max():.3f})")


def bench_matrix(pairs: int, skip_features: bool) -> None:
    layers, width = 31, 576
    A, B = related_pair((layers,), width, seed=1)
    print(f"\ncka_matrix: {layers} x {layers} layers, {width} features, {TOKENS} tokens, "
          "float32 inputs")
    route = _choose_matrix_method(TOKENS, [width] * layers, [width] * layers)
    auto_t, ours = best_time(lambda: cka_matrix(A, B), repeats=1)
    row(f"ours, auto (chose '{route}')", f"{auto_t:8.1f} s")
    if not skip_features:
        feat_t, feat = best_time(lambda: cka_matrix(A, B, method="features"), repeats=1)
        row("ours, method='features'", f"{feat_t:8.1f} s   "
            f"(max |auto - features| {np.abs(ours - feat).max():.1e})")

    k = min(pairs, layers)
    t = time.perf_counter()
    naive = np.array([[naive_gram_cka(A[i], B[j]) for j in range(k)] for i in range(k)])
    naive_t = (time.perf_counter() - t) * layers**2 / k**2
    row("naive pairwise Gram loop", f"{naive_t:8.0f} s   "
        f"(extrapolated from {k}x{k} = {k * k} pairs)")
    row("speed-up (auto)", f"{naive_t / auto_t:8.0f}x")
    row(f"max |ours - naive| on {k}x{k}", f"{np.abs(ours[:k, :k] - naive).max():.2e}   "
        f"(CKA range {ours.min():.3f}..{ours.max():.3f})")


def single_choice_analysis(source, base, trained, tokens, window, seed):
    """The analysis as it was before representations: one choice (raw), every per-layer metric
    by its own function (four SVD-based CCA calls and two CKA calls per layer)."""
    (b, bh), (t, th) = base, trained
    rows = []
    for l in range(source.layers):
        rows.append((linear_cka(b[l], t[l]), linear_cka(b[l], t[l], debiased=True), svcca(b[l], t[l]),
                     pwcca(b[l], t[l])))
    grids = [per_head_cka(bh, th), per_head_cka(bh, th, debiased=True)]
    matrix = cka_matrix(b, t)
    paths = compare.trajectory_rows(source, {"baseline": b, "trained": t}, tokens, seed)
    return rows, grids, matrix, paths


def bench_analysis(tokens: int, rounds: int) -> None:
    """One capture's analysis: every representation (rms, raw, no-sink) against the single raw
    choice of before, interleaved over ``rounds``."""
    import pandas as pd

    layers, width, heads, head_dim = 31, 576, 9, 64
    g = np.random.default_rng(2)
    A, B = related_pair((layers,), width, seed=3)
    A, B = A[:, :tokens], B[:, :tokens]
    sinks = g.choice(tokens, size=max(1, tokens // 60), replace=False)
    for M in (A, B):
        M[12:29, sinks, 507] = 2.5e4   # planted attention sinks, as SmolLM2's block 11 writes them
    HA, HB = related_pair((layers - 1, heads), head_dim, seed=4)
    HA, HB = HA[:, :, :tokens], HB[:, :, :tokens]
    toks = pd.DataFrame({"token_idx": np.arange(tokens), "seq": np.arange(tokens) // 64,
                         "pos": np.arange(tokens) % 64, "token_text": ["t"] * tokens})
    source = compare.Source("bench", "synthetic", ["baseline", "trained"], layers, heads)
    base, trained = (list(A), HA), (list(B), HB)
    print(f"\nanalysis of one capture: {layers} layers x {width} features, {layers - 1} x {heads} heads, "
          f"{tokens} tokens, {len(sinks)} planted sinks; {rounds} interleaved rounds")
    single, every = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        single_choice_analysis(source, base, trained, toks, (10, 20), 0)
        single.append(time.perf_counter() - t)
        t = time.perf_counter()
        compare.analyse_source(source, base, trained, toks, (10, 20), 0)
        every.append(time.perf_counter() - t)
    ratios = np.array(every) / np.array(single)
    row("single choice (raw, before)", "  ".join(f"{x:6.1f} s" for x in single))
    row("every representation (now)", "  ".join(f"{x:6.1f} s" for x in every))
    row("ratio now / before", f"median {np.median(ratios):.2f}x   (range {ratios.min():.2f}..{ratios.max():.2f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-layers", type=int, default=2,
                        help="layers (x 9 heads) the naive per-head loop runs on (30 = all)")
    parser.add_argument("--matrix-pairs", type=int, default=3,
                        help="corner of the layer matrix the naive pairwise loop runs on")
    parser.add_argument("--skip-features", action="store_true",
                        help="do not time cka_matrix(method='features') (~30 s on 2 cores)")
    parser.add_argument("--analysis-tokens", type=int, default=2000,
                        help="tokens of the synthetic capture in the analysis workload (the capture default)")
    parser.add_argument("--analysis-rounds", type=int, default=3)
    parser.add_argument("--only-analysis", action="store_true", help="run the analysis workload only")
    args = parser.parse_args(argv)
    # Timings on a shared machine: the load average says whether other work competed for cores.
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start\n")
    if not args.only_analysis:
        bench_per_head(args.baseline_layers)
        bench_matrix(args.matrix_pairs, args.skip_features)
    bench_analysis(args.analysis_tokens, args.analysis_rounds)
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

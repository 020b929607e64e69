"""What an ablation costs: every component of a trained skip run turned off (one batch row
each, ``jobs.ablate``'s code) against one plain validation pass of the trained model over the
same windows, in one process, interleaved over rounds.

A plain pass reads ``W`` windows; the ablation reads ``(C + 2) x W`` rows (``C`` components
plus "none off" and "all off"), so a ratio near ``C + 2`` means an ablation costs what one
more row costs, and less than that means batching the rows pays (``jobs.ablate`` starts each row
at its component's block, so a row costs less than a full pass). With ``--breakdown`` three more
timings in the same rounds split the cost, each over the same ``(C + 2) x W`` rows: ``every
block``, every row through every block (the ablation before rows started from the trained
states), ``unmasked``, the same batches through the trained model without masks (what the masks
add), and ``plain rows``, those unmasked rows ``W`` at a time, the plain pass's batch size (what
the larger batches add).

    python -m bench.ablation --run RUN [--data-dir DIR] [--windows 2] [--layers 15] [--rounds 3] [--breakdown]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from psilonet import corpora
from psilonet.analysis import ablation
from psilonet.store import Store
from psilonet.training import loop as training
from psilonet.training.evaluation import lm_loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="only these skip layers (default: all)")
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the same rows unmasked, in the same batches and W at a time")
    args = parser.parse_args(argv)
    if min(args.windows, args.rounds, args.batch_rows) < 1:
        print("error: --windows, --rounds and --batch-rows must be >= 1", file=sys.stderr)
        return 2
    store = Store(args.data_dir)
    model, tokenizer, cfg = training.load_trained(store, args.run, data_dir=store.data_dir)
    windows = corpora.load_windows(tokenizer, cfg.dataset, seq_len=cfg.seq_len, n_train=cfg.train_samples,
                                   n_val=cfg.val_samples, seed=cfg.split_seed, data_dir=store.data_dir).val[:args.windows]
    comps = ablation.components(model, args.layers)
    print(f"BLAS: {runtime.active_blas().describe()}")
    print(f"{len(comps) - 2} components (+2 references) x {len(windows)} windows of {cfg.seq_len} tokens, "
          f"{args.batch_rows} rows per forward")

    def plain() -> float:
        start = time.perf_counter()
        mx.eval(lm_loss(model, mx.array(windows)))
        return time.perf_counter() - start

    def ablate() -> float:
        start = time.perf_counter()
        ablation.ablate(model, windows, comps, batch_rows=args.batch_rows)
        return time.perf_counter() - start

    rows_windows = np.asarray([windows[w] for _, w in ablation.pairs(comps, len(windows))])

    def rows_in_batches(size: int) -> float:
        start = time.perf_counter()
        for k in range(0, len(rows_windows), size):
            chunk = mx.array(rows_windows[k : k + size])
            mx.eval(nn.losses.cross_entropy(model(chunk[:, :-1]), chunk[:, 1:], reduction="none").mean(axis=1))
        return time.perf_counter() - start

    def unmasked() -> float:
        return rows_in_batches(args.batch_rows)

    def every_block() -> float:  # what ablate did before it started rows from the trained states
        start = time.perf_counter()
        todo = list(ablation.pairs(comps, len(windows)))
        for k in range(0, len(todo), args.batch_rows):
            chunk = todo[k : k + args.batch_rows]
            ablation.row_losses(model, windows[[w for _, w in chunk]], [c for c, _ in chunk])
        return time.perf_counter() - start

    def plain_rows() -> float:
        return rows_in_batches(len(windows))

    plain()  # warm-up
    ratios, t_plain, t_ablate = [], [], []
    extra = {"every_block": [], "unmasked": [], "plain_rows": []}
    variants = (plain, ablate, every_block, unmasked, plain_rows) if args.breakdown else (plain, ablate)
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        times = {f.__name__: f() for f in order}
        t_plain.append(times["plain"])
        t_ablate.append(times["ablate"])
        ratios.append(times["ablate"] / times["plain"])
        for name in extra:
            if name in times:
                extra[name].append(times[name] / times["plain"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
              + f", ratio {ratios[-1]:.1f}", flush=True)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    rows = len(comps)
    print(f"plain pass median {statistics.median(t_plain):.2f} s; full ablation median {statistics.median(t_ablate):.1f} s")
    print(f"ratio ablation / plain: median {statistics.median(ratios):.1f} (quartiles {q[0]:.1f}-{q[2]:.1f}) "
          f"for {rows} rows per window ({rows - 2} components + 2): {statistics.median(ratios) / rows:.2f} "
          "plain passes per component")
    for name, values in extra.items():
        if values:
            q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
            print(f"ratio {name.replace('_', ' ')} / plain: median {statistics.median(values):.1f} "
                  f"(quartiles {q[0]:.1f}-{q[2]:.1f}): {statistics.median(values) / rows:.2f} plain passes per row")
    if extra["every_block"]:
        gain = [e / a for e, a in zip(extra["every_block"], ratios)]
        q = statistics.quantiles(gain, n=4) if len(gain) > 1 else [gain[0]] * 3
        print(f"every block / ablation (rows started from the trained states): median {statistics.median(gain):.2f}x "
              f"(quartiles {q[0]:.2f}-{q[2]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

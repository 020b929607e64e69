"""Lens and attention findings on a model, over windows of the offline corpora (README, "Findings").

For each corpus (``--datasets``), on ``--windows`` validation windows of ``--seq-len`` tokens
(the seeded windows a capture reads):

* ``lens``: per layer, the share of positions whose logit-lens top-1 is the final top-1
  (``agree``), the share whose top-1 is the input token at that position (``echo``), the mean
  ``kl_final`` (nats) and the median rank of the corpus next token; then the first layer
  where ``agree`` passes 50 % and the median over positions of the *settling* layer (the first
  layer from which the top-1 stays the final top-1 up to the last layer). With ``--run`` the
  same for that training run's skip model; with ``--tuned`` (a tuned-lens run fitted to the
  base model) the same through the tuned lens.
* ``doses``: the windows in one batch per window with doses ``--intensities`` (seed 0), mean
  ``kl_sober`` per layer and the first layer where it passes ``--threshold`` nats.
* ``sink``: per layer, the share of base attention on position 0 averaged over heads and query
  positions t >= 1 (``attention.summaries``), sober and under fatigue ``--fatigue``.

    python -m bench.lens_findings [--run RUN] [--tuned RUN] [--windows 8] [--seq-len 64]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys
import time

import mlx.core as mx
import numpy as np

from jobs.cli import data_dir as resolve_data_dir
from psilonet import corpora
from psilonet.analysis import attention, lens, tuned_lens
from psilonet.model import loading as modeling
from psilonet.store import Store


def lens_stats(read: lens.Lens, windows: np.ndarray) -> dict:
    """Per-layer agreement, echo, KL and next-token rank, and the settling layers."""
    top1 = read.top_ids[:, :, :, 0]  # (B, L+1, T)
    match = top1 == top1[:, -1:, :]
    trailing = np.cumprod(match[:, ::-1], axis=1).sum(axis=1)  # layers from the end that already agree
    settle = match.shape[1] - trailing  # (B, T): the first layer of the final run of agreement
    agree = match.mean(axis=(0, 2))
    above = np.nonzero(agree > 0.5)[0]
    ranks = read.rank_next[:, :, :-1].astype(float)
    return dict(agree=agree, echo=(top1 == windows[:, None, :]).mean(axis=(0, 2)),
                kl=read.kl_final.mean(axis=(0, 2)), rank=np.median(ranks.transpose(1, 0, 2).reshape(len(agree), -1), axis=1),
                first_half=int(above[0]) if len(above) else None, settle=float(np.median(settle)))


def read_all(model, windows: np.ndarray, batch: int, tuned=None) -> lens.Lens:
    parts = [lens.logit_lens(model, windows[i : i + batch], top_k=1, tuned=tuned) for i in range(0, len(windows), batch)]
    return lens.Lens(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in lens.Lens.__dataclass_fields__})


def print_lens(name: str, stats: dict, every: int) -> None:
    print(f"  {name}: agree > 50% first at layer {stats['first_half']}, median settling layer {stats['settle']:g}")
    print(f"    {'layer':>5} {'agree':>6} {'echo':>6} {'kl_final':>9} {'rank_next':>9}")
    last = len(stats["agree"]) - 1
    for l in range(0, last + 1):
        if l % every == 0 or l >= last - 2:
            print(f"    {l:>5} {stats['agree'][l]:6.3f} {stats['echo'][l]:6.3f} {stats['kl'][l]:9.3f} {stats['rank'][l]:9g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["python-docs", "smol-stories"], choices=corpora.OFFLINE_CORPORA)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--offset", type=int, default=0,
                        help="skip the first N seeded windows (0: a capture's windows; 64: a default tuned lens's validation windows)")
    parser.add_argument("--run", help="a training run: its skip model's lens beside the baseline's")
    parser.add_argument("--tuned", help="a tuned-lens run fitted to the base model")
    parser.add_argument("--intensities", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--dose-windows", type=int, default=4, help="windows of the dose and sink findings; 0 skips them")
    parser.add_argument("--threshold", type=float, default=0.1, help="nats of mean kl_sober that count as diverged")
    parser.add_argument("--fatigue", type=float, default=1.0)
    parser.add_argument("--every", type=int, default=5, help="print every n-th layer (and the last three)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    store = Store(resolve_data_dir(args.data_dir))
    started = time.perf_counter()
    base, tokenizer = modeling.load_model(None, store.data_dir)
    trained = None
    if args.run:
        from psilonet.training import loop as training

        trained, _, _ = training.load_trained(store, args.run, data_dir=store.data_dir)
    tuned = tuned_lens.load(store.run_dir(args.tuned) / tuned_lens.WEIGHTS_FILE, base) if args.tuned else None
    print(f"BLAS: {runtime.active_blas().describe()}")
    for dataset in args.datasets:
        # Window i of the seeded order is the same for every job of this seed, so an offset past
        # the windows a lens or adapter was fitted on reads held-out text.
        windows = corpora.load_windows(tokenizer, dataset, seq_len=args.seq_len, n_train=args.offset, n_val=args.windows,
                                       seed=0, data_dir=store.data_dir).val
        print(f"\n{dataset}: {len(windows)} windows x {args.seq_len} tokens after the first {args.offset}")
        print_lens("logit lens, baseline", lens_stats(read_all(base, windows, args.batch), windows), args.every)
        if trained is not None:
            print_lens(f"logit lens, trained {args.run}", lens_stats(read_all(trained, windows, args.batch), windows), args.every)
        if tuned is not None:
            print_lens(f"tuned lens {args.tuned}, baseline", lens_stats(read_all(base, windows, args.batch, tuned), windows), args.every)

        if args.dose_windows < 1:
            continue
        rows = [0.0, *args.intensities]
        hooks = lens.side_hooks(base, rows, seed=0)
        kl = np.mean([lens.logit_lens(base, np.repeat(w[None], len(rows), axis=0), hooks=hooks, top_k=1).kl_sober.mean(axis=2)
                      for w in windows[: args.dose_windows]], axis=0)  # (rows, L+1)
        print(f"  doses, mean kl_sober (nats) over {min(args.dose_windows, len(windows))} windows:")
        for r, x in enumerate(rows[1:], start=1):
            over = np.nonzero(kl[r] > args.threshold)[0]
            print(f"    {x:g}: first layer over {args.threshold:g} nats: {int(over[0]) if len(over) else None}; "
                  + ", ".join(f"L{l} {kl[r, l]:.3f}" for l in sorted({*range(0, kl.shape[1], args.every), kl.shape[1] - 1})))

        n = min(args.dose_windows, len(windows))
        both = np.concatenate([windows[:n], windows[:n]])
        captured, _ = attention.base_patterns(base, both, [0.0] * n + [args.fatigue] * n)
        sink = np.array([attention.summaries(np.array(captured[l].astype(mx.float32)))["sink"] for l in sorted(captured)])  # (L, 2n, H)
        sober, tired = sink[:, :n].mean(axis=(1, 2)), sink[:, n:].mean(axis=(1, 2))
        print(f"  sink share per layer ({n} windows; sober / fatigue {args.fatigue:g}):")
        print("    " + ", ".join(f"L{l} {sober[l]:.3f}/{tired[l]:.3f}" for l in range(len(sober))))
        print(f"    mean over layers {sober.mean():.3f} / {tired.mean():.3f}; fatigue lowers it in "
              f"{int((tired < sober).sum())} of {len(sober)} layers")
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

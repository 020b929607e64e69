"""Attention patterns of one block for one prompt: the base heads and, with --run, each skip tap.

Per head and query position, the probabilities over the key positions (softmax of q.k with the
family's mask, q/k norms, RoPE and grouped-query heads). For a skip run's skip block, each tap
``d`` gets its own pattern: queries of block L over the keys of state L-d; its tap weight and
gate alphas are printed beside it. With --fatigue S a second row runs under synaptic fatigue of
strength S, and its base pattern is the one after fatigue (the probabilities the block used).

Examples:
  python -m jobs.attention --prompt "The capital of France is" --layer 5 --no-chat
  python -m jobs.attention --prompt "Once upon a time" --run RUN --layer 12 --json
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import json
import sys

from jobs import cli
from jobs.cli import JobError, JobParser
from jobs.lens import add_model_options, check_common, check_strength, load, model_config
from psilonet.analysis import attention as attention_mod
from psilonet.generation import bio
from psilonet.model import forward


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.attention", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--layer", type=int, required=True, help="the block (0-based)")
    p.add_argument("--fatigue", type=float, default=0.0,
                   help=f"add a row under synaptic fatigue of this strength, in [0, {bio.MAX_STRENGTH:g}]")
    return p


def check_layer(layer: int, num_layers: int | None) -> None:
    if layer < 0:
        raise JobError(f"--layer: must be >= 0, got {layer}")
    if num_layers is not None and layer >= num_layers:
        raise JobError(f"--layer: {layer} is out of range (the model has layers 0..{num_layers - 1})")


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_common(args)
    check_layer(args.layer, None)
    check_strength("fatigue", args.fatigue)
    data_dir = cli.data_dir(args.data_dir, writable=False)
    check_layer(args.layer, model_config(args, data_dir).get("num_hidden_layers"))
    model, tokenizer, tokens = load(args, data_dir)
    check_layer(args.layer, forward.num_layers(model))
    fatigue = [0.0, args.fatigue] if args.fatigue > 0 else [0.0]
    try:
        pats = attention_mod.patterns(model, [tokens] * len(fatigue), args.layer, fatigue=fatigue)
    except ValueError as exc:  # a family the mechanisms do not support
        raise JobError(f"--fatigue: {exc}") from exc
    _, skip = forward.unwrap(model)
    if args.json:
        for r, strength in enumerate(fatigue):
            for rec in attention_mod.records(pats, row=r):
                print(json.dumps({"row": r, "fatigue": strength, **rec}))
        return 0
    words = [tokenizer.decode([t]) for t in tokens]
    if skip is not None and args.layer in skip.skip_layers:
        print(f"layer {args.layer}: tap weights {skip.tap_weights()[args.layer]}"
              + (f", gate alphas {[round(a, 3) for a in skip.gate_alphas()[args.layer]]}" if skip.cfg.gates else ""))
    if len(tokens) > 1:
        print("per head, over query positions 1..T-1: entropy (nats), share on position 0 (sink), mean distance back")
        for r, strength in enumerate(fatigue):
            for tap, p in pats.items():
                s = attention_mod.summaries(p[r : r + 1])
                for head in range(p.shape[1]):
                    print(f"  {f'fatigue {strength:g} ' if strength else ''}tap {tap} head {head:>2}: "
                          f"entropy {s['entropy'][0, head]:.3f} sink {s['sink'][0, head]:.3f} "
                          f"distance {s['distance'][0, head]:.2f}")
    for r, strength in enumerate(fatigue):
        for tap, p in pats.items():
            for head in range(p.shape[1]):
                print(f"{f'fatigue {strength:g}, ' if strength else ''}tap {tap}, head {head}: "
                      "per query, the key it attends most (weight)")
                for t in range(p.shape[2]):
                    j = int(p[r, head, t].argmax())
                    print(f"  {t:>4} {words[t]!r:>14} -> {j:>4} {words[j]!r:<14} {p[r, head, t, j]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Activation patching between a sober row and its dosed twin: where does the dose act?

For one prompt (teacher-forced, one batch: sober, dosed, and per block a restore row and an
inject row), prints per block ``restored`` = 1 - KL(sober, patched) / KL(sober, dosed) with
the dosed residual after that block replaced by the sober one, and ``injected`` = the share of
the whole change that the mechanism at that block alone produces. The mechanism is the
entropic dose (--intensity), or fatigue / Hebbian fast weights (--mechanism, --intensity as
their strength).

Examples:
  python -m jobs.patch --prompt "The nature of consciousness is" --intensity 0.2
  python -m jobs.patch --prompt "Once upon a time" --intensity 1 --mechanism fatigue --json
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import json
import sys

from jobs import cli
from jobs.cli import JobError, JobParser, add_data_dir
from psilonet import config
from psilonet.analysis import patching
from psilonet.generation import bio
from psilonet.generation.prompts import encode_prompt
from psilonet.generation.perturb import MECHANISMS as DOSE_PARTS
from psilonet.generation.perturb import DoseSpec
from psilonet.model import loading as modeling


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.patch", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True, help="the prompt, read teacher-forced")
    p.add_argument("--intensity", type=float, required=True, help="dose intensity (0, 1], or the bio strength")
    p.add_argument("--mechanism", choices=patching.MECHANISMS, default="dose")
    p.add_argument("--parts", nargs="+", choices=DOSE_PARTS, default=list(DOSE_PARTS),
                   help="the dose's mechanisms (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the dose's random numbers")
    p.add_argument("--position", type=int, default=None, help="restore this position only (default: every position)")
    p.add_argument("--no-chat", action="store_true", help="the raw text instead of the chat template")
    p.add_argument("--model", default=modeling.DEFAULT_MODEL, help="'default', an mlx-lm hub name or a folder")
    p.add_argument("--json", action="store_true", help="one JSON object per layer")
    add_data_dir(p)
    return p


def check_args(args) -> None:
    if not args.prompt.strip():
        raise JobError("--prompt: empty prompt")
    top = 1.0 if args.mechanism == "dose" else bio.MAX_STRENGTH
    if not 0 < args.intensity <= top:  # NaN fails too
        raise JobError(f"--intensity: a {args.mechanism} {'intensity' if args.mechanism == 'dose' else 'strength'} "
                       f"must be in (0, {top:g}], got {args.intensity:g}")
    config.check_seed("--seed", args.seed)  # the one seed range of every job


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    model, tokenizer = modeling.load_model(args.model, cli.data_dir(args.data_dir, writable=False))
    tokens = encode_prompt(tokenizer, args.prompt, chat=not args.no_chat)
    try:
        rows = patching.profile(model, tokens, args.mechanism, args.intensity, seed=args.seed,
                                position=args.position, spec=DoseSpec.only(*args.parts))
    except patching.PatchError as exc:
        raise JobError(f"--{exc}") from exc
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{args.mechanism} {args.intensity:g}: KL(sober || dosed) = {rows[0]['kl_dosed']:.4f} nats "
          f"over the next token after {len(tokens)} prompt tokens")
    print(f"{'layer':>5} {'restored':>9} {'injected':>9}")
    for row in rows:
        print(f"{row['layer']:>5} {row['restored']:>9.3f} {row['injected']:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The logit lens of one prompt: what each layer would predict next, for the sober model and doses.

Reads the prompt teacher-forced through the hooked forward, in one batch whose rows are the
sober baseline, then a dosed row (--intensity), a fatigued row (--fatigue) and a Hebbian row
(--hebbian) for those given. Every layer's residual state (0 = the embeddings, then after each
block) goes through the model's own final norm and unembedding; per (layer, position) it prints
the top-1 token and its probability, the entropy and the KL to the last layer (nats), and the
probability and rank (1 = top) of the token that actually comes next, and for the other rows
the KL of their read-out from the sober row's at the same layer (where a dose takes hold).
With --run the model is that training run's skip model.

Examples:
  python -m jobs.lens --prompt "The capital of France is" --no-chat
  python -m jobs.lens --prompt "Once upon a time" --intensity 0.2 --fatigue 1 --json
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import json
import math
import sys
from pathlib import Path

from jobs import cli
from jobs.cli import JobError, JobParser, add_data_dir
from psilonet import config
from psilonet.analysis import lens as lens_mod
from psilonet.analysis import tuned_lens
from psilonet.generation import bio
from psilonet.generation.prompts import context_length, encode_prompt
from psilonet.model import loading as modeling
from psilonet.store import Store, StoreError


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="the prompt, read teacher-forced")
    p.add_argument("--run", help="a trained skip run id: read its skip model (its own base model)")
    p.add_argument("--model", default=None, help="'default' (the default), an mlx-lm hub name or a folder; not with --run")
    p.add_argument("--no-chat", action="store_true", help="the raw text instead of the chat template")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_data_dir(p)


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.lens", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--intensity", type=float, default=0.0, help="add a dosed row at this intensity, in [0, 1]")
    p.add_argument("--fatigue", type=float, default=0.0, help=f"add a fatigued row at this strength, in [0, {bio.MAX_STRENGTH:g}]")
    p.add_argument("--hebbian", type=float, default=0.0, help=f"add a Hebbian row at this strength, in [0, {bio.MAX_STRENGTH:g}]")
    p.add_argument("--seed", type=int, default=0, help="the dose's random numbers")
    p.add_argument("--lens", default="logit", choices=lens_mod.LENSES,
                   help="logit, or tuned (needs --tuned RUN from python -m jobs.tuned_lens)")
    p.add_argument("--tuned", help="a tuned-lens run id (python -m jobs.tuned_lens) for --lens tuned")
    p.add_argument("--top-k", type=int, default=5, help="tokens listed per (layer, position) in --json")
    return p


def check_common(args) -> None:
    if not args.prompt.strip():
        raise JobError("--prompt: empty prompt")
    if args.run and args.model is not None:
        raise JobError(f"--model: --run {args.run} reads the run's own base model; drop --model")


def model_config(args, data_dir: Path) -> dict:
    """The model's config.json (no weights loaded), for the run's base model with --run.

    An unknown run, or one that is not a training run, is refused here."""
    name = args.model
    if args.run:
        from psilonet.training.loop import TRAIN_CONFIG_FILE

        store = Store(data_dir)
        try:
            stored = store.get_run(args.run)
        except StoreError as exc:
            raise JobError(f"--run: {exc}") from exc
        if stored["kind"] != "train":
            raise JobError(f"--run: {args.run} is a {stored['kind']} run, not a training run")
        try:
            name = json.loads((store.run_dir(args.run) / TRAIN_CONFIG_FILE).read_text())["model"]
        except (OSError, ValueError, KeyError):
            raise JobError(f"--run: {args.run} has no readable {TRAIN_CONFIG_FILE}; train the run again")
    path = Path(modeling.check_model_name(name, data_dir))
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}  # a hub name not yet downloaded: loading says what is wrong


def load_model(args, data_dir: Path):
    """``(model, tokenizer)``: the run's skip model with --run, else --model."""
    if args.run:
        from psilonet.training import loop as training

        model, tokenizer, _ = training.load_trained(Store(data_dir), args.run, data_dir=data_dir)
        return model, tokenizer
    return modeling.load_model(args.model, data_dir)


def load(args, data_dir: Path):
    """``(model, tokenizer, prompt token ids)``; a prompt over the model's context is refused."""
    model, tokenizer = load_model(args, data_dir)
    tokens = encode_prompt(tokenizer, args.prompt, chat=not args.no_chat)
    context = context_length(model)
    if len(tokens) > context:
        raise JobError(f"--prompt: {len(tokens)} tokens, over the model's context of {context}")
    return model, tokenizer, tokens


def check_strength(name: str, value: float) -> None:
    if math.isnan(value) or not 0 <= value <= bio.MAX_STRENGTH:
        raise JobError(f"--{name}: must be in [0, {bio.MAX_STRENGTH:g}], got {value:g}")


def check_args(args) -> None:
    check_common(args)
    if args.lens == "tuned" and not args.tuned:
        raise JobError("--lens: the tuned lens is not trained or available here; train one with "
                       "python -m jobs.tuned_lens and give its run with --tuned RUN")
    if args.tuned and args.lens != "tuned":
        raise JobError("--tuned: only with --lens tuned")
    if math.isnan(args.intensity) or not 0 <= args.intensity <= 1:
        raise JobError(f"--intensity: must be in [0, 1], got {args.intensity:g}")
    for name in ("fatigue", "hebbian"):
        check_strength(name, getattr(args, name))
    if args.top_k < 1:
        raise JobError(f"--top-k: must be >= 1, got {args.top_k}")
    config.check_seed("--seed", args.seed)  # the one seed range of every job


def tuned_run(args, data_dir: Path) -> Path:
    """The stored lens of --tuned, checked (before any model loads) to be fitted to this model."""
    store = Store(data_dir)
    try:
        stored = store.get_run(args.tuned)
    except StoreError as exc:
        raise JobError(f"--tuned: {exc}") from exc
    if stored["kind"] != "tuned_lens" or stored["status"] != "complete":
        raise JobError(f"--tuned: {args.tuned} is a {stored['status']} {stored['kind']} run, not a complete tuned-lens run")
    fitted = stored["config"] or {}
    if fitted.get("run") != args.run or (not args.run and fitted.get("model") != args.model):
        what = f"run {fitted['run']}" if fitted.get("run") else f"model {fitted.get('model') or 'default'}"
        raise JobError(f"--tuned: {args.tuned} was fitted to {what}; read that with it")
    path = store.run_dir(args.tuned) / tuned_lens.WEIGHTS_FILE
    if not path.is_file():
        raise JobError(f"--tuned: run {args.tuned} has no {tuned_lens.WEIGHTS_FILE}; train it again")
    return path


def sides(args) -> list[dict]:
    """The batch's rows: the sober one, then one per mechanism given."""
    rows = [dict(intensity=0.0, fatigue=0.0, hebbian=0.0)]
    for name in ("intensity", "fatigue", "hebbian"):
        if getattr(args, name) > 0:
            rows.append({**rows[0], name: getattr(args, name)})
    return rows


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    data_dir = cli.data_dir(args.data_dir, writable=False)
    lens_path = tuned_run(args, data_dir) if args.tuned else None
    model_config(args, data_dir)
    model, tokenizer, tokens = load(args, data_dir)
    tuned = None
    if lens_path is not None:
        try:
            tuned = tuned_lens.load(lens_path, model)
        except ValueError as exc:
            raise JobError(f"--tuned: run {args.tuned}: {exc}") from exc
    rows = sides(args)
    try:
        hooks = lens_mod.side_hooks(model, [r["intensity"] for r in rows], fatigue=[r["fatigue"] for r in rows],
                                    hebbian=[r["hebbian"] for r in rows], seed=args.seed)
    except ValueError as exc:
        raise JobError(f"--fatigue/--hebbian: {exc}") from exc
    lens = lens_mod.logit_lens(model, [tokens] * len(rows), hooks=hooks, top_k=args.top_k, tuned=tuned)
    decode = lambda i: tokenizer.decode([i])
    for r, side in enumerate(rows):
        records = lens_mod.records(lens, decode, row=r)
        if args.json:
            for rec in records:
                print(json.dumps({"row": r, "lens": args.lens, **side, **rec}))
            continue
        label = ", ".join(f"{k} {v:g}" for k, v in side.items() if v) or "sober"
        print(f"row {r} ({label}): top-1 token per layer (rows) and position (columns); at the last position, "
              "KL to the final layer" + (" and from the sober row" if r else "") + " (nats)")
        t = len(tokens)
        for l in range(lens.num_layers + 1):
            cells = [repr(rec["top1"])[:10].ljust(10) for rec in records[l * t:(l + 1) * t]]
            last = records[(l + 1) * t - 1]
            print(f"{l:>3} {' '.join(cells)} {last['kl_final']:8.4f}" + (f" {last['kl_sober']:8.4f}" if r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

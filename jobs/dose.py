"""Dosed generation in batch: prompts x intensities x seeds, stored with both entropy series.

All intensities of one prompt and seed decode together as one batch. Prompts come from
--prompt (repeatable) and/or --prompts-file (.txt one per line, .jsonl with "prompt", .csv
with a "prompt" column); bad lines are skipped with a reason and the rest still run.

Bio-inspired interventions (--fatigue, --hebbian strengths) run beside the doses: every
combination of an intensity and a fatigue and a Hebbian strength is one row of the batch.

A steering vector (psilonet.generation.steering) runs beside them too: --steer-a/--steer-b (or
their -file/-corpus forms, as in jobs.steer) give two prompt sets, the difference of their mean
residual states after block --steer-layer is added after --steer-add-layers (default: that
block), and every row above is taken at each --steer-strengths value (strength 0 = the row
unsteered, bit for bit). The vector is stored with the run; --steer-run RUN reuses the vector a
steering run or an earlier steered dose run stored (read at its layer) instead of the two sets.

Example: python -m jobs.dose --prompt "The nature of consciousness is" --intensities 0 0.1 0.2 0.3
         python -m jobs.dose --prompt "Write a poem about the sea." --intensities 0 --fatigue 0 1 --hebbian 0 1
         python -m jobs.dose --prompt "My day was" --intensities 0 0.2 --steer-a "I love it." --steer-b "I hate it." \
             --steer-layer 12 --steer-strengths 0 4 8
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys
from pathlib import Path

import numpy as np

from jobs import cli
from jobs import steer as steer_job
from jobs.cli import JobParser, add_config_options, add_data_dir
from psilonet import config
from psilonet.files import path_problem
from psilonet.generation.dose_config import DoseConfig
from psilonet.generation import steering
from psilonet.generation.dosing import run_doses
from psilonet.generation.prompts import PromptFile, PromptFileError, context_check, context_length, parse_prompts
from psilonet.model import loading as modeling
from psilonet.model import quantized
from psilonet.model.skip import SkipConfig
from psilonet.store import Store, StoreError
from psilonet.training import loop as training


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.dose", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="a .txt, .jsonl or .csv file of prompts")
    add_config_options(p, DoseConfig)
    p.add_argument("--no-chat", action="store_true", help="continue the raw text instead of using the chat template")
    p.add_argument("--model", help="'default' (the default), an mlx-lm hub name or a folder; not with --run")
    p.add_argument("--run", help="a trained skip run id: generate with its skip model")
    p.add_argument("--dial", type=float, help="gate dial for a gated skip run (needs --run)")
    quantized.add_weights_option(p)
    steer_job.add_set_options(p, prefix="steer-")
    p.add_argument("--steer-run", help="reuse the steering vector a steering run or a dose run with steering rows stored "
                                       "(instead of the two prompt sets)")
    p.add_argument("--steer-layer", type=int, help="block whose output the steering vector is read from")
    p.add_argument("--steer-add-layers", type=int, nargs="+", help="blocks it is added after (default: --steer-layer)")
    p.add_argument("--steer-strengths", type=float, nargs="+", default=[0.0, 4.0],
                   help="every dose row at each strength (0 = unsteered)")
    add_data_dir(p)
    return p


def check_steering(args, store: Store) -> tuple | None:
    """What steering was asked for, checked before the model loads: ``("sets", (a, b))``, the two
    prompt sets, or ``("run", (layer, vector))``, a stored vector (``--steer-run``); else None."""
    sets_given = steer_job.given_sets(args, "steer-")
    if args.steer_run is not None:
        if sets_given:
            raise cli.JobError("--steer-run: give either a stored vector (--steer-run) or the two prompt sets, not both")
        if args.steer_layer is not None:
            raise cli.JobError("--steer-layer: --steer-run brings the layer its vector was read at; drop --steer-layer")
    elif not sets_given:
        if args.steer_layer is not None or args.steer_add_layers:
            raise cli.JobError("--steer-layer: needs the two prompt sets, --steer-a and --steer-b (or their "
                               "-file/-corpus forms), or a stored vector, --steer-run")
        return None
    if args.steer_run is None and args.steer_layer is None:
        raise cli.JobError("--steer-layer: give the block to read the steering vector from")
    for layer in [args.steer_layer or 0, *(args.steer_add_layers or [])]:
        if layer < 0:
            raise cli.JobError(f"--steer-layer: {layer} is out of range (layers count from 0)")
    try:
        steering.check_strengths(args.steer_strengths)
        if args.steer_run is not None:
            return "run", steering.stored_vector(store, args.steer_run)
    except steering.SteeringError as exc:
        raise cli.JobError(f"--steer-{exc}") from exc
    return "sets", tuple(steer_job.prompt_set(args, side, prefix="steer-") for side in ("a", "b"))


def load_prompts(args, tokenizer, context: int) -> PromptFile:
    check = context_check(tokenizer, context, args.max_tokens, chat=not args.no_chat)
    prompts = PromptFile()
    if args.prompts_file:  # main() checked that it exists, before loading the model
        path = Path(args.prompts_file)
        prompts = parse_prompts(path.read_bytes(), path.name, too_long=check)
    for n, text in enumerate(args.prompt, 1):
        problem = "empty prompt" if not text.strip() else check(text)
        if problem:
            prompts.skipped.append((-n, f"--prompt #{n}: {problem}"))
        else:
            prompts.prompts.append((-n, text.strip()))  # negative: came from the command line
    if not prompts.prompts:
        raise PromptFileError("no prompt to run: give --prompt TEXT or --prompts-file FILE"
                              + (f"\n{prompts.report()}" if prompts.skipped else ""))
    return prompts


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = Store(cli.data_dir(args.data_dir))
    cfg = DoseConfig(intensities=args.intensities, seeds=args.seeds, mechanisms=args.mechanisms,
                     max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                     chat=not args.no_chat, fatigue=args.fatigue, hebbian=args.hebbian).validate()
    if args.dial is not None:
        config.check(SkipConfig(dial=args.dial))  # the dial's declared bounds
    if args.prompts_file and path_problem(args.prompts_file):
        raise PromptFileError(f"--prompts-file: {args.prompts_file} {path_problem(args.prompts_file)}")
    if args.dial is not None and not args.run:
        raise cli.JobError("--dial: needs --run (a training run with --gates); the base model has no gates")
    if args.run and args.model is not None:
        raise cli.JobError(f"--model: --run {args.run} generates with the run's own base model; drop --model")
    steer_asked = check_steering(args, store)
    if args.run:
        try:
            stored = store.get_run(args.run)
        except StoreError as exc:
            raise cli.JobError(f"--run: {exc}") from exc
        if stored["kind"] != "train":
            raise cli.JobError(f"--run: {args.run} is a {stored['kind']} run, not a training run")
        if args.dial is not None and not (stored["config"] or {}).get("skip", {}).get("gates"):
            raise cli.JobError(f"--dial: run {args.run} has no gates (it was trained without --gates)")
        model, tokenizer, train_cfg = training.load_trained(store, args.run, data_dir=store.data_dir)
        model_name = train_cfg.model
        quantized.to_weights(model, args.weights, model_name, store.data_dir)
        if args.dial is not None:
            model.dial = args.dial
    else:
        model_name = args.model or modeling.DEFAULT_MODEL
        model, tokenizer = quantized.load_model(model_name, store.data_dir, weights=args.weights)
    context = context_length(model)
    prompts = load_prompts(args, tokenizer, context)
    steer, steer_config = None, {}
    if steer_asked is not None:
        kind, what = steer_asked
        if kind == "run":
            layer, vector = what
            source = {"run": args.steer_run}
        else:
            layer, source = args.steer_layer, {"a": what[0][0] or what[0][1], "b": what[1][0] or what[1][1]}
        add_layers = args.steer_add_layers or [layer]
        if kind == "run":
            try:
                steering.check_vector(vector, model, add_layers)
            except steering.SteeringError as exc:
                where = "" if str(exc).startswith("layers") else f"run: {args.steer_run}'s "
                raise cli.JobError(f"--steer-{where}{exc}") from exc
        else:
            vector = steer_job.build_vector(model, tokenizer, what, layer, add_layers, seed=cfg.seeds[0],
                                            data_dir=store.data_dir, prefix="steer-")
        steer = steering.Steering(vector, layer, tuple(add_layers), tuple(args.steer_strengths))
        steer_config = {"steering": {"layer": layer, "add_layers": add_layers, "strengths": list(args.steer_strengths),
                                     **source, "vector_norm": float(np.linalg.norm(vector))}}

    if prompts.skipped:
        print(prompts.report(), file=sys.stderr)
    run_config = {"model": model_name, "weights": args.weights, "skip_run": args.run, "dial": args.dial, "prompts": len(prompts.prompts),
                  "skipped": [f"line {n}: {why}" for n, why in prompts.skipped], **steer_config}
    run_id, _ = run_doses(store, model, tokenizer, prompts.prompts, cfg, run_config=run_config, model_name=model_name,
                          dataset=args.prompts_file or "command line", parent=args.run, steer=steer)
    print(f"\nrun {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Steering vectors: build one from two prompt sets, continue a prompt at several strengths (one
batch row each), and store the vector, the continuations and their cost as a ``steering`` run.

The vector is the difference of means of the residual states after block --layer between set A
and set B (every token of every prompt, raw text): two files of prompts (--a-file/--b-file:
.txt one per line, .jsonl "prompt", .csv prompt column), two prompts (--a/--b), or windows of
two corpora (--a-corpus/--b-corpus). It is added with each --strengths value after the blocks
--add-layers (default: --layer) while decoding; strength 0 is the sober row. With --eval-windows
N, the teacher-forced next-token loss and entropy of every strength, and of each --dose-
intensities value of an entropic dose, are measured on N windows of --eval-corpus.

Example:
  python -m jobs.steer --a "I love this. It is wonderful." --b "I hate this. It is terrible." \
      --layer 12 --strengths 0 4 8 --prompt "My day at the office was" --eval-windows 8
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys
from pathlib import Path

import numpy as np

from jobs import cli
from jobs.cli import JobError, JobParser, add_data_dir
from psilonet import config, corpora
from psilonet.generation import steering
from psilonet.generation.dosing import generate_doses
from psilonet.generation.sampling import SamplingConfig
from psilonet.generation.perturb import Doser, check_intensity
from psilonet.generation.prompts import PromptFileError, parse_prompts
from psilonet.model import loading as modeling
from psilonet.store import Store
from psilonet.store import tables as T

CORPUS_WINDOWS, CORPUS_TOKENS = steering.CORPUS_WINDOWS, steering.CORPUS_TOKENS


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.steer", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_options(p)
    p.add_argument("--layer", type=int, required=True, help="block whose output the vector is read from")
    p.add_argument("--add-layers", type=int, nargs="+", help="blocks the vector is added after (default: --layer)")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.0, 4.0, 8.0], help="one row each (0 = sober)")
    p.add_argument("--prompt", required=True, help="the prompt to continue")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--eval-windows", type=int, default=0, help="measure loss and entropy on this many windows")
    p.add_argument("--eval-corpus", default="python-docs")
    p.add_argument("--dose-intensities", type=float, nargs="+", default=[0.1, 0.2, 0.3],
                   help="entropic doses measured beside the strengths")
    p.add_argument("--model", default=modeling.DEFAULT_MODEL)
    add_data_dir(p)
    return p


def add_set_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The two prompt sets' options, ``--{prefix}a``/``-file``/``-corpus`` and the same for b
    (``jobs.dose`` takes them with the prefix ``steer-``)."""
    for side in ("a", "b"):
        opt, name = f"{prefix}{side}", side.upper()
        p.add_argument(f"--{opt}", action="append", default=[], help=f"a prompt of set {name} (repeatable)")
        p.add_argument(f"--{opt}-file", help=f"a file of set {name}'s prompts")
        p.add_argument(f"--{opt}-corpus", help=f"set {name} = {CORPUS_WINDOWS} windows of this corpus")


def given_sets(args, prefix: str = "") -> bool:
    """Whether any option of either prompt set was given."""
    dest = prefix.replace("-", "_")
    return any(getattr(args, f"{dest}{side}{end}") for side in ("a", "b") for end in ("", "_file", "_corpus"))


def prompt_set(args, side: str, prefix: str = "") -> tuple[list[str] | None, str | None]:
    """(texts, corpus name): the texts of a side's prompts/file, or the corpus to read later."""
    opt, dest = f"{prefix}{side}", f"{prefix.replace('-', '_')}{side}"
    texts, file, corpus = getattr(args, dest), getattr(args, f"{dest}_file"), getattr(args, f"{dest}_corpus")
    given = [x for x in (texts, file, corpus) if x]
    name = side.upper()
    if len(given) != 1:
        raise JobError(f"--{opt}: give set {name} once, as --{opt} TEXT, --{opt}-file FILE or --{opt}-corpus NAME")
    if corpus:
        corpora.check_name(corpus)
        return None, corpus
    if file:
        path = Path(file)
        if not path.is_file():
            raise JobError(f"--{opt}-file: {path} does not exist")
        try:
            texts = [t for _, t in parse_prompts(path.read_bytes(), path.name).prompts]
        except PromptFileError as exc:
            raise JobError(f"--{opt}-file: {exc}") from exc
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise JobError(f"--{opt}: prompt set {name} is empty")
    return texts, None


def set_texts(tokenizer, side: tuple[list[str] | None, str | None], *, seed: int, data_dir) -> list[str]:
    """A :func:`prompt_set`'s texts, reading a corpus's windows (decoded to text) where it named one."""
    own, corpus = side
    return own if corpus is None else steering.corpus_texts(tokenizer, corpus, seed=seed, data_dir=data_dir)


def build_vector(model, tokenizer, sets, layer: int, add_layers: list[int], *, seed: int, data_dir,
                 prefix: str = ""):
    """The difference of means at ``layer`` between the two :func:`prompt_set` s, checked for
    ``add_layers``; a bad set or layer is a :class:`JobError` naming the ``--{prefix}`` option."""
    try:
        vector = steering.steering_vector(model, tokenizer, *(set_texts(tokenizer, s, seed=seed, data_dir=data_dir)
                                                              for s in sets), layer)
        steering.check_vector(vector, model, add_layers)
    except steering.SteeringError as exc:
        raise JobError(f"--{prefix}{exc}") from exc
    return vector


def check_args(args) -> None:
    try:
        steering.check_strengths(args.strengths)
        for i in args.dose_intensities:
            check_intensity(i)
    except ValueError as exc:
        msg = str(exc).replace("intensities:", "dose-intensities:")
        raise JobError(f"--{msg}") from exc
    if not args.prompt.strip():
        raise JobError("--prompt: empty prompt")
    if not 1 <= args.max_tokens <= 512:
        raise JobError(f"--max-tokens: must be in [1, 512], got {args.max_tokens}")
    if args.eval_windows < 0:
        raise JobError(f"--eval-windows: must be >= 0, got {args.eval_windows}")
    config.check_seed("--seed", args.seed)  # the one seed range of every job


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    sets = [prompt_set(args, side) for side in ("a", "b")]
    store = Store(cli.data_dir(args.data_dir))
    model, tokenizer = modeling.load_model(args.model, store.data_dir)
    layers = args.add_layers or [args.layer]

    vector = build_vector(model, tokenizer, sets, args.layer, layers, seed=args.seed, data_dir=store.data_dir)
    costs = []
    if args.eval_windows:
        wins = corpora.load_windows(tokenizer, args.eval_corpus, seq_len=CORPUS_TOKENS + 1, n_train=0,
                                    n_val=args.eval_windows, seed=args.seed, data_dir=store.data_dir).val
        costs = steering.cost(model, wins, vector, layers, args.strengths, args.dose_intensities, seed=args.seed)
    wrap = lambda doser: steering.SteeredDoser(doser, vector, layers, args.strengths)
    results = generate_doses(model, tokenizer, args.prompt, [0.0] * len(args.strengths),
                             sampling=SamplingConfig(max_tokens=args.max_tokens, seed=args.seed),
                             chat=not args.no_chat, wrap_doser=wrap)
    run_config = {"model": args.model, "layer": args.layer, "add_layers": layers, "strengths": args.strengths,
              "a": sets[0][0] or sets[0][1], "b": sets[1][0] or sets[1][1], "prompt": args.prompt,
              "max_tokens": args.max_tokens, "seed": args.seed, "chat": not args.no_chat,
              "eval_windows": args.eval_windows, "eval_corpus": args.eval_corpus,
              "dose_intensities": args.dose_intensities, "vector_norm": float(np.linalg.norm(vector))}
    with store.begin_run("steering", config=run_config, model=args.model, dataset="prompts") as run:
        run.write_rows(T.STEERING_VECTOR, [(args.layer, d, float(v)) for d, v in enumerate(vector)])
        for gen_id, (s, res) in enumerate(zip(args.strengths, results)):
            run.log_generation(gen_id, prompt_line=1, prompt=args.prompt, intensity=0.0, seed=args.seed,
                               mechanisms="steering", text=res.text, token_ids=res.token_ids,
                               token_texts=res.token_texts, entropy=res.entropy, layer_entropy=res.layer_entropy,
                               stopped=res.stopped)
            run.write_rows(T.STEERING_ROWS, [(gen_id, s)])
        if costs:
            run.write_rows(T.STEERING_COST, costs)
        run.finish({f"mean_entropy@steer{s:g}": r.mean_entropy for s, r in zip(args.strengths, results)})
    print(f"steering vector: layer {args.layer}, |v| = {run_config['vector_norm']:.2f}, added after blocks {layers}")
    for s, res in zip(args.strengths, results):
        print(f"  strength {s:g} | mean entropy {res.mean_entropy:.2f} bits | {res.text.strip()!r}")
    if costs:
        print(f"teacher-forced on {args.eval_windows} windows of {args.eval_corpus}:")
        for m, s, loss, ent in costs:
            print(f"  {m} {s:g}: loss {loss:.4f} nats, entropy {ent:.3f} bits")
    print(f"\nrun {run.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

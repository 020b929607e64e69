"""Train a tuned lens (one affine translator per layer) on an offline corpus and store it as a run.

By default (--init lstsq) each translator starts from a closed-form ridge fit of the final
state (rescaled to the layer's RMS) on the layer's state over the corpus's training windows;
--steps N then refines every translator with N Adam steps on KL(final || layer). With
--init zero the translators start at zero (the logit lens) and only the Adam steps fit them.
The held-out KL per layer of the logit lens and of the tuned lens, on the validation windows,
is stored as the run's metrics and printed. With --run the lens is fitted to that training
run's skip model.

Examples:
  python -m jobs.tuned_lens --dataset smol-stories
  python -m jobs.tuned_lens --init zero --steps 30
  python -m jobs.tuned_lens --run RUN --dataset python-docs --json
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import json
import sys

import mlx.core as mx
from mlx.utils import tree_flatten
from tqdm import tqdm

from jobs import cli
from jobs.cli import JobError, JobParser, add_data_dir
from jobs.lens import load_model, model_config
from psilonet import config, corpora
from psilonet.analysis import tuned_lens
from psilonet.store import Store

def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.tuned_lens", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a trained skip run id: fit the lens to its skip model")
    p.add_argument("--model", default=None, help="'default' (the default), an mlx-lm hub name or a folder; not with --run")
    p.add_argument("--dataset", default="smol-stories", choices=corpora.OFFLINE_CORPORA)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--train-samples", type=int, default=64)
    p.add_argument("--val-samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=0, help="Adam steps on KL after the start (>= 1 with --init zero)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init", choices=tuned_lens.INITS, default="lstsq",
                   help="zero: start at the logit lens; lstsq: start from a ridge fit of each state to the final one")
    p.add_argument("--ridge", type=float, default=1e-2, help="the lstsq start's shrinkage towards the logit lens")
    p.add_argument("--seed", type=int, default=0, help="the window split and the batch draws")
    p.add_argument("--json", action="store_true", help="one JSON object per layer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_data_dir(p)
    return p


def check_args(args) -> None:
    if args.run and args.model is not None:
        raise JobError(f"--model: --run {args.run} fits the run's own base model; drop --model")
    for name in ("seq_len", "train_samples", "val_samples", "batch"):
        if getattr(args, name) < 1:
            raise JobError(f"{cli.flag_name(name)}: must be >= 1, got {getattr(args, name)}")
    if args.steps < (0 if args.init == "lstsq" else 1):
        raise JobError(f"--steps: must be >= {0 if args.init == 'lstsq' else 1} with --init {args.init}, got {args.steps}")
    if not args.ridge > 0:
        raise JobError(f"--ridge: must be > 0, got {args.ridge:g}")
    if args.seq_len < 2:
        raise JobError(f"--seq-len: must be >= 2, got {args.seq_len}")
    if not args.lr > 0:
        raise JobError(f"--lr: must be > 0, got {args.lr:g}")
    config.check_seed("--seed", args.seed)  # the one seed range of every job


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    store = Store(cli.data_dir(args.data_dir))
    corpora.check_available(args.dataset, store.data_dir)
    model_config(args, store.data_dir)
    model, tokenizer = load_model(args, store.data_dir)
    windows = corpora.load_windows(tokenizer, args.dataset, seq_len=args.seq_len, n_train=args.train_samples,
                                   n_val=args.val_samples, seed=args.seed, data_dir=store.data_dir)
    run_config = {k: getattr(args, k) for k in ("run", "model", "dataset", "seq_len", "train_samples", "val_samples",
                                              "steps", "batch", "lr", "init", "ridge", "seed")}
    bar = tqdm(total=args.steps, desc="tuned lens", unit="step", disable=args.quiet or args.json)
    with store.begin_run("tuned_lens", config=run_config, model=args.model, dataset=args.dataset, parent=args.run) as run:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)
            run.set_progress(done / total)

        lens, history = tuned_lens.train(model, windows.train, steps=args.steps, batch=args.batch, lr=args.lr,
                                         seed=args.seed, init=args.init, ridge=args.ridge, progress=progress)
        for step, loss in enumerate(history):
            run.log_metrics(step, {"kl": loss})
        kl = tuned_lens.held_out_kl(model, lens, windows.val, batch=args.batch)
        for l in range(len(kl["logit"])):
            run.log_metrics(l, {"kl_logit": float(kl["logit"][l]), "kl_tuned": float(kl["tuned"][l])}, split="val_layer")
        mx.save_safetensors(str(run.dir / tuned_lens.WEIGHTS_FILE), dict(tree_flatten(lens.parameters())))
        run.finish({"kl_logit": float(kl["logit"].mean()), "kl_tuned": float(kl["tuned"].mean()),
                    "final_train_kl": history[-1] if history else None})
    bar.close()
    rows = [dict(layer=l, kl_logit=float(kl["logit"][l]), kl_tuned=float(kl["tuned"][l])) for l in range(len(kl["logit"]))]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"held-out KL(final || layer), nats, on {len(windows.val)} {args.dataset} windows of {args.seq_len} tokens")
    print(f"{'layer':>5} {'logit':>9} {'tuned':>9}")
    for row in rows:
        print(f"{row['layer']:>5} {row['kl_logit']:>9.4f} {row['kl_tuned']:>9.4f}")
    print(f"\nrun {run.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

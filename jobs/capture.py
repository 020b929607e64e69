"""Capture activations of the baseline and of a trained skip run on a fixed evaluation set.

Records, for the kept tokens, the residual stream of every layer (embeddings included) and
every head's attention output before the o-projection, for the frozen baseline and, with
--run, for the trained skip model. One forward pass per batch returns every capture point.
Beside them it stores each side's corpus-level logit lens and attention summaries over the first
--lens-positions positions' windows, and the first window's layer x position lens grid and
attention patterns (the Lens and Attention pages read them without a model).

Examples:
  python -m jobs.capture --run train-20261128-042514-ff7ca5 --dataset python-docs
  python -m jobs.capture --dataset smol-stories           # the bare baseline only
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys

from jobs import checks, cli
from jobs.cli import JobParser, add_config_options, add_data_dir
from psilonet import corpora
from psilonet.analysis import capture
from psilonet.store import Store, StoreError


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.capture", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a complete training run; omit to capture the bare baseline")
    p.add_argument("--model", help="base model when no --run is given (default: 'default'); not with --run")
    add_config_options(p, capture.CaptureConfig)
    p.add_argument("--quiet", action="store_true")
    add_data_dir(p)
    return p


def base_model(store: Store, run: str) -> str | None:
    """The base model of training run ``run`` as its catalog row says (run_capture names a bad id)."""
    try:
        return (store.get_run(run)["config"] or {}).get("model")
    except StoreError:
        return None


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    store = Store(cli.data_dir(args.pop("data_dir")))
    run, model, quiet = args.pop("run"), args.pop("model"), args.pop("quiet")
    cfg = capture.CaptureConfig(**args).validate()
    if run and model is not None:
        raise cli.JobError(f"--model: --run {run} captures the run's own base model; drop --model")
    given = "batch_size" in args and args["batch_size"] != capture.CaptureConfig.batch_size
    cfg.batch_size = checks.fit_batch("--batch-size", cfg.batch_size, cfg.samples, "--samples", given=given)
    corpora.check_available(cfg.dataset, store.data_dir)
    context_model = base_model(store, run) if run else model
    if context_model is not None or not run:  # an unknown --run is named by run_capture
        checks.check_context("--seq-len", cfg.seq_len, context_model, store.data_dir)
    run_id, summary = capture.run_capture(store, cfg, train_run=run, model=model, data_dir=store.data_dir,
                                          progress=not quiet)
    print(f"captured {summary['tokens']} tokens x {summary['layers']} layers x {summary['heads']} heads "
          f"({', '.join(summary['sides'])})")
    print(f"run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

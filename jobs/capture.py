"""Capture activations of the baseline and of a trained skip run on a fixed evaluation set.

Records, for the kept tokens, the residual stream of every layer (embeddings included) and
every head's attention output before the o-projection, for the frozen baseline and, with
--run, for the trained skip model. One forward pass per batch returns every capture point.

Examples:
  python -m jobs.capture --run train-20261128-042514-ff7ca5 --dataset python-docs
  python -m jobs.capture --dataset smol-stories           # the bare baseline only
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli import add_data_dir, fail
from psilonet import corpora, runtime
from psilonet.analysis import capture
from psilonet.model import loading as modeling
from psilonet.store import Store, StoreError
from psilonet.training import loop as training


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.capture", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = capture.CaptureConfig()
    p.add_argument("--run", help="a complete training run; omit to capture the bare baseline")
    p.add_argument("--model", default=modeling.DEFAULT_MODEL, help="base model when no --run is given")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--samples", type=int, default=d.samples, help="evaluation windows")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="token positions kept (seeded sample)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--quiet", action="store_true")
    add_data_dir(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = Store(args.data_dir or runtime.data_dir())
    cfg = capture.CaptureConfig(args.dataset, args.seq_len, args.samples, args.max_tokens, args.seed, args.batch_size)
    try:
        cfg.validate()
        if args.run:
            run = store.get_run(args.run)
            if run["kind"] != "train":
                raise capture.CaptureError(f"run: {args.run} is a {run['kind']} run, not a training run")
            trained, tokenizer, train_cfg = training.load_trained(store, args.run, data_dir=args.data_dir)
            base, model_name = trained.base, train_cfg.model
        else:
            base, tokenizer = modeling.load_model(args.model, args.data_dir)
            trained, model_name = None, args.model
        windows = capture.evaluation_windows(tokenizer, cfg, args.data_dir)
    except (capture.CaptureError, corpora.CorpusError, modeling.ModelError, StoreError, FileNotFoundError) as exc:
        return fail(str(exc))

    keep = capture.select_positions(len(windows), cfg.seq_len, cfg.max_tokens, cfg.seed)
    sides = [("baseline", base)] + ([("trained", trained)] if trained is not None else [])
    try:
        with store.begin_run("capture", config={**cfg.to_dict(), "train_run": args.run, "model": model_name},
                             model=model_name, dataset=cfg.dataset, parent=args.run) as writer:
            shapes: dict = {}

            def records():  # one side at a time, so only one side's activations are in memory
                for i, (side, model) in enumerate(sides):
                    resid, heads = capture.capture_model(model, windows, keep, cfg.batch_size,
                                                         progress=not args.quiet, desc=f"capture {side}")
                    shapes[side] = (resid.shape, heads.shape)
                    writer.set_progress((i + 1) / len(sides))
                    yield from capture.matrix_records(side, resid, heads)

            writer.write_matrices(capture.ACTIVATIONS_FILE, records())
            writer.write_capture_tokens(capture.token_rows(tokenizer, windows, keep))
            resid_shape, head_shape = shapes["baseline"]
            writer.finish({"sides": [s for s, _ in sides], "tokens": int(len(keep)), "layers": resid_shape[0],
                           "heads": head_shape[1], "hidden": resid_shape[2], "head_dim": head_shape[3]})
    except StoreError as exc:
        return fail(str(exc))
    print(f"captured {len(keep)} tokens x {resid_shape[0]} layers x {head_shape[1]} heads "
          f"({', '.join(s for s, _ in sides)})")
    print(f"run {writer.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

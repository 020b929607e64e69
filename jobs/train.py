"""Train a skip-layer adapter on the frozen base model and record it as one run.

Single distance (--distances 3), multi-tap (--distances 3 4 5, optional --sparsity) and
per-head gates (--gates). Options can also come from a TOML/JSON file (--config); flags win.
A killed run continues from its last checkpoint with --resume RUN_ID.

Data parallel over processes or machines (each rank trains on its shard of every batch,
gradients are averaged, rank 0 logs and writes the run):
  mlx.launch --backend ring --hosts 127.0.0.1 -n 2 python -m jobs.train --batch-size 4 ...

Example (a few minutes on two CPU cores):
  python -m jobs.train --dataset python-docs --train-samples 200 --val-samples 50 --epochs 1
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli import JobError, add_data_dir, fail, read_config_file
from psilonet import corpora, runtime
from psilonet.model import loading as modeling
from psilonet.model.skip import SkipConfig, SkipConfigError
from psilonet.store import Store, StoreError
from psilonet.training.loop import TrainConfig, TrainConfigError, prepare, train

SKIP_FIELDS = {"distances", "skip_start", "alpha", "blend", "gates", "dial", "sparsity", "sparsity_weight"}


OPTIONS = [
    ("--model", dict(help="'default', an mlx-lm hub name or a folder")),
    ("--dataset", dict(help=f"corpus: {', '.join(corpora.OFFLINE_CORPORA)}, wikitext, tinystories, owner/name or a file")),
    ("--seq-len", dict(type=int)),
    ("--train-samples", dict(type=int)),
    ("--val-samples", dict(type=int)),
    ("--epochs", dict(type=int)),
    ("--batch-size", dict(type=int)),
    ("--lr", dict(type=float)),
    ("--weight-decay", dict(type=float)),
    ("--grad-clip", dict(type=float)),
    ("--seed", dict(type=int, help="data order and initialisation")),
    ("--split-seed", dict(type=int, help="train/val split (keep fixed to pair runs)")),
    ("--eval-every", dict(type=int, help="steps between evaluations (0: every epoch)")),
    ("--checkpoint-every", dict(type=int)),
    ("--grad-checkpoint", dict(action="store_true", help="recompute block activations in the backward pass")),
    ("--distances", dict(type=int, nargs="+", help="skip distance(s); several = multi-tap")),
    ("--skip-start", dict(type=int)),
    ("--alpha", dict(type=float)),
    ("--blend", dict(choices=["convex", "additive"])),
    ("--gates", dict(action="store_true", help="per-head adaptive gates")),
    ("--dial", dict(type=float)),
    ("--sparsity", dict(choices=["l1", "entropy"])),
    ("--sparsity-weight", dict(type=float)),
]


def add_train_options(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """The options of one training configuration (shared with jobs.sweep)."""
    p.add_argument("--config", help="TOML or JSON file of options (keys as the flags, with underscores)")
    for flag, kwargs in OPTIONS:
        if flag not in exclude:
            p.add_argument(flag, **kwargs)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_data_dir(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    add_train_options(p)
    p.add_argument("--resume", metavar="RUN_ID", help="continue a killed or failed run from its checkpoint")
    return p


def options_from(args: dict) -> dict:
    """Options from the --config file, overridden by the flags given."""
    options = read_config_file(args.pop("config", None))
    options.update(args)
    return options


def config_from(options: dict) -> TrainConfig:
    """TrainConfig from flat options (file or flags): skip options go into the skip section."""
    options = dict(options)
    skip = dict(options.pop("skip", {}))
    skip.update({k: options.pop(k) for k in list(options) if k in SKIP_FIELDS})
    return TrainConfig.from_dict({**options, "skip": SkipConfig.from_dict(skip).to_dict()})


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    data_dir = args.pop("data_dir", None)
    quiet = args.pop("quiet", False)
    resume = args.pop("resume", None)
    store = Store(data_dir or runtime.data_dir())
    try:
        if resume:
            cfg = TrainConfig.from_dict(store.get_run(resume)["config"])
        else:
            cfg = config_from(options_from(args))
        prep = prepare(cfg, data_dir=data_dir)
        print(f"BLAS: {runtime.active_blas().describe()}")
        run_id, summary = train(prep, store, resume=resume, progress=not quiet)
    except (JobError, TrainConfigError, SkipConfigError, corpora.CorpusError, modeling.ModelError, StoreError) as exc:
        return fail(str(exc))
    except TypeError as exc:  # a config file value of the wrong type
        return fail(f"--config: {exc}")
    if run_id is None:  # a rank other than 0 of mlx.launch: rank 0 reports and writes the run
        return 0
    print(f"run {run_id}")
    print(f"val loss: base {summary['base_loss']:.4f}, skip {summary['skip_loss']:.4f}, "
          f"improvement {summary['improvement_pct']:+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

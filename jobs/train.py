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

from psilonet import runtime

runtime.setup(workload="training")  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys
from dataclasses import fields

from jobs import cli
from jobs.cli import JobParser, add_config_options, add_data_dir, read_config_file
from psilonet.model.skip import SkipConfig
from psilonet.store import Store, StoreError
from psilonet.training.loop import TrainConfig, prepare, train

SKIP_FIELDS = {f.name for f in fields(SkipConfig)}


def add_train_options(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """The options of one training configuration, from TrainConfig and SkipConfig (shared with jobs.sweep)."""
    p.add_argument("--config", help="TOML or JSON file of options (keys as the flags, with underscores)")
    add_config_options(p, TrainConfig, exclude=exclude, defaults=False)
    add_config_options(p, SkipConfig, exclude=exclude, defaults=False)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_data_dir(p)


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.train", description=__doc__,
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


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    data_dir = cli.data_dir(args.pop("data_dir", None))
    quiet = args.pop("quiet", False)
    resume = args.pop("resume", None)
    store = Store(data_dir)
    if resume:
        if args:
            raise cli.JobError(f"--resume: continues {resume} with its own options; "
                               f"drop {cli.flag_name(sorted(args)[0])}")
        try:
            stored = store.get_run(resume)
        except StoreError as exc:
            raise cli.JobError(f"--resume: {exc}") from exc
        if stored["kind"] != "train":
            raise cli.JobError(f"--resume: {resume} is a {stored['kind']} run, not a training run")
        cfg = TrainConfig.from_dict({k: v for k, v in stored["config"].items() if k != "ranks"})
    else:
        cfg = config_from(options_from(args))
    cfg.validate()  # every option checked before the model loads
    prep = prepare(cfg, data_dir=data_dir)
    print(f"BLAS: {runtime.active_blas().describe()}")
    run_id, summary = train(prep, store, resume=resume, progress=not quiet)
    if run_id is None:  # a rank other than 0 of mlx.launch: rank 0 reports and writes the run
        return 0
    print(f"run {run_id}")
    print(f"val loss: base {summary['base_loss']:.4f}, skip {summary['skip_loss']:.4f}, "
          f"improvement {summary['improvement_pct']:+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

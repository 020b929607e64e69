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
import dataclasses
import sys
from dataclasses import fields

from jobs import checks, cli
from jobs.cli import JobParser, add_config_options, add_data_dir, read_config_file
from psilonet import corpora
from psilonet.model.skip import SkipConfig
from psilonet.store import Store, StoreError
from psilonet.store.catalog import RESUMABLE
from psilonet.store.runs import RUN_DB_FILE
from psilonet.training.loop import CHECKPOINT_DIR, TrainConfig, prepare, train

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
    skip = options.get("skip")
    both = sorted(set(options) & set(skip)) if isinstance(skip, dict) else []
    if both:  # which one would win is not obvious from the file
        raise cli.JobError(f"--config: {both[0]} is set both at the top and under [skip]; keep one")
    options.update(args)
    return options


def no_effect(options: dict, cfg: TrainConfig, distance_sets: list[list[int]] | None = None) -> list[str]:
    """One line per option that was given but changes nothing in this configuration."""
    given = set(options) | set(options.get("skip") or {})
    skip, sets = cfg.skip, distance_sets or [cfg.skip.distances]
    out = []
    if "dial" in given and not skip.gates:
        out.append("--dial: has no effect without --gates (it scales the gated skip path)")
    if "sparsity_weight" in given and skip.sparsity is None:
        out.append("--sparsity-weight: has no effect without --sparsity l1 or --sparsity entropy")
    if skip.sparsity is not None and skip.sparsity_weight == 0:
        out.append("--sparsity: has no effect with --sparsity-weight 0 (the default); give a weight > 0")
    elif skip.sparsity is not None and all(len(d) < 2 for d in sets):
        out.append("--sparsity: has no effect with one distance (it acts on the weights of several taps); "
                   "give several, e.g. --distances 3 4 5")
    return out


def check_before_work(cfg: TrainConfig, data_dir, options: dict | None = None) -> TrainConfig:
    """The checks that need the model's config.json (not its weights) or two options at once;
    returns the config to run (a default batch size shrunk to the training windows)."""
    batch = checks.fit_batch("--batch-size", cfg.batch_size, cfg.train_samples, "--train-samples",
                             given=options is not None and "batch_size" in options)
    cfg = dataclasses.replace(cfg, batch_size=batch)
    corpora.check_available(cfg.dataset, data_dir)
    checks.check_context("--seq-len", cfg.seq_len, cfg.model, data_dir)
    return cfg


def check_resume(store: Store, run_id: str) -> None:
    """A run that can be continued, with a whole checkpoint (or none yet: it starts over, said so)."""
    try:
        stored = store.get_run(run_id)
    except StoreError as exc:
        raise cli.JobError(f"--resume: {exc}") from exc
    if stored["kind"] != "train":
        raise cli.JobError(f"--resume: {run_id} is a {stored['kind']} run, not a training run")
    if stored["state"] not in RESUMABLE:
        raise cli.JobError(f"--resume: run {run_id} is {stored['state']}; only a killed, failed or interrupted "
                           "run can be resumed")
    staging = store.staging_dir / run_id
    if not (staging / RUN_DB_FILE).is_file():
        raise cli.JobError(f"--resume: run {run_id} has no staging data left in {staging}; train it again "
                           "without --resume")
    problem = checks.checkpoint_problem(staging / CHECKPOINT_DIR)
    if problem == "missing":
        cli.warn(f"--resume: run {run_id} has no checkpoint in {staging / CHECKPOINT_DIR}; it starts over "
                 "from step 0")
    elif problem:
        raise cli.JobError(f"--resume: checkpoint file {problem}; delete {staging / CHECKPOINT_DIR} to start "
                           "the run over from step 0")


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
        check_resume(store, resume)
        cfg = TrainConfig.from_dict({k: v for k, v in store.get_run(resume)["config"].items() if k != "ranks"})
        cfg.validate()
    else:
        options = options_from(args)
        cfg = config_from(options).validate()  # every option checked before the model loads
        for line in no_effect(options, cfg):
            cli.warn(line)
        cfg = check_before_work(cfg, data_dir, options)
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

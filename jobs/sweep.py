"""Sweep skip adapters over distances x alphas x seeds (plus multi-tap sets and gated variants).

Each grid point and seed is a training run; the sweep run holds, per config, the mean, std
and 95% CI (Student t) of the validation improvement over seeds and a paired t-test against
the best config. Every other option is a training option (see python -m jobs.train --help).

Example (tiny): python -m jobs.sweep --distances 2 3 --alphas 0.3 0.65 --seeds 0 1 --train-samples 40
Re-running a sweep skips the configs that already completed. With --engine ray each config is a
Ray Tune trial (pip install -r requirements-scale.txt), locally or on a cluster (--address).
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup(workload="training")  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys
from dataclasses import fields, replace

from jobs import cli
from jobs.cli import JobError, JobFault, JobParser, add_config_options
from jobs.train import add_train_options, check_before_work, config_from, no_effect, options_from
from psilonet.config import from_dict
from psilonet.store import Store
from psilonet.training import ray_engine
from psilonet.training.sweep import VARIANTS, SweepSpec, run_sweep


def tap_set(text: str) -> list[int]:
    try:
        distances = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated distances like 3,4,5, got {text!r}")
    if not distances:
        raise argparse.ArgumentTypeError(f"a tap set needs at least one distance, like 3,4,5; got {text!r}")
    return distances


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    add_train_options(p, exclude=("--distances", "--alpha", "--seed", "--gates"))
    p.add_argument("--distances", type=int, nargs="+", help="single skip distances, one config each")
    p.add_argument("--tap-sets", type=tap_set, nargs="+", metavar="D,D,..", help="multi-tap distance sets, e.g. 3,4,5")
    p.add_argument("--alphas", type=float, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, help="plain and/or gated (per-head gates)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one config after another here; ray: each config a Ray Tune trial")
    add_config_options(p, ray_engine.RayConfig)
    return p


def report(store: Store, sweep_id: str) -> None:
    """What became of every run of the sweep, from the catalog: counts, then one line per run
    that did not complete (a lost one is trained by rerunning the same command)."""
    summary = store.get_run(sweep_id).get("summary") or {}
    with store.open_run(sweep_id) as reader:
        runs = reader.sweep_runs()
    print(f"{summary.get('runs', len(runs))} runs: {summary.get('completed', 0)} completed, "
          f"{summary.get('failed', 0)} failed, {summary.get('lost', 0)} lost "
          f"({summary.get('trained', 0)} trained now, {summary.get('reused', 0)} reused, "
          f"{summary.get('retried', 0)} lost trial(s) retried)")
    for run in runs[runs.state != "complete"].sort_values(["state", "label", "seed"]).itertuples():
        print(f"  {run.state:6s}  {run.label} seed {run.seed}: {run.error or 'no error recorded'}")
    if summary.get("lost"):
        print(f"rerun the same command to train the {summary['lost']} lost run(s) (the completed ones are reused)")


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    data_dir = cli.data_dir(args.pop("data_dir", None))
    quiet = args.pop("quiet", False)
    engine = args.pop("engine")
    if args.get("cpus_per_trial", 1) < 1:  # before RayConfig's own check, in the flag's words
        raise JobError(f"--cpus-per-trial: must be at least 1, got {args['cpus_per_trial']}")
    ray_cfg = from_dict(ray_engine.RayConfig, {f.name: args.pop(f.name) for f in fields(ray_engine.RayConfig)})
    grid = {k: args.pop(k) for k in ("distances", "tap_sets", "alphas", "seeds", "variants") if k in args}
    store = Store(data_dir)
    options = options_from(args)
    for key in ("distances", "tap_sets", "alphas", "seeds", "variants"):  # from a config file
        if key in options and key not in grid:
            grid[key] = options.pop(key)
    base = config_from(options)
    sets = [[d] for d in grid.get("distances", [])] + [list(s) for s in grid.get("tap_sets", [])]
    spec = SweepSpec(base, distance_sets=sets or [base.skip.distances],
                     alphas=grid.get("alphas", [base.skip.alpha]), seeds=grid.get("seeds", [base.seed]),
                     variants=grid.get("variants", ["plain"]))
    n_runs = len(spec.validate().configs())  # every grid point checked before the model loads
    for label in spec.repeated():
        cli.warn(f"--distances/--tap-sets: {label} is given more than once; it is trained and counted once")
    gated = replace(base, skip=replace(base.skip, gates="gated" in spec.variants))
    for line in no_effect(options, gated, spec.distance_sets):
        cli.warn(line)
    if check_before_work(base, data_dir, options).batch_size != base.batch_size:
        spec.base = base = replace(base, batch_size=base.train_samples)  # the default, shrunk to the data
    if engine == "ray":
        ray_engine.require_ray()
    print(f"BLAS: {runtime.active_blas().describe()}")
    print(f"{n_runs} runs")
    try:
        sweep_id, configs = run_sweep(spec, store, data_dir=data_dir, progress=not quiet, engine=engine, ray=ray_cfg)
    except ray_engine.RayClusterLost as exc:
        raise JobFault(str(exc)) from exc
    print(f"sweep run {sweep_id}")
    report(store, sweep_id)
    cols = ["label", "n", "failed", "mean", "std", "ci_low", "ci_high", "p_vs_best"]
    print(configs[cols].sort_values("mean", ascending=False).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if (configs["n"] == 0).all():
        print(f"error: every run of sweep {sweep_id} failed (see the failed column and the runs' errors)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

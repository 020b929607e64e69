"""Sweep configs as Ray Tune trials, on one machine or a Ray cluster (optional: ``make setup-scale``).

Each trial is a fresh worker process that loads the fast BLAS before MLX exactly as a local
run does (any ``psilonet`` import does that first), with its BLAS thread count set to its CPU share so that
trials do not oversubscribe the cores, and trains one config through the same code and store
as a local run: its own run file, published atomically into ``data_dir`` (which may be shared
storage seen by every node at the same path). A trial that raises is marked failed by the
training code itself; a worker that dies leaves a run whose state reads ``killed`` (or, on
another host, ``running``), never a half-written published run.
"""

from __future__ import annotations

import os
from pathlib import Path

RAY_REQUIREMENTS = "requirements-scale.txt"
INSTALL_HINT = f"pip install -r {RAY_REQUIREMENTS}"
ROOT = Path(__file__).resolve().parent.parent


class RayUnavailable(RuntimeError):
    pass


def require_ray() -> None:
    """Fail in one line, with the install command, when Ray is missing."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise RayUnavailable(f"--engine: ray is not installed; install it with: {INSTALL_HINT}")


def _trial(config: dict) -> dict:
    """One Tune trial: train config ``config["train"]`` as a child of the sweep run."""
    from psilonet import runtime

    runtime.setup()  # this worker's entry point: the fast BLAS before the imports below load mlx
    from psilonet.store import Store
    from psilonet.training.loop import TrainConfig, prepare, train

    cfg = TrainConfig.from_dict(config["train"])
    store = Store(config["data_dir"])
    run_id, summary = train(prepare(cfg, data_dir=config["data_dir"]), store, parent=config["sweep_id"],
                            progress=False)
    return {"run_id": run_id, **{k: summary[k] for k in ("base_loss", "skip_loss", "improvement_pct")}}


def run_trials(configs: list, sweep_id: str, data_dir: Path, *, address: str | None = None,
               cpus_per_trial: int = 1, local_cpus: int | None = None) -> dict[str, str]:
    """Run every TrainConfig as a Tune trial; return {run hash: error} of the trials that failed."""
    require_ray()
    import ray
    from ray import tune

    from psilonet.training.loop import TrainConfig

    if not configs:
        return {}
    threads = str(cpus_per_trial)
    env = {"OPENBLAS_NUM_THREADS": threads, "BLIS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PSILONET_DATA": str(data_dir)}
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": local_cpus or os.cpu_count()}
        ray.init(runtime_env={"env_vars": env}, include_dashboard=False, logging_level="ERROR", **kwargs)
    try:
        param_space = {"train": tune.grid_search([c.to_dict() for c in configs]),
                       "sweep_id": sweep_id, "data_dir": str(data_dir)}
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": cpus_per_trial}),
            param_space=param_space,
            run_config=tune.RunConfig(name=sweep_id, storage_path=str(Path(data_dir).resolve() / "ray"),
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
        )
        results = tuner.fit()
        errors = {}
        for result in results:
            if result.error is not None:
                errors[TrainConfig.from_dict(result.config["train"]).run_hash()] = f"{type(result.error).__name__}: {result.error}"
        return errors
    finally:
        if started_here:
            ray.shutdown()

"""Sweep configs as Ray Tune trials, on one machine or a Ray cluster (optional: ``make setup-scale``).

Each trial is a fresh worker process that loads the fast BLAS before MLX exactly as a local
run does (the trial calls ``runtime.setup()`` first), with its BLAS thread count set to its CPU share so that
trials do not oversubscribe the cores, and trains one config through the same code and store
as a local run: its own run file, published atomically into ``data_dir`` (which may be shared
storage seen by every node at the same path).

Two ways a trial can end without a result, told apart where it is certain:

* **failed**: its training raised (a bad config, a diverging loss). The training code marks
  its run failed with the error, and the trial *returns* that error as its result, so Ray
  sees a finished trial and never retries it: the same config would fail the same way.
* **lost**: its worker process or its node died (Ray's node-died, actor-died, worker-crashed
  errors, or a trial whose actor never ran). Nothing of the trial's own code could report it;
  Tune retries it, on any node with a free CPU, up to ``trial_retries`` times. The dead
  attempt's run reads ``killed`` (or, on another host, ``running``), never half-published.

Why not ``FailureConfig(max_failures=N)`` alone: it retries every error, so a config that
diverges would be trained N+1 times. Why not classify Ray's exception types after the tuner:
a user error comes back wrapped (``RayTaskError``) and a trial whose actor never started comes
back with no config at all, so the driver cannot always say which config it was or why it
ended. Catching the training's own errors inside the trial leaves Ray's retry exactly the
failures it exists for, and retries start at once instead of after the whole grid.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from psilonet import config
from psilonet.config import option

#: Seconds the head node (its GCS) may refuse connections before the sweep gives up on it; Ray
#: itself ends the driver process after 60 s without its GCS, with no word of what to rerun.
HEAD_GRACE_S = 20.0
RAY_REQUIREMENTS = "requirements-scale.txt"
INSTALL_HINT = f"pip install -r {RAY_REQUIREMENTS}"
ROOT = Path(__file__).resolve().parent.parent


class RayUnavailable(RuntimeError):
    pass


class RayClusterLost(RuntimeError):
    """The cluster went away under the sweep (its head node, or this driver's connection)."""


@dataclass
class RayConfig:
    address: str | None = option(None, help="Ray cluster: auto or HOST:PORT (None: a local Ray on this machine)")
    cpus_per_trial: int = option(1, min=1, help="CPUs (and BLAS threads) per Ray trial")
    trial_retries: int = option(2, min=0, help="times a trial lost with its Ray node or worker is started "
                                               "again on a live node (a trial whose training raises is never retried)")

    def validate(self) -> "RayConfig":
        config.check(self)
        return self


@dataclass
class TrialEnd:
    """How Ray saw a trial that did not complete: ``failed`` (its training raised) or ``lost``."""

    state: str
    error: str
    retries: int = 0


def one_line(exc: BaseException) -> str:
    """The first line of an error's text (Ray's run to pages of context)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def require_ray() -> None:
    """Fail in one line, with the install command, when Ray is missing."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise RayUnavailable(f"--engine: ray is not installed; install it with: {INSTALL_HINT}")


def _trial(config: dict) -> dict:
    """One Tune trial: train ``config["trial"]["train"]`` as a child of the sweep run.

    Returns the training's error instead of raising it (see the module docstring).
    """
    from psilonet import runtime

    runtime.setup()  # this worker's entry point: the fast BLAS before the imports below load mlx
    from psilonet.store import Store
    from psilonet.training.loop import TrainConfig, prepare, train

    run_hash = config["trial"]["run_hash"]
    try:
        cfg = TrainConfig.from_dict(config["trial"]["train"])
        store = Store(config["data_dir"])
        run_id, summary = train(prepare(cfg, data_dir=config["data_dir"]), store, parent=config["sweep_id"],
                                progress=False)
    except Exception as exc:  # the run (if it began) is already marked failed with this error
        return {"run_hash": run_hash, "error": f"{type(exc).__name__}: {exc}"}
    return {"run_hash": run_hash, "run_id": run_id,
            **{k: summary[k] for k in ("base_loss", "skip_loss", "improvement_pct")}}


def _lost_kinds() -> tuple[type[BaseException], ...]:
    """Ray's errors for a trial whose process or node died (not the trial's own fault)."""
    from ray import exceptions as rx

    return (rx.RayActorError, rx.NodeDiedError, rx.WorkerCrashedError, rx.LocalRayletDiedError,
            rx.ObjectLostError, rx.ActorUnschedulableError, rx.ActorPlacementGroupRemoved)


def _tracker():
    """A Tune callback that keeps, per run hash, the retries and the end of each unfinished trial."""
    from ray import tune

    class Tracker(tune.Callback):
        def __init__(self):
            self.retries: dict[str, int] = {}
            self.ends: dict[str, TrialEnd] = {}

        @staticmethod
        def _key(trial) -> str | None:
            return ((getattr(trial, "config", None) or {}).get("trial") or {}).get("run_hash")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("error") and self._key(trial):
                self.ends[self._key(trial)] = TrialEnd("failed", str(result["error"]))

        def on_trial_recover(self, iteration, trials, trial, **info):
            key = self._key(trial)
            if key:
                self.retries[key] = self.retries.get(key, 0) + 1

        def on_trial_error(self, iteration, trials, trial, **info):
            key = self._key(trial)
            if not key:
                return
            try:
                exc = trial.get_pickled_error()
            except Exception:  # an unreadable error file: what it was is unknown, the loss is not
                exc = None
            lost = exc is None or isinstance(exc, _lost_kinds())
            what = "its worker or node died" if exc is None else f"{type(exc).__name__}: {one_line(exc)}"
            retries = self.retries.get(key, 0)
            if lost:
                what = f"lost after {retries} {'retry' if retries == 1 else 'retries'}: {what}"
            self.ends[key] = TrialEnd("lost" if lost else "failed", what, retries)

    return Tracker()


RERUN = "start it again and rerun the same command; the runs that completed are kept and only the missing configs train"


def _watch_head(gcs_address: str, where: str, stop: threading.Event, grace: float = HEAD_GRACE_S) -> None:
    """End this driver with one line once the head node has refused connections for ``grace`` seconds.

    Ray's core worker ends the process by itself (exit 1, a log line about its GCS) when the
    head node is gone; nothing in Python can catch that, so the sweep says what to rerun first.
    The sweep run then reads ``killed``, like a killed driver, and a rerun reuses its runs.
    """
    host, _, port = gcs_address.rpartition(":")
    down_since = None
    while not stop.wait(1.0):
        try:
            socket.create_connection((host, int(port)), timeout=2.0).close()
            down_since = None
        except OSError:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since >= grace:
                print(f"error: lost the head node of {where} (it has not answered for {grace:.0f} s): {RERUN}",
                      file=sys.stderr, flush=True)
                os._exit(1)


def run_trials(configs: list, sweep_id: str, data_dir: Path, ray_cfg: RayConfig | None = None, *,
               local_cpus: int | None = None) -> tuple[dict[str, TrialEnd], int]:
    """Run every TrainConfig as a Tune trial; return ({run hash: TrialEnd} of those that did not
    complete, how many times a lost trial was started again).

    The caller reconciles with the catalog: a run hash missing here may still have no complete
    run (a trial Ray never reported at all), which the caller counts as lost.
    """
    require_ray()
    ray_cfg = (ray_cfg or RayConfig()).validate()
    import ray
    from ray import tune

    if not configs:
        return {}, 0
    threads = str(ray_cfg.cpus_per_trial)
    env = {"OPENBLAS_NUM_THREADS": threads, "BLIS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PSILONET_DATA": str(data_dir)}
    # Tune logs every trial error with its traceback and its reporter prints each one even at
    # verbose=0 (its older reporter honours verbose=0); the sweep prints what became of every config.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    started_here = not ray.is_initialized()
    address = ray_cfg.address
    where = f"the Ray cluster at {address}" if address else "the local Ray"
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": local_cpus or os.cpu_count()}
        try:
            ray.init(runtime_env={"env_vars": env}, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, **kwargs)
        except (ray.exceptions.RayError, ConnectionError) as exc:
            raise RayClusterLost(f"cannot reach {where}: {one_line(exc)}") from exc
    stop = threading.Event()
    threading.Thread(target=_watch_head, args=(ray.get_runtime_context().gcs_address, where, stop),
                     name="psilonet-head-watch", daemon=True).start()
    try:
        tracker = _tracker()
        param_space = {"trial": tune.grid_search([{"run_hash": c.run_hash(), "train": c.to_dict()} for c in configs]),
                       "sweep_id": sweep_id, "data_dir": str(data_dir)}
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": ray_cfg.cpus_per_trial}),
            param_space=param_space,
            run_config=tune.RunConfig(name=sweep_id, storage_path=str(Path(data_dir).resolve() / "ray"),
                                      verbose=0, callbacks=[tracker],
                                      failure_config=tune.FailureConfig(max_failures=ray_cfg.trial_retries)),
        )
        tuner.fit()
        return tracker.ends, sum(tracker.retries.values())
    except (ray.exceptions.RayError, ConnectionError, tune.TuneError) as exc:
        raise RayClusterLost(f"{where} went away during the sweep ({type(exc).__name__}: its head node or this "
                             f"driver's connection died): {RERUN}") from exc
    finally:
        stop.set()
        if started_here and ray.is_initialized():
            ray.shutdown()

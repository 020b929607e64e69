"""Hyper-parameter sweeps: a grid of (distance set, alpha, variant) x seeds, one run each.

The sweep itself is a run of kind ``sweep``; every trained config is a ``train`` run whose
parent is the sweep. After each run the sweep's summary is recomputed from the finished runs
(mean, std, 95% Student-t CI of the improvement per config, and a paired t-test over seeds
against the best config) and written into the sweep run. A config that fails (out of memory,
divergence) is recorded as failed with its error and the sweep goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import pandas as pd

from psilonet import config
from psilonet.config import ConfigError
from psilonet.model.skip import SkipConfig
from psilonet.store import Store
from psilonet.training import stats
from psilonet.training.loop import Prepared, TrainConfig, check_depth, prepare, train
from psilonet.training.ray_engine import RayConfig, TrialEnd  # no Ray import: that module loads Ray only to run trials

VARIANTS = ("plain", "gated")


@dataclass
class SweepSpec:
    base: TrainConfig
    distance_sets: list[list[int]] = field(default_factory=lambda: [[3]])
    alphas: list[float] = field(default_factory=lambda: [0.65])
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: list[str] = field(default_factory=lambda: ["plain"])

    def validate(self) -> "SweepSpec":
        """Every grid value and every config it makes, checked without a model (ConfigError naming it)."""
        skip_meta = {f.name: dict(f.metadata) for f in fields(SkipConfig)}
        for name, hint, meta in (("distance_sets", list[list[int]], {}),
                                 ("alphas", list[float], skip_meta["alpha"]),
                                 ("seeds", list[int], dict(config.SEED_BOUNDS)), ("variants", list[str], {"choices": VARIANTS})):
            value = getattr(self, name)
            if isinstance(value, list) and not value:
                raise ConfigError(f"{name}: give at least one value")
            config.check_value(name, value, hint, meta)
        for distances in self.distance_sets:
            config.check_value("distances", distances, list[int], skip_meta["distances"])
            if not distances:
                raise ConfigError("distances: a tap set needs at least one distance")
        for _, _, cfg in self.configs():
            cfg.validate()
        return self

    def configs(self) -> list[tuple[str, str, TrainConfig]]:
        """(config_key, label, TrainConfig) for every distinct grid point and seed.

        Grid points that make the same training config (``--distances 1`` and ``--tap-sets 1,``)
        are one config, trained and counted once (see :meth:`repeated`).
        """
        return self._grid()[0]

    def repeated(self) -> list[str]:
        """Labels of the grid points dropped because an earlier one makes the same config."""
        return self._grid()[1]

    def _grid(self) -> tuple[list[tuple[str, str, TrainConfig]], list[str]]:
        out, seen, dropped = [], set(), []
        for distances in self.distance_sets:
            for alpha in self.alphas:
                for variant in self.variants:
                    skip = replace(self.base.skip, distances=list(distances), alpha=alpha, gates=variant == "gated")
                    label = f"d={','.join(map(str, distances))} alpha={alpha:g}" + (" gated" if variant == "gated" else "")
                    for seed in self.seeds:
                        cfg = replace(self.base, seed=seed, skip=SkipConfig.from_dict(skip.to_dict()))
                        if cfg.run_hash() in seen:
                            if label not in dropped:
                                dropped.append(label)
                            continue
                        seen.add(cfg.run_hash())
                        out.append((cfg.config_key(), label, cfg))
        return out, dropped


def _summary_tables(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.DataFrame(rows)
    table = stats.summarize(runs)
    extra = runs.groupby(["config_key", "label"], sort=False).agg(
        distances=("distances", "first"), alpha=("alpha", "first"), variant=("variant", "first"),
        failed=("state", lambda s: int((s != "complete").sum())),
        mean_skip_loss=("skip_loss", "mean"), mean_base_loss=("base_loss", "mean"),
    ).reset_index()
    configs = extra.merge(table, on=["config_key", "label"], how="left")
    configs["n"] = configs["n"].fillna(0).astype(int)
    return configs, runs


def _catalog_results(store: Store, sweep_id: str) -> dict[str, dict]:
    """{run hash: catalog row} of training runs: complete ones anywhere, else this sweep's own
    failed or killed attempt (newest first, so the latest attempt wins)."""
    found: dict[str, dict] = {}
    for row in store.list_runs(kind="train").to_dict("records"):
        try:
            h = TrainConfig.from_dict({k: v for k, v in row["config"].items() if k != "ranks"}).run_hash()
        except (TypeError, ValueError):
            continue  # a run written by an older version: not comparable
        if row["state"] == "complete" and found.get(h, {}).get("state") != "complete":
            found[h] = row
        elif row["parent"] == sweep_id and h not in found:
            found[h] = row
    return found


def _outcome(run: dict | None, end: TrialEnd | None = None) -> tuple[str, str | None]:
    """(state, error) of one grid point: the catalog's finished run wins, then how the engine saw it."""
    if run and run.get("state") in ("complete", "failed"):
        return run["state"], run.get("error")
    if end is not None:
        return end.state, end.error
    if run:
        return run.get("state") or "failed", run.get("error")
    return "failed", None


def _row(key: str, label: str, cfg: TrainConfig, run: dict | None, end: TrialEnd | None = None) -> dict:
    summary = (run or {}).get("summary") or {}
    state, error = _outcome(run, end)
    return dict(config_key=key, label=label, seed=cfg.seed, distances=",".join(map(str, cfg.skip.distances)),
                alpha=cfg.skip.alpha, variant="gated" if cfg.skip.gates else "plain",
                run_id=(run or {}).get("run_id"), state=state, error=error,
                base_loss=summary.get("base_loss"), skip_loss=summary.get("skip_loss"),
                improvement_pct=summary.get("improvement_pct"))


def _lost_unreported(todo: list, results: dict[str, dict], ends: dict[str, TrialEnd]) -> dict[str, TrialEnd]:
    """Trials Ray never told about (no result, no error) that have no finished run: lost too."""
    missing = {}
    for _, _, cfg in todo:
        h = cfg.run_hash()
        if h not in ends and results.get(h, {}).get("state") not in ("complete", "failed"):
            missing[h] = TrialEnd("lost", "its trial never reported (worker or node lost)")
    return missing


def run_sweep(
    spec: SweepSpec, store: Store, *, base=None, data_dir=None, progress: bool = True,
    engine: str = "local", ray: RayConfig | None = None,
) -> tuple[str, pd.DataFrame]:
    """Validate every config, train those not yet completed, and summarise from the catalog.

    ``engine="local"`` trains one config after another in this process; ``engine="ray"`` runs
    each as a Ray Tune trial (see :mod:`psilonet.training.ray_engine`; ``ray`` sets the cluster,
    CPUs and retries): a trial lost with its node is retried on a live one, and one still lost
    after its retries gets the state ``lost`` (counted apart from ``failed``). Either way every
    run is written by the same store code, and the summary is computed from the catalog, so re-running a sweep
    skips the configs that already completed (identified by :meth:`TrainConfig.run_hash`).
    """
    spec.validate()
    grid = spec.configs()
    first = prepare(grid[0][2], base=base, data_dir=data_dir)  # loads the model and data once
    for _, _, cfg in grid:  # every config's own checks, before any training
        check_depth(cfg.validate(), len(first.base.model.layers))

    sweep_config = {"base": spec.base.to_dict(), "distance_sets": spec.distance_sets, "alphas": spec.alphas,
                    "seeds": spec.seeds, "variants": spec.variants, "engine": engine}
    with store.begin_run("sweep", config=sweep_config, model=spec.base.model, dataset=spec.base.dataset) as writer:
        done = _catalog_results(store, writer.run_id)
        todo = [(key, label, cfg) for key, label, cfg in grid if done.get(cfg.run_hash(), {}).get("state") != "complete"]
        ends: dict[str, TrialEnd] = {}  # run hash -> TrialEnd of the configs that did not complete
        retried = 0  # trials started again after a lost node or worker

        def record(n_done: int) -> pd.DataFrame:
            results = _catalog_results(store, writer.run_id)
            rows = [_row(key, label, cfg, results.get(cfg.run_hash()), ends.get(cfg.run_hash()))
                    for key, label, cfg in grid]
            configs, runs = _summary_tables(rows)
            writer.write_sweep(configs, runs)
            writer.set_progress(n_done / max(len(todo), 1))
            return configs, rows

        if engine == "ray":
            from psilonet.training import ray_engine

            trial_ends, retried = ray_engine.run_trials([cfg for _, _, cfg in todo], writer.run_id, store.data_dir, ray)
            ends.update(trial_ends)
            ends.update(_lost_unreported(todo, _catalog_results(store, writer.run_id), ends))
        else:
            for i, (_, _, cfg) in enumerate(todo):
                try:
                    train(Prepared(cfg, first.base, first.tokenizer, first.windows), store,
                          parent=writer.run_id, progress=progress)
                except Exception as exc:  # the train run is marked failed; the sweep goes on
                    ends[cfg.run_hash()] = TrialEnd("failed", f"{type(exc).__name__}: {exc}")
                record(i + 1)
        configs, rows = record(len(todo))
        best = configs[configs.best == True]  # noqa: E712  (pandas boolean mask)
        writer.finish({"configs": len(configs), "runs": len(rows), "trained": len(todo),
                       "reused": len(grid) - len(todo),
                       "completed": int(sum(r["state"] == "complete" for r in rows)),
                       "failed": int(sum(r["state"] not in ("complete", "lost") for r in rows)),
                       "lost": int(sum(r["state"] == "lost" for r in rows)), "retried": retried,
                       "best": None if best.empty else best.label.iloc[0],
                       "best_mean_improvement_pct": None if best.empty else float(best["mean"].iloc[0])})
    return writer.run_id, configs

"""Hyper-parameter sweeps: a grid of (distance set, alpha, variant) x seeds, one run each.

The sweep itself is a run of kind ``sweep``; every trained config is a ``train`` run whose
parent is the sweep. After each run the sweep's summary is recomputed from the finished runs
(mean, std, 95% Student-t CI of the improvement per config, and a paired t-test over seeds
against the best config) and written into the sweep run. A config that fails (out of memory,
divergence) is recorded as failed with its error and the sweep goes on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd

from psilonet import stats
from psilonet.skip import SkipConfig
from psilonet.store import Store
from psilonet.training import Prepared, TrainConfig, check_depth, prepare, train

VARIANTS = ("plain", "gated")


@dataclass
class SweepSpec:
    base: TrainConfig
    distance_sets: list[list[int]] = field(default_factory=lambda: [[3]])
    alphas: list[float] = field(default_factory=lambda: [0.65])
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: list[str] = field(default_factory=lambda: ["plain"])

    def validate(self) -> "SweepSpec":
        for name in ("distance_sets", "alphas", "seeds", "variants"):
            if not getattr(self, name):
                raise ValueError(f"{name}: give at least one value")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants: unknown {bad[0]!r} (use {', '.join(VARIANTS)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: repeated values in {self.seeds}")
        return self

    def configs(self) -> list[tuple[str, str, TrainConfig]]:
        """(config_key, label, TrainConfig) for every grid point and seed."""
        out = []
        for distances in self.distance_sets:
            for alpha in self.alphas:
                for variant in self.variants:
                    skip = replace(self.base.skip, distances=list(distances), alpha=alpha, gates=variant == "gated")
                    label = f"d={','.join(map(str, distances))} alpha={alpha:g}" + (" gated" if variant == "gated" else "")
                    for seed in self.seeds:
                        cfg = replace(self.base, seed=seed, skip=SkipConfig.from_dict(skip.to_dict()))
                        out.append((config_key(cfg), label, cfg))
        return out


def config_key(cfg: TrainConfig) -> str:
    """Identifies a configuration across seeds: a hash of every setting except the seed."""
    settings = {k: v for k, v in cfg.to_dict().items() if k != "seed"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


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


def run_sweep(
    spec: SweepSpec, store: Store, *, base=None, data_dir=None, progress: bool = True,
    on_run: Callable[[dict], None] | None = None,
) -> tuple[str, pd.DataFrame]:
    """Validate every config, then train them one by one; return (sweep run id, config table)."""
    spec.validate()
    grid = spec.configs()
    first = prepare(grid[0][2], base=base, data_dir=data_dir)  # loads the model and data once
    for _, _, cfg in grid:  # every config's own checks, before any training
        check_depth(cfg.validate(), len(first.base.model.layers))
    # Configs differ only in skip settings and seed, so they share model and windows.
    prepared = [Prepared(cfg, first.base, first.tokenizer, first.windows) for _, _, cfg in grid]

    sweep_config = {"base": spec.base.to_dict(), "distance_sets": spec.distance_sets, "alphas": spec.alphas,
                    "seeds": spec.seeds, "variants": spec.variants}
    rows: list[dict] = []
    with store.begin_run("sweep", config=sweep_config, model=spec.base.model, dataset=spec.base.dataset) as writer:
        for i, ((key, label, cfg), prep) in enumerate(zip(grid, prepared)):
            row = dict(config_key=key, label=label, seed=cfg.seed, distances=",".join(map(str, cfg.skip.distances)),
                       alpha=cfg.skip.alpha, variant="gated" if cfg.skip.gates else "plain",
                       run_id=None, state="failed", error=None,
                       base_loss=None, skip_loss=None, improvement_pct=None)
            try:
                run_id, summary = train(prep, store, parent=writer.run_id, progress=progress)
                row.update(run_id=run_id, state="complete", **{k: summary[k] for k in ("base_loss", "skip_loss", "improvement_pct")})
            except Exception as exc:  # the train run is marked failed; the sweep goes on
                children = store.list_runs(kind="train")
                children = children[children.parent == writer.run_id]  # newest first
                row.update(run_id=None if children.empty else children.run_id.iloc[0],
                           error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            configs, runs = _summary_tables(rows)
            writer.write_sweep(configs, runs)
            writer.set_progress((i + 1) / len(grid))
            if on_run:
                on_run(row)
        best = configs[configs.best == True]  # noqa: E712  (pandas boolean mask)
        writer.finish({"configs": len(configs), "runs": len(rows),
                       "failed": int(sum(r["state"] != "complete" for r in rows)),
                       "best": None if best.empty else best.label.iloc[0],
                       "best_mean_improvement_pct": None if best.empty else float(best["mean"].iloc[0])})
    return writer.run_id, configs

"""Ablate a trained skip run: turn off each block's skip attention, each tap of a multi-tap block
and each head's gate, one at a time, and measure the change in held-out loss.

The windows are the run's own validation windows (the first --windows of them); every
(component, window) pair is one row of a batched forward. Per component: the mean paired
difference in loss with the trained model ("none off"), its Student-t 95% CI over windows, and
its rank; then Spearman's rank correlation between each kind's |learned weight| (tap weight,
gate alpha) and its delta loss. "all off" (every skip block off) is the frozen baseline. The result is stored as an
``ablation`` run whose parent is the training run.

Examples:
  python -m jobs.ablate --run train-20261128-042514-ff7ca5
  python -m jobs.ablate --run RUN --windows 4 --layers 5 6 --json
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import json
import math
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from jobs import cli
from jobs.cli import JobError, JobParser, add_data_dir
from psilonet import corpora
from psilonet.analysis import ablation
from psilonet.store import Store, StoreError
from psilonet.store import tables as T


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.ablate", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a complete training run")
    p.add_argument("--windows", type=int, default=None, help="validation windows to use (default: all of the run's)")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="ablate components of these skip layers only")
    p.add_argument("--batch-rows", type=int, default=32, help="rows (component x window) per forward pass")
    p.add_argument("--json", action="store_true", help="print one JSON object per component")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_data_dir(p)
    return p


def skip_layers_of(store: Store, run_id: str) -> list[int]:
    """The run's skip layers, from its stored tap weights (no model loaded): a run of another
    kind, or one without skip modules, is refused here."""
    try:
        run = store.get_run(run_id)
    except StoreError as exc:
        raise JobError(f"--run: {exc}") from exc
    if run["kind"] != "train":
        raise JobError(f"--run: {run_id} is a {run['kind']} run; it has no skip modules to ablate")
    if run["status"] != "complete":
        raise JobError(f"--run: {run_id} is {run['status']}, not complete")
    with store.open_run(run_id) as reader:
        layers = sorted(int(l) for l in reader.tap_weights().layer.unique())
    if not layers:
        raise JobError(f"--run: {run_id} has no skip modules to ablate")
    return layers


def check_args(args, store: Store) -> list[int]:
    if args.windows is not None and args.windows < 2:
        raise JobError(f"--windows: need at least 2 windows for a confidence interval, got {args.windows}")
    if args.batch_rows < 1:
        raise JobError(f"--batch-rows: must be >= 1, got {args.batch_rows}")
    layers = skip_layers_of(store, args.run)
    try:
        ablation.check_layers(layers, args.layers)
    except ablation.AblationError as exc:
        raise JobError(f"--{exc}") from exc
    return layers


def _json_value(v):
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


@cli.job
def main(argv: list[str] | None = None) -> int:
    from psilonet.training import loop as training

    args = build_parser().parse_args(argv)
    store = Store(cli.data_dir(args.data_dir))
    check_args(args, store)
    run_cfg = training.TrainConfig.from_dict(
        json.loads((store.run_dir(args.run) / training.TRAIN_CONFIG_FILE).read_text()))
    n = args.windows or run_cfg.val_samples
    if n > run_cfg.val_samples:
        raise JobError(f"--windows: the run has {run_cfg.val_samples} validation windows, asked for {n}")

    model, tokenizer, cfg = training.load_trained(store, args.run, data_dir=store.data_dir)
    windows = corpora.load_windows(tokenizer, cfg.dataset, seq_len=cfg.seq_len, n_train=cfg.train_samples,
                                   n_val=cfg.val_samples, seed=cfg.split_seed, data_dir=store.data_dir).val[:n]
    comps = ablation.components(model, args.layers)
    config = {"train_run": args.run, "windows": int(n), "layers": args.layers, "batch_rows": args.batch_rows,
              "components": len(comps) - len(ablation.REFERENCES), "blend": cfg.skip.blend}
    bar = tqdm(total=len(comps) * n, desc="ablate", unit="row", disable=args.quiet or args.json)
    with store.begin_run("ablation", config=config, model=cfg.model, dataset=cfg.dataset, parent=args.run) as run:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)
            run.set_progress(done / total)

        losses = ablation.ablate(model, windows, comps, batch_rows=args.batch_rows, progress=progress)
        summary = ablation.summarize(losses, comps, ablation.learned_weights(model))
        run.write_rows(T.ABLATION_LOSS, list(losses.itertuples(index=False, name=None)))
        run.write_rows(T.ABLATION, list(summary.itertuples(index=False, name=None)))
        ref = summary.set_index("component")
        top = summary.dropna(subset=["rank"]).sort_values("rank").head(1)
        corr = ablation.weight_effect_correlation(summary)
        run.finish({"none_off_loss": float(ref.loss[ablation.NONE_OFF]), "all_off_loss": float(ref.loss[ablation.ALL_OFF]),
                    "components": config["components"], "windows": int(n),
                    "top_component": top.component.iloc[0] if len(top) else None,
                    **{f"spearman_{r.kind}": r.spearman for r in corr.itertuples()}})
    bar.close()
    if args.json:
        for row in summary.itertuples(index=False):
            print(json.dumps({k: _json_value(getattr(row, k)) for k in T.ABLATION.names}))
    else:
        shown = summary.copy()
        print(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}", na_rep="-"))
        print("\nDo components with large learned weights matter most? Spearman(|learned weight|, delta loss):")
        for r in corr.itertuples():
            print(f"  {r.kind:<8} rho {r.spearman:+.3f} (p {r.p_value:.3g}, {r.n} components)")
        if corr.empty:
            print("  (too few components, or their learned weights are all equal)")
        print(f"\nrun {run.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

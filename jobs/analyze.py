"""Analyse captured activations: CKA (biased, debiased), SVCCA, PWCCA per layer, per-head CKA,
cross-layer CKA, novelty-window statistics and PCA trajectories, for one or more captures.

Several --captures (two runs, or one run captured on two datasets) are analysed side by side
into one analysis run, each keyed by its capture run and dataset.

Example: python -m jobs.analyze --captures capture-20261128-043756-f98952 --layers 10-20
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys

from jobs import cli
from jobs.cli import JobParser, add_data_dir
from psilonet.analysis import compare as analysis
from psilonet.store import Store


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.analyze", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captures", nargs="+", required=True, metavar="RUN_ID", help="capture runs to analyse")
    p.add_argument("--layers", help="novelty window, e.g. 10-20 (0 = embeddings); default: the middle third")
    p.add_argument("--seed", type=int, default=0, help="PCA fit sample and the tokens drawn as trajectories")
    add_data_dir(p)
    return p


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = Store(cli.data_dir(args.data_dir))
    run_id, _ = analysis.run_analysis(store, args.captures, layers=args.layers, seed=args.seed)
    print(f"run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

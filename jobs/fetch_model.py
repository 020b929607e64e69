"""Fetch and convert the offline default model (SmolLM2-135M-Instruct) into data/models/.

Idempotent: a second run finds the converted folder and does nothing.
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import logging
import sys

from jobs import cli
from jobs.cli import JobParser, add_data_dir
from psilonet.model import loading as modeling


@cli.job
def main(argv: list[str] | None = None) -> int:
    parser = JobParser(prog="python -m jobs.fetch_model", description=__doc__)
    add_data_dir(parser)
    args = parser.parse_args(argv)
    data_dir = cli.data_dir(args.data_dir)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"BLAS: {runtime.active_blas().describe()}")
    target = modeling.default_model_path(data_dir)
    already = modeling.is_complete(target)
    if not already and target.exists():
        print(f"{target} is incomplete or damaged: converting it again")
    path = modeling.fetch_default_model(data_dir)
    print(f"{'already there' if already else 'converted'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

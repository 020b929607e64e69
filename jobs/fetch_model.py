"""Fetch and convert the offline default model (SmolLM2-135M-Instruct) into data/models/.

Idempotent: a second run finds the converted folder and does nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys

from psilonet import runtime
from psilonet.model import loading as modeling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.fetch_model", description=__doc__)
    parser.add_argument("--data-dir", default=None, help="data folder (default: $PSILONET_DATA or ./data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"BLAS: {runtime.active_blas().describe()}")
    already = modeling.is_complete(modeling.default_model_path(args.data_dir))
    try:
        path = modeling.fetch_default_model(args.data_dir)
    except modeling.ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'already there' if already else 'converted'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The first run: fill every page of the explorer in a few minutes on two CPU cores.

Trains a small multi-tap gated skip adapter (taps at distances 2, 3 and 4, per-head gates), captures
it on both offline corpora (python-docs and smol-stories), analyses both captures side by side
(every representation), saves one dose run, makes a small bio evaluation (fatigue and Hebbian
against sober on a few short windows, about 20 s) and ablates one block of the trained adapter
(the block, each tap and each head of block 15 off in turn on a few held-out windows, for the Causes
page); prints each run it made and how long each step took.
Each step is the ordinary job (``jobs.train``, ``jobs.capture``, ``jobs.analyze``, ``jobs.dose``,
``jobs.bio_eval``, ``jobs.ablate``) with small settings, so every run is an ordinary run.

Example: python -m jobs.demo [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time

from jobs import ablate, analyze, bio_eval, capture, cli, dose, train
from psilonet.store import Store

# Small enough for about five minutes in all on two cores, large enough that the taps and gates
# visibly move and the adapter beats the frozen baseline on held-out text.
# Additive blending starts exactly at the baseline (the skip o-projection is zero), so a short
# run can only move away from it by learning; measured +14.7% here against +5.6% for the convex
# blend at alpha 0.65, lr 3e-4 (same data, 12 steps).
TRAIN = ["--dataset", "python-docs", "--train-samples", "48", "--val-samples", "16", "--epochs", "1",
         "--distances", "2", "3", "4", "--gates", "--blend", "additive", "--alpha", "0.5", "--lr", "1e-3"]
# The stored lens and attention summaries read one 64-token window per side: 0.08x the capture's
# own time on these settings (bench.capture_summaries; README, "The Lens and Attention pages").
CAPTURE = ["--samples", "24", "--max-tokens", "1000", "--lens-positions", "64"]
DOSE = ["--prompt", "The nature of consciousness is", "--intensities", "0", "0.1", "0.2", "0.3",
        "--max-tokens", "32"]
# Enough to draw every chart of the Bio interventions page (4 windows of 16 tokens per corpus,
# two strengths): about 20 s on two cores; `python -m jobs.bio_eval` measures it properly.
BIO = ["--windows", "4", "--seq-len", "16", "--strengths", "0.5", "1"]
# One middle block's 13 components (the block, its 3 taps, its 9 heads) on 4 held-out windows,
# 60 rows: enough to fill both Causes heatmaps in about 16 s on two cores (README, "Two
# commands"); `python -m jobs.ablate --run RUN` ablates every block.
ABLATE = ["--windows", "4", "--layers", "15"]


def build_parser() -> argparse.ArgumentParser:
    p = cli.JobParser(prog="python -m jobs.demo", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_dir(p)
    return p


def _newest(store: Store, kind: str, before: set[str]) -> str:
    runs = store.list_runs(kind=kind)
    new = [r for r in runs.run_id if r not in before]
    if not new:
        raise cli.JobFault(f"the {kind} step made no run")
    return new[0]


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = ["--data-dir", str(cli.data_dir(args.data_dir))] if args.data_dir else []
    store = Store(cli.data_dir(args.data_dir))
    made, times = [], []

    def step(kind: str, job, argv: list[str]) -> str:
        before = set(store.list_runs(kind=kind).run_id)
        start = time.perf_counter()
        code = job.main([*argv, *data])
        if code != 0:
            raise SystemExit(code)
        times.append((kind, time.perf_counter() - start))
        run_id = _newest(store, kind, before)
        made.append((kind, run_id))
        return run_id

    train_id = step("train", train, [*TRAIN, "--quiet"])
    captures = [step("capture", capture, ["--run", train_id, "--dataset", corpus, *CAPTURE, "--quiet"])
                for corpus in ("python-docs", "smol-stories")]
    step("analysis", analyze, ["--captures", *captures])
    step("dose", dose, [*DOSE, "--run", train_id])
    step("bio_eval", bio_eval, BIO)
    step("ablation", ablate, ["--run", train_id, *ABLATE, "--quiet"])

    improvement = store.get_run(train_id)["summary"].get("improvement_pct")
    print("\ndemo: made")
    for kind, run_id in made:
        print(f"  {kind:<9} {run_id}")
    if improvement is not None:
        print(f"  improvement of the trained adapter over the frozen baseline (val loss): {improvement:+.2f}%")
    print("  time: " + ", ".join(f"{kind} {t:.0f} s" for kind, t in times)
          + f"; {sum(t for _, t in times):.0f} s in all")
    print("Open the explorer with `make app`: every page has data now.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

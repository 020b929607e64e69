"""Evaluate the bio-inspired interventions: next-token loss and entropy on token windows of both
offline corpora, with each mechanism at several strengths against sober on the same windows.

Per window, sober and every (mechanism, strength) read the same tokens as the rows of one
batch; the run stores every window's numbers and, as its summary, the mean paired difference
with sober and its Student-t 95% CI per corpus, mechanism and strength.

Example (about 20 minutes on two CPU cores for the default 16 windows of 128 tokens per corpus):
  python -m jobs.bio_eval --strengths 0.25 0.5 1
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import sys

from tqdm import tqdm

from jobs import checks, cli
from jobs.cli import JobParser, add_config_options, add_data_dir
from psilonet import corpora
from psilonet.generation import bio, bio_eval
from psilonet.model import loading as modeling
from psilonet.model import quantized
from psilonet.store import Store
from psilonet.store import tables as T


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="python -m jobs.bio_eval", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p, bio_eval.BioEvalConfig)
    p.add_argument("--model", default=modeling.DEFAULT_MODEL, help="'default', an mlx-lm hub name or a folder")
    quantized.add_weights_option(p)
    add_data_dir(p)
    return p


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = bio_eval.BioEvalConfig(corpora=args.corpora, mechanisms=args.mechanisms, strengths=args.strengths,
                                 windows=args.windows, seq_len=args.seq_len, seed=args.seed).check()
    store = Store(cli.data_dir(args.data_dir))
    for name in cfg.corpora:
        corpora.check_available(name, store.data_dir)
    checks.check_context("--seq-len", cfg.seq_len + 1, args.model, store.data_dir,
                         what="tokens per window (--seq-len + 1)")
    model, tokenizer = quantized.load_model(args.model, store.data_dir, weights=args.weights)
    bio.check_family(model)

    config = {**cfg.to_dict(), "model": args.model, "weights": args.weights, "fatigue_params": vars(bio.FatigueParams()),
              "hebbian_params": vars(bio.HebbianParams())}
    bar = tqdm(total=len(cfg.corpora) * cfg.windows, desc="bio eval", unit="window")
    with store.begin_run("bio_eval", config=config, model=args.model, dataset=",".join(cfg.corpora)) as run:
        def progress(done: int, total: int) -> None:
            bar.update(1)
            run.set_progress(done / total)

        results = bio_eval.evaluate(
            model, tokenizer, cfg, data_dir=store.data_dir, progress=progress,
            on_window=lambda rows: run.write_rows(T.BIO_EVAL, list(rows.itertuples(index=False, name=None))))
        summary = bio_eval.summarize(results)
        run.finish({f"{r.corpus}/{r.mechanism}@{r.strength:g}/loss_diff": r.loss_diff
                    for r in summary.itertuples() if r.mechanism != "sober"})
    bar.close()
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"\nrun {run.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

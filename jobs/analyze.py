"""Analyse captured activations: CKA (biased, debiased), SVCCA, PWCCA per layer, per-head CKA,
cross-layer CKA, novelty-window statistics and PCA trajectories, for one or more captures.

Several --captures (two runs, or one run captured on two datasets) are analysed side by side
into one analysis run, each keyed by its capture run and dataset.

Example: python -m jobs.analyze --captures capture-20261128-043756-f98952 --layers 10-20
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from jobs.cli import add_data_dir, fail
from psilonet import runtime
from psilonet.analysis import compare as analysis
from psilonet.store import Store, StoreError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captures", nargs="+", required=True, metavar="RUN_ID", help="capture runs to analyse")
    p.add_argument("--layers", help="novelty window, e.g. 10-20 (0 = embeddings); default: the middle third")
    p.add_argument("--seed", type=int, default=0, help="PCA fit sample and the tokens drawn as trajectories")
    add_data_dir(p)
    return p


def load_source(store: Store, run_id: str) -> analysis.Source:
    run = store.get_run(run_id)
    if run["kind"] != "capture":
        hint = f"; capture it first: python -m jobs.capture --run {run_id}" if run["kind"] == "train" else ""
        raise analysis.AnalysisError(f"captures: {run_id} is a {run['kind']} run, not a capture{hint}")
    if run["state"] != "complete":
        raise analysis.AnalysisError(f"captures: {run_id} is {run['state']}, not complete")
    s = run["summary"]
    return analysis.Source(run_id, run["dataset"], s["sides"], s["layers"], s["heads"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = Store(args.data_dir or runtime.data_dir())
    try:
        sources = [load_source(store, r) for r in args.captures]
        windows = {s.run_id: analysis.parse_layer_range(args.layers, s.layers) for s in sources}
    except (analysis.AnalysisError, StoreError) as exc:
        return fail(str(exc))
    config = {"captures": args.captures, "layers": args.layers, "seed": args.seed}
    try:
        with store.begin_run("analysis", config=config, model=None,
                             dataset=" vs ".join(s.dataset for s in sources), parent=args.captures[0]) as writer:
            summary = {}
            for i, source in enumerate(tqdm(sources, desc="analyse", unit="capture")):
                with store.open_run(source.run_id) as reader:
                    base_resid, base_heads = analysis.load_side(reader, "baseline", source)
                    trained = analysis.load_side(reader, "trained", source) if "trained" in source.sides else (None, None)
                    tokens = reader.capture_tokens()
                rows = analysis.similarity_rows(source, base_resid, base_heads, *trained, windows[source.run_id])
                writer.write_similarity(rows)
                sides = {"baseline": base_resid, **({"trained": trained[0]} if trained[0] is not None else {})}
                paths, variance = analysis.trajectory_rows(source, sides, tokens, args.seed)
                writer.write_trajectories(paths, variance)
                novelty = {r[3]: r[7] for r in rows if r[2] == "novelty"}
                summary[source.run_id] = {"dataset": source.dataset, "window": list(windows[source.run_id]),
                                          **{k: round(v, 4) for k, v in novelty.items() if k.startswith("cka")}}
                writer.set_progress((i + 1) / len(sources))
                a, b = windows[source.run_id]
                if novelty:
                    print(f"{source.run_id} ({source.dataset}): CKA baseline vs trained over layers {a}-{b}: "
                          f"mean {novelty['cka:mean']:.3f}, min {novelty['cka:min']:.3f}, max {novelty['cka:max']:.3f}")
            writer.finish(summary)
    except (StoreError, ValueError) as exc:
        return fail(str(exc))
    print(f"run {writer.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

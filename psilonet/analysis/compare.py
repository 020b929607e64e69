"""Representation analyses of captured activations: similarity per layer and PCA trajectories.

For each capture run (a *source*) with a baseline and a trained side:

* ``layer`` view: per layer ``l`` (0 = embeddings .. L), baseline ``h[l]`` vs trained ``h[l]``
  under ``cka``, ``cka_debiased``, ``svcca`` (99% variance) and ``pwcca`` (weights from the
  baseline side), and beside them ``mutual_knn`` (shared 10 nearest neighbours) and
  ``procrustes`` (angular orthogonal Procrustes distance: 0 = a rotation of each other), see
  :mod:`psilonet.analysis.alignment`;
* ``head`` view: per layer and head, CKA (biased and debiased) of the attention heads;
* ``cross_layer`` view: CKA of every baseline layer against every trained layer (a baseline-
  only capture gets the baseline against itself);
* ``novelty`` view: mean / min / max of each per-layer metric over a chosen layer range
  (the "novelty window");
* PCA trajectories: one PCA (scikit-learn) fit on residual states pooled over all layers and
  both sides; each token's, and each sequence's mean-pooled, path through layers 0..L in 2-D.

Everything is computed and stored once per representation (``raw``, ``rms``, ``no-sink``: see
:mod:`psilonet.analysis.representation`), with the tokens ``no-sink`` dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from sklearn.decomposition import PCA

from psilonet import config as configs
from psilonet.analysis import alignment, representation, similarity
from psilonet.analysis.capture import ACTIVATIONS_FILE
from psilonet.files import parquet_problem
from psilonet.store import tables

LAYER_METRICS = ("cka", "cka_debiased", "svcca", "pwcca", *alignment.ALIGNMENT_METRICS)
HEAD_METRICS = ("cka", "cka_debiased")
PCA_COMPONENTS = 10
PCA_FIT_ROWS = 6000
TRAJECTORY_TOKENS = 24


class AnalysisError(ValueError):
    """An analysis that cannot run; the message names the option."""


@dataclass
class Source:
    """What one capture run holds."""

    run_id: str
    dataset: str
    sides: list[str]
    layers: int  # residual states h[0..L]: L + 1 of them
    heads: int


def parse_layer_range(text: str | None, num_states: int) -> tuple[int, int]:
    """'a-b' (inclusive) within 0..num_states-1; default: the middle third."""
    last = num_states - 1
    if text is None:
        return last // 3, 2 * last // 3
    if not text.strip():
        raise AnalysisError("layers: is empty; give a range like 10-20, or leave --layers out for the middle third")
    try:
        a, b = (int(x) for x in text.split("-", 1)) if "-" in text else (int(text),) * 2
    except ValueError as exc:
        raise AnalysisError(f"layers: expected a range like 10-20, got {text!r}") from exc
    if a > b and 0 <= b and a <= last:
        raise AnalysisError(f"layers: {text} is reversed; write the lower layer first ({b}-{a})")
    if not 0 <= a <= b <= last:
        raise AnalysisError(f"layers: {text} is outside the model's layers 0-{last} (0 = embeddings)")
    return a, b


def load_side(reader, side: str, source: Source) -> tuple[list[np.ndarray], np.ndarray]:
    """Residual states [h[0..L]] (n, D) each and heads (L, H, n, hd) of one side of a capture."""
    resid = reader.matrices(ACTIVATIONS_FILE, side, "resid")
    heads = reader.matrices(ACTIVATIONS_FILE, side, "head")
    return ([resid[(l, -1)] for l in range(source.layers)],
            np.stack([np.stack([heads[(l, h)] for h in range(source.heads)]) for l in range(source.layers - 1)]))


class SimilarityRow(NamedTuple):
    """One row of the ``similarity`` table (:data:`psilonet.store.tables.SIMILARITY`)."""

    source: str
    dataset: str
    view: str  # layer, head, cross_layer or novelty
    metric: str
    layer: int
    layer_b: int | None
    head: int | None
    value: float
    representation: str


def similarity_rows(source: Source, base_resid, base_heads, trained_resid, trained_heads, window,
                    representation_name: str = "raw", head_grids: dict | None = None) -> list[SimilarityRow]:
    """Every similarity number of one source, already in one representation, as store rows.

    ``head_grids`` (optional) caches per-head results by the identity of the head arrays, so
    that representations sharing their head outputs (``raw`` and ``rms``) compute them once.
    """
    rows = []
    tag = (source.run_id, source.dataset)

    def row(view, metric, layer, layer_b, head, value):
        return SimilarityRow(*tag, view, metric, layer, layer_b, head, value, representation_name)

    if trained_resid is None:  # a baseline-only capture: how layers relate to each other
        matrix = similarity.cka_matrix(base_resid, base_resid)
        return [row("cross_layer", "cka", i, j, None, v) for (i, j), v in np.ndenumerate(matrix)]
    per_metric = {m: [] for m in LAYER_METRICS}
    # Many mid-sized products and d x d eigendecompositions: one BLAS thread is steadier than
    # two on a shared machine (see similarity._numpy_blas_single_thread).
    with similarity._numpy_blas_single_thread():
        for l in range(source.layers):
            pair = (base_resid[l], trained_resid[l])
            for metric, value in {**similarity.paired_metrics(*pair), **alignment.alignment_metrics(*pair)}.items():
                per_metric[metric].append(value)
    for metric, values in per_metric.items():
        rows += [row("layer", metric, l, None, None, v) for l, v in enumerate(values)]
    key = (id(base_heads), id(trained_heads))
    grids = head_grids.get(key) if head_grids is not None else None
    if grids is None:
        grids = {m: similarity.per_head_cka(base_heads, trained_heads, debiased=m == "cka_debiased")
                 for m in HEAD_METRICS}
        if head_grids is not None:
            head_grids[key] = grids
    for metric, grid in grids.items():
        rows += [row("head", metric, l, None, h, v) for (l, h), v in np.ndenumerate(grid)]
    matrix = similarity.cka_matrix(base_resid, trained_resid)
    rows += [row("cross_layer", "cka", i, j, None, v) for (i, j), v in np.ndenumerate(matrix)]
    a, b = window
    for metric, values in per_metric.items():
        part = np.asarray(values[a : b + 1])
        for stat, v in (("mean", part.mean()), ("min", part.min()), ("max", part.max())):
            rows.append(row("novelty", f"{metric}:{stat}", a, b, None, float(v)))
    return rows


def trajectory_rows(source: Source, sides: dict[str, list[np.ndarray]], tokens, seed: int = 0,
                    representation_name: str = "raw"):
    """PCA fit on states pooled over layers and sides; token and sequence paths in 2-D.

    ``tokens`` are the capture tokens of the rows in ``sides`` (under ``no-sink``: without the
    dropped ones); paths keep the capture's token index as their id.
    """
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([np.concatenate(states) for states in sides.values()]).astype(np.float64)
    fit_rows = pooled[rng.choice(len(pooled), size=min(PCA_FIT_ROWS, len(pooled)), replace=False)]
    pca = PCA(n_components=min(PCA_COMPONENTS, *fit_rows.shape), random_state=seed).fit(fit_rows)
    rep = representation_name
    variance = [(source.run_id, c, float(r), rep) for c, r in enumerate(pca.explained_variance_ratio_)]
    tokens = tokens.reset_index(drop=True)
    n = len(tokens)
    shown = np.sort(rng.choice(n, size=min(TRAJECTORY_TOKENS, n), replace=False))
    seqs = sorted(tokens.seq.unique())
    openings = {s: "".join(tokens[tokens.seq == s].sort_values("pos").token_text.head(8))[:32] for s in seqs}
    rows = []
    for side, states in sides.items():
        for l, x in enumerate(states):
            xy = pca.transform(x[shown].astype(np.float64))[:, :2]
            for t, (p1, p2) in zip(shown, xy):
                label = f"{tokens.token_text.iloc[t]!r} (seq {tokens.seq.iloc[t]}, pos {tokens.pos.iloc[t]})"
                rows.append((source.run_id, side, "token", int(tokens.token_idx.iloc[t]), label, l, p1, p2, rep))
            means = np.stack([x[(tokens.seq == s).to_numpy()].mean(axis=0) for s in seqs]).astype(np.float64)
            for s, (p1, p2) in zip(seqs, pca.transform(means)[:, :2]):
                rows.append((source.run_id, side, "sequence", int(s), f"sequence {s}: {openings[s]!r}…", l, p1, p2, rep))
    return rows, variance


def sink_token_rows(source: Source, drop: np.ndarray, tokens, *resid_sides) -> list[tuple]:
    """Store rows describing the tokens the no-sink representation dropped from ``source``."""
    norms = [representation.token_norms(r) for r in resid_sides if r is not None]
    ratios = np.max([n / np.median(n, axis=1, keepdims=True) for n in norms], axis=0)  # (layers, n)
    rows = []
    for t in drop:
        over = np.flatnonzero(ratios[:, t] > representation.SINK_RATIO)
        tok = tokens.iloc[int(t)]
        rows.append((source.run_id, int(t), int(tok.seq), int(tok.pos), str(tok.token_text), int(over.min()),
                     int(over.max()), int(over.size), float(ratios[:, t].max())))
    return rows


def analyse_source(source: Source, base, trained, tokens, window, seed: int = 0):
    """Similarity rows, trajectory rows, variance rows and sink-token rows of one source under
    every representation (:data:`representation.REPRESENTATIONS`)."""
    base_resid, base_heads = base
    trained_resid, trained_heads = trained
    drop = representation.sink_tokens(base_resid, trained_resid)
    kept_tokens = tokens.drop(index=tokens.index[drop])
    sim, paths, variance, head_grids = [], [], [], {}
    for name in representation.REPRESENTATIONS:
        b_resid, b_heads = representation.transform(name, base_resid, base_heads, drop)
        t_resid, t_heads = (representation.transform(name, trained_resid, trained_heads, drop)
                            if trained_resid is not None else (None, None))
        sim += similarity_rows(source, b_resid, b_heads, t_resid, t_heads, window, name, head_grids)
        sides = {"baseline": b_resid, **({"trained": t_resid} if t_resid is not None else {})}
        p, v = trajectory_rows(source, sides, kept_tokens if name == "no-sink" else tokens, seed, name)
        paths += p
        variance += v
    return sim, paths, variance, sink_token_rows(source, drop, tokens, base_resid, trained_resid)


def load_source(store, run_id: str) -> Source:
    """What a complete capture run holds; AnalysisError naming it otherwise."""
    from psilonet.store import StoreError

    try:
        run = store.get_run(run_id)
    except StoreError as exc:
        raise AnalysisError(f"captures: {exc}") from exc
    if run["kind"] != "capture":
        hint = f"; capture it first: python -m jobs.capture --run {run_id}" if run["kind"] == "train" else ""
        raise AnalysisError(f"captures: {run_id} is a {run['kind']} run, not a capture{hint}")
    if run["state"] != "complete":
        why = f" ({run['error']})" if run["state"] == "missing" and run.get("error") else ""
        raise AnalysisError(f"captures: {run_id} is {run['state']}, not complete{why}")
    s = run["summary"]
    return Source(run_id, run["dataset"], s["sides"], s["layers"], s["heads"])


def run_analysis(store, captures: list[str], *, layers: str | None = None, seed: int = 0,
                 progress: bool = True, report=print) -> tuple[str, dict]:
    """Analyse capture runs side by side into one new analysis run; return (run_id, summary).

    The one library call behind ``jobs.analyze``. Every capture is checked first (complete,
    not repeated, all of one model) so that nothing is written for a bad request.
    """
    from tqdm import tqdm

    if not captures:
        raise AnalysisError("captures: give at least one capture run")
    repeated = sorted({c for c in captures if captures.count(c) > 1})
    if repeated:
        raise AnalysisError(f"captures: {repeated[0]} is given twice")
    try:
        configs.check_seed("seed", seed)
    except configs.ConfigError as exc:
        raise AnalysisError(str(exc)) from exc
    sources = [load_source(store, r) for r in captures]
    models = {store.get_run(s.run_id)["model"] for s in sources}
    if len(models) > 1:
        raise AnalysisError(f"captures: they come from different models ({', '.join(sorted(map(str, models)))}); "
                            "compare captures of one model")
    windows = {s.run_id: parse_layer_range(layers, s.layers) for s in sources}
    for s in sources:  # a damaged capture is refused before the analysis run exists
        path = store.run_dir(s.run_id) / ACTIVATIONS_FILE
        problem = parquet_problem(path)
        if problem:
            raise AnalysisError(f"captures: {path} {problem}; capture run {s.run_id} again")
    config = {"captures": captures, "layers": layers, "seed": seed}
    with store.begin_run("analysis", config=config, model=None,
                         dataset=" vs ".join(s.dataset for s in sources), parent=captures[0]) as writer:
        summary = {}
        for i, source in enumerate(tqdm(sources, desc="analyse", unit="capture", disable=not progress)):
            with store.open_run(source.run_id) as reader:
                base_resid, base_heads = load_side(reader, "baseline", source)
                trained = load_side(reader, "trained", source) if "trained" in source.sides else (None, None)
                tokens = reader.capture_tokens()
            rows, paths, variance, sinks = analyse_source(source, (base_resid, base_heads), trained, tokens,
                                                          windows[source.run_id], seed)
            writer.write_similarity(rows)
            writer.write_trajectories(paths, variance)
            writer.write_rows(tables.SINK_TOKENS, sinks)
            novelty = {(r.representation, r.metric): r.value for r in rows if r.view == "novelty"}
            summary[source.run_id] = {
                "dataset": source.dataset, "window": list(windows[source.run_id]), "sink_tokens": len(sinks),
                **{f"{rep}:{k}": round(v, 4) for (rep, k), v in novelty.items() if k.startswith("cka")}}
            writer.set_progress((i + 1) / len(sources))
            a, b = windows[source.run_id]
            for rep in representation.REPRESENTATIONS:
                if (rep, "cka:mean") in novelty:
                    report(f"{source.run_id} ({source.dataset}, {rep}): CKA baseline vs trained over layers "
                           f"{a}-{b}: mean {novelty[rep, 'cka:mean']:.3f}, min {novelty[rep, 'cka:min']:.3f}, "
                           f"max {novelty[rep, 'cka:max']:.3f}")
            report(f"{source.run_id}: no-sink dropped {len(sinks)} of {len(tokens)} tokens")
        writer.finish(summary)
    return writer.run_id, summary

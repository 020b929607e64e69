"""Representation analyses of captured activations (DESIGN §5 "Similarity", "PCA trajectories").

For each capture run (a *source*) with a baseline and a trained side:

* ``layer`` view: per layer ``l`` (0 = embeddings .. L), baseline ``h[l]`` vs trained ``h[l]``
  under ``cka``, ``cka_debiased``, ``svcca`` (99% variance) and ``pwcca`` (weights from the
  baseline side);
* ``head`` view: per layer and head, CKA (biased and debiased) of the attention heads;
* ``cross_layer`` view: CKA of every baseline layer against every trained layer (a baseline-
  only capture gets the baseline against itself);
* ``novelty`` view: mean / min / max of each per-layer metric over a chosen layer range
  (the "novelty window");
* PCA trajectories: one PCA (scikit-learn) fit on residual states pooled over all layers and
  both sides; each token's, and each sequence's mean-pooled, path through layers 0..L in 2-D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

from psilonet.analysis import similarity
from psilonet.analysis.capture import ACTIVATIONS_FILE

LAYER_METRICS = ("cka", "cka_debiased", "svcca", "pwcca")
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
    if not text:
        return last // 3, 2 * last // 3
    try:
        a, b = (int(x) for x in text.split("-", 1)) if "-" in text else (int(text),) * 2
    except ValueError as exc:
        raise AnalysisError(f"layers: expected a range like 10-20, got {text!r}") from exc
    if not 0 <= a <= b <= last:
        raise AnalysisError(f"layers: {text} is outside the model's layers 0-{last} (0 = embeddings)")
    return a, b


def _layer_metric(metric: str, x: np.ndarray, y: np.ndarray) -> float:
    if metric == "cka":
        return similarity.linear_cka(x, y)
    if metric == "cka_debiased":
        return similarity.linear_cka(x, y, debiased=True)
    if metric == "svcca":
        return similarity.svcca(x, y)
    return similarity.pwcca(x, y)


def load_side(reader, side: str, source: Source) -> tuple[list[np.ndarray], np.ndarray]:
    """Residual states [h[0..L]] (n, D) each and heads (L, H, n, hd) of one side of a capture."""
    resid = reader.matrices(ACTIVATIONS_FILE, side, "resid")
    heads = reader.matrices(ACTIVATIONS_FILE, side, "head")
    return ([resid[(l, -1)] for l in range(source.layers)],
            np.stack([np.stack([heads[(l, h)] for h in range(source.heads)]) for l in range(source.layers - 1)]))


def similarity_rows(source: Source, base_resid, base_heads, trained_resid, trained_heads, window) -> list[tuple]:
    """Every similarity number of one source as store rows."""
    rows = []
    tag = (source.run_id, source.dataset)
    if trained_resid is None:  # a baseline-only capture: how layers relate to each other
        matrix = similarity.cka_matrix(base_resid, base_resid)
        rows += [(*tag, "cross_layer", "cka", i, j, None, v) for (i, j), v in np.ndenumerate(matrix)]
        return rows
    per_metric = {}
    for metric in LAYER_METRICS:
        values = [_layer_metric(metric, base_resid[l], trained_resid[l]) for l in range(source.layers)]
        per_metric[metric] = values
        rows += [(*tag, "layer", metric, l, None, None, v) for l, v in enumerate(values)]
    for metric in HEAD_METRICS:
        grid = similarity.per_head_cka(base_heads, trained_heads, debiased=metric == "cka_debiased")
        rows += [(*tag, "head", metric, l, None, h, v) for (l, h), v in np.ndenumerate(grid)]
    matrix = similarity.cka_matrix(base_resid, trained_resid)
    rows += [(*tag, "cross_layer", "cka", i, j, None, v) for (i, j), v in np.ndenumerate(matrix)]
    a, b = window
    for metric, values in per_metric.items():
        part = np.asarray(values[a : b + 1])
        for stat, v in (("mean", part.mean()), ("min", part.min()), ("max", part.max())):
            rows.append((*tag, "novelty", f"{metric}:{stat}", a, b, None, float(v)))
    return rows


def trajectory_rows(source: Source, sides: dict[str, list[np.ndarray]], tokens, seed: int = 0):
    """PCA fit on states pooled over layers and sides; token and sequence paths in 2-D."""
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([np.concatenate(states) for states in sides.values()]).astype(np.float64)
    fit_rows = pooled[rng.choice(len(pooled), size=min(PCA_FIT_ROWS, len(pooled)), replace=False)]
    pca = PCA(n_components=min(PCA_COMPONENTS, *fit_rows.shape), random_state=seed).fit(fit_rows)
    variance = [(source.run_id, c, float(r)) for c, r in enumerate(pca.explained_variance_ratio_)]
    n = len(tokens)
    shown = np.sort(rng.choice(n, size=min(TRAJECTORY_TOKENS, n), replace=False))
    seqs = sorted(tokens.seq.unique())
    rows = []
    for side, states in sides.items():
        for l, x in enumerate(states):
            xy = pca.transform(x[shown].astype(np.float64))[:, :2]
            for t, (p1, p2) in zip(shown, xy):
                label = f"{tokens.token_text.iloc[t]!r} (seq {tokens.seq.iloc[t]}, pos {tokens.pos.iloc[t]})"
                rows.append((source.run_id, side, "token", int(t), label, l, p1, p2))
            means = np.stack([x[(tokens.seq == s).to_numpy()].mean(axis=0) for s in seqs]).astype(np.float64)
            for s, (p1, p2) in zip(seqs, pca.transform(means)[:, :2]):
                rows.append((source.run_id, side, "sequence", int(s), f"sequence {s}", l, p1, p2))
    return rows, variance

"""How much each bio-inspired mechanism costs the model's next-token prediction.

For every window of the chosen corpora, one batch holds the sober model and each mechanism at
each strength as its rows (the per-row strengths of :class:`psilonet.bio.Bio`), so every
configuration reads the very same tokens: the comparison with sober is paired by window.
Per window we record the mean next-token cross-entropy (nats) and the mean next-token entropy
(bits) of the predictions; per corpus, mechanism and strength the summary gives the mean
paired difference with sober and its Student-t 95% confidence interval over windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pandas as pd

import mlx.core as mx
import mlx.nn as nn

from psilonet import config, corpora
from psilonet.config import option
from psilonet.generation import bio
from psilonet.generation.entropy import token_entropy_bits
from psilonet.store import tables as T
from psilonet.training.stats import mean_ci

RESULT_COLUMNS = list(T.BIO_EVAL.names)  # corpus, window_idx, mechanism, strength, loss, entropy
SUMMARY_COLUMNS = ["corpus", "mechanism", "strength", "n", "loss", "entropy", "loss_diff", "loss_ci_low",
                   "loss_ci_high", "entropy_diff", "entropy_ci_low", "entropy_ci_high"]


@dataclass
class BioEvalConfig:
    """What one evaluation run measures (the flags of ``jobs.bio_eval``)."""

    corpora: list[str] = option(default_factory=lambda: list(corpora.OFFLINE_CORPORA),
                                help="corpora to read windows from")
    mechanisms: list[str] = option(default_factory=lambda: list(bio.MECHANISMS), choices=bio.MECHANISMS,
                                   help="mechanisms to measure")
    strengths: list[float] = option(default_factory=lambda: [0.25, 0.5, 1.0], above=0.0, max=bio.MAX_STRENGTH,
                                    help="strengths of each mechanism; sober (0) is always measured")
    windows: int = option(16, min=2, max=10_000, help="token windows per corpus")
    seq_len: int = option(128, min=8, max=4096, help="predicted tokens per window")
    seed: int = config.seed_option(0, help="which windows are drawn")

    def check(self) -> "BioEvalConfig":
        for name in ("corpora", "mechanisms", "strengths"):
            if not getattr(self, name):
                raise config.ConfigError(f"{name}: give at least one value")
        if 0 in self.strengths:
            raise config.ConfigError("strengths: 0 is the sober baseline, always measured; give strengths > 0")
        config.check(self)
        for name in self.corpora:
            try:
                corpora.check_name(name)
            except corpora.CorpusError as exc:
                raise config.ConfigError(f"corpora: {str(exc).removeprefix('dataset: ')}") from exc
        return self

    def rows(self) -> list[tuple[str, float]]:
        """(mechanism, strength) of every batch row, sober first."""
        return [("sober", 0.0)] + [(m, float(s)) for m in self.mechanisms for s in self.strengths]

    def to_dict(self) -> dict:
        return asdict(self)


def window_scores(model, window: np.ndarray, rows: list[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(loss nats, entropy bits) per row for one token window, every row reading it at its own strengths."""
    b = bio.Bio([s if m == "fatigue" else 0.0 for m, s in rows], [s if m == "hebbian" else 0.0 for m, s in rows],
                len(model.model.layers))
    tokens = mx.array(np.repeat(window[None, :], len(rows), axis=0))
    logits = bio.logits(model, tokens[:, :-1], bio=b)
    loss = nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="none").mean(axis=1)
    entropy = token_entropy_bits(logits).mean(axis=1)
    mx.eval(loss, entropy)
    return np.array(loss, dtype=np.float64), np.array(entropy, dtype=np.float64)


def evaluate(model, tokenizer, cfg: BioEvalConfig, *, data_dir=None,
             progress: Callable[[int, int], None] | None = None,
             on_window: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Per-window results (``RESULT_COLUMNS``) of every configuration on every corpus.

    ``progress(done, total)`` after each window; ``on_window(rows)`` receives each window's rows
    as they are measured (the job stores them as it goes).
    """
    bio.check_family(model)
    cfg.check()
    rows = cfg.rows()
    windows = {name: corpora.load_windows(tokenizer, name, seq_len=cfg.seq_len + 1, n_train=0, n_val=cfg.windows,
                                          seed=cfg.seed, data_dir=data_dir, counts="windows").val
               for name in cfg.corpora}
    total, done, frames = sum(len(w) for w in windows.values()), 0, []
    for name, wins in windows.items():
        for k, window in enumerate(wins):
            loss, entropy = window_scores(model, window, rows)
            frame = pd.DataFrame({"corpus": name, "window_idx": k, "mechanism": [m for m, _ in rows],
                                  "strength": [s for _, s in rows], "loss": loss, "entropy": entropy})
            frames.append(frame)
            if on_window is not None:
                on_window(frame)
            done += 1
            if progress is not None:
                progress(done, total)
    return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per corpus, mechanism and strength: means and the paired difference with sober (95% CI)."""
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    sober = results[results.mechanism == "sober"].set_index(["corpus", "window_idx"])
    out = []
    for (name, mech, strength), group in results.groupby(["corpus", "mechanism", "strength"], sort=False):
        g = group.set_index(["corpus", "window_idx"])
        base = sober.reindex(g.index)
        d_loss = (g.loss - base.loss).dropna()
        d_ent = (g.entropy - base.entropy).dropna()
        lm, _, llo, lhi = mean_ci(d_loss)
        em, _, elo, ehi = mean_ci(d_ent)
        out.append(dict(corpus=name, mechanism=mech, strength=float(strength), n=len(d_loss),
                        loss=float(g.loss.mean()), entropy=float(g.entropy.mean()), loss_diff=lm, loss_ci_low=llo,
                        loss_ci_high=lhi, entropy_diff=em, entropy_ci_low=elo, entropy_ci_high=ehi))
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)

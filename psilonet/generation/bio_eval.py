"""How much each bio-inspired mechanism costs the model's next-token prediction.

For every window of the chosen corpora, one batch holds the sober model and each mechanism at
each strength as its rows (the per-row strengths of :class:`psilonet.bio.Bio`), so every
configuration reads the very same tokens: the comparison with sober is paired by window.
Per window we record the mean next-token cross-entropy (nats) and the mean next-token entropy
(bits) of the predictions; per corpus, mechanism and strength the summary gives the mean
paired difference with sober and its Student-t 95% confidence interval over windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

import psilonet  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

from psilonet import corpora
from psilonet.generation import bio
from psilonet.generation.decoding import token_entropy_bits
from psilonet.store import tables as T
from psilonet.training.stats import mean_ci

RESULT_COLUMNS = list(T.BIO_EVAL.names)  # corpus, window_idx, mechanism, strength, loss, entropy
SUMMARY_COLUMNS = ["corpus", "mechanism", "strength", "n", "loss", "entropy", "loss_diff", "loss_ci_low",
                   "loss_ci_high", "entropy_diff", "entropy_ci_low", "entropy_ci_high"]


@dataclass
class BioEvalConfig:
    """What one evaluation run measures."""

    corpora: list[str] = field(default_factory=lambda: list(corpora.OFFLINE_CORPORA))
    mechanisms: list[str] = field(default_factory=lambda: list(bio.MECHANISMS))
    strengths: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    windows: int = 16  # per corpus
    seq_len: int = 128
    seed: int = 0  # which windows
    model: str = "default"

    def check(self) -> "BioEvalConfig":
        if not self.corpora:
            raise ValueError("corpora: give at least one")
        for name in self.corpora:
            corpora.check_name(name)
        unknown = set(self.mechanisms) - set(bio.MECHANISMS)
        if unknown or not self.mechanisms:
            raise ValueError(f"mechanisms: use one or more of {', '.join(bio.MECHANISMS)}, got {self.mechanisms}")
        if not self.strengths:
            raise ValueError("strengths: give at least one")
        for s in self.strengths:
            bio.check_strength(s, "strengths")
            if s == 0:
                raise ValueError("strengths: 0 is the sober baseline, always measured; give strengths > 0")
        if self.windows < 2:
            raise ValueError(f"windows: at least 2 for a confidence interval, got {self.windows}")
        if self.seq_len < 8:
            raise ValueError(f"seq_len: at least 8, got {self.seq_len}")
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
                                          seed=cfg.seed, data_dir=data_dir).val
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

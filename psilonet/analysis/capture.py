"""Activation capture: residual stream and attention heads of the baseline and a trained model.

On a fixed, seeded evaluation token set (``samples`` windows of ``seq_len`` tokens from a
corpus; windows are full, so no padding ever enters) one forward pass per batch returns every
capture point (:func:`psilonet.model.forward.run_with_cache`): ``hook_embed`` and
``blocks.{l}.hook_resid_post`` (stored as point ``resid``, layers 0..L where 0 is the
embeddings) and ``blocks.{l}.attn.hook_z`` (point ``head``, layers 0..L-1, one matrix per
head). At most ``max_tokens`` token positions are kept, drawn by a seeded sample and the same
for every layer, head and model, so that rows line up for similarity analyses.

Sides: ``baseline`` is the frozen base model; ``trained`` is the skip model of a training run
(its block attention heads are the base block's own heads computed on the skip model's stream).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psilonet  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import numpy as np
from tqdm import tqdm

from psilonet import corpora
from psilonet.model import forward

ACTIVATIONS_FILE = "activations.parquet"


class CaptureError(ValueError):
    """A capture that cannot run; the message names the option."""


@dataclass
class CaptureConfig:
    dataset: str = "python-docs"
    seq_len: int = 64
    samples: int = 48  # windows
    max_tokens: int = 2000  # kept token positions (per layer and head)
    seed: int = 0
    batch_size: int = 8

    def validate(self) -> "CaptureConfig":
        for name in ("seq_len", "samples", "max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise CaptureError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_tokens < 4:
            raise CaptureError(f"max_tokens: at least 4 tokens are needed for debiased CKA, got {self.max_tokens}")
        corpora.check_name(self.dataset)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def evaluation_windows(tokenizer, cfg: CaptureConfig, data_dir=None) -> np.ndarray:
    """The fixed evaluation windows (samples, seq_len) of the corpus for this seed."""
    return corpora.load_windows(tokenizer, cfg.dataset, seq_len=cfg.seq_len, n_train=0,
                                n_val=cfg.samples, seed=cfg.seed, data_dir=data_dir).val


def select_positions(n_windows: int, seq_len: int, max_tokens: int, seed: int) -> np.ndarray:
    """Sorted flat indices (window * seq_len + pos) of the kept tokens: a seeded sample."""
    total = n_windows * seq_len
    if total <= max_tokens:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=max_tokens, replace=False))


def capture_model(model, windows: np.ndarray, keep: np.ndarray, batch_size: int, *, progress: bool = True,
                  desc: str = "capture") -> tuple[np.ndarray, np.ndarray]:
    """``(resid (L+1, n, D), heads (L, H, n, hd))`` float32 for the kept token positions."""
    seq_len = windows.shape[1]
    resid_parts, head_parts = [], []
    starts = range(0, len(windows), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        batch = windows[start : start + batch_size]
        flat = keep[(keep >= start * seq_len) & (keep < (start + len(batch)) * seq_len)] - start * seq_len
        if flat.size == 0:
            continue
        rows, cols = mx.array(flat // seq_len), mx.array(flat % seq_len)
        heads: dict[int, mx.array] = {}
        states = forward.hidden_states(model, mx.array(batch), heads=heads)
        resid = mx.stack([s[rows, cols] for s in states])  # (L+1, k, D)
        z = mx.stack([heads[l].transpose(0, 2, 1, 3)[rows, cols] for l in range(len(heads))])  # (L, k, H, hd)
        mx.eval(resid, z)
        resid_parts.append(np.array(resid))
        head_parts.append(np.array(z).transpose(0, 2, 1, 3))
    return np.concatenate(resid_parts, axis=1), np.concatenate(head_parts, axis=2)


def matrix_records(side: str, resid: np.ndarray, heads: np.ndarray):
    """(side, point, layer, head, matrix) records for the store's Parquet writer."""
    for layer in range(resid.shape[0]):
        yield side, "resid", layer, -1, resid[layer]
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            yield side, "head", layer, head, heads[layer, head]


def token_rows(tokenizer, windows: np.ndarray, keep: np.ndarray) -> list[tuple[int, int, int, int, str]]:
    seq_len = windows.shape[1]
    rows = []
    for idx, flat in enumerate(keep):
        seq, pos = divmod(int(flat), seq_len)
        token = int(windows[seq, pos])
        rows.append((idx, seq, pos, token, tokenizer.decode([token])))
    return rows

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

The outlier diagnostic (:func:`psilonet.analysis.representation.norm_stat_rows`: token-norm
distribution per layer, the tokens above the outlier threshold and their top dimensions) is
computed from the captured residual states of each side and stored with the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from psilonet import config, corpora
from psilonet.config import ConfigError, option
from psilonet.analysis import capture_lens, representation
from psilonet.model import forward
from psilonet.store import tables

ACTIVATIONS_FILE = "activations.parquet"


class CaptureError(ConfigError):
    """A capture that cannot run; the message names the option."""


@dataclass
class CaptureConfig(config.Declared):
    error = CaptureError  # what from_dict and check_fields raise
    dataset: str = option("python-docs", help="corpus of the evaluation windows (as in training)")
    seq_len: int = option(64, min=2, help="tokens per window")
    samples: int = option(48, min=1, help="evaluation windows")
    max_tokens: int = option(2000, min=4, help="token positions kept (seeded sample; at least 4 for debiased CKA)")
    seed: int = config.seed_option(0, help="which windows and positions")
    batch_size: int = option(8, min=1)
    lens_positions: int = option(128, min=0, help="positions (from the first windows) of the stored lens and "
                                 "attention summaries; 0: none. About L+1 unembeddings each")
    grid_positions: int = option(32, min=0, max=128, help="positions of the first window in the stored "
                                 "layer x position lens grid and attention patterns")

    def validate(self) -> "CaptureConfig":
        self.check_fields()
        total = self.samples * self.seq_len
        if self.max_tokens > total:
            raise CaptureError(f"max_tokens: {self.max_tokens} is more than the {total} tokens of {self.samples} "
                               f"windows x {self.seq_len}; raise --samples or lower --max-tokens")
        corpora.check_name(self.dataset)
        return self



def evaluation_windows(tokenizer, cfg: CaptureConfig, data_dir=None) -> np.ndarray:
    """The fixed evaluation windows (samples, seq_len) of the corpus for this seed."""
    return corpora.load_windows(tokenizer, cfg.dataset, seq_len=cfg.seq_len, n_train=0,
                                n_val=cfg.samples, seed=cfg.seed, data_dir=data_dir, counts="samples").val


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
        _, cache = forward.run_with_cache(model, mx.array(batch), return_type=None)
        layers = range(forward.num_layers(model))
        resid = mx.stack([cache["hook_embed"][rows, cols]]
                         + [cache[f"blocks.{l}.hook_resid_post"][rows, cols] for l in layers])  # (L+1, k, D)
        z = mx.stack([cache[f"blocks.{l}.attn.hook_z"][rows, cols] for l in layers])  # (L, k, H, hd)
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


def store_summaries(writer, sides, windows: np.ndarray, tokenizer, cfg: CaptureConfig, progress: bool) -> None:
    """The corpus lens and attention summaries of each side (:mod:`psilonet.analysis.capture_lens`)."""
    n = capture_lens.summary_windows(len(windows), cfg.seq_len, cfg.lens_positions)
    if n == 0:
        return
    decode = lambda i: tokenizer.decode([i])
    patterns = []
    for side, m in tqdm(sides, desc="lens and attention summaries", unit="side", disable=not progress):
        out = capture_lens.summarise(side, m, windows[:n], decode, grid_positions=cfg.grid_positions)
        writer.write_rows(tables.LENS_SUMMARY, out["lens"])
        writer.write_rows(tables.ATTENTION_SUMMARY, out["attention"])
        writer.write_rows(tables.LENS_GRID, out["grid"])
        patterns += out["patterns"]
    if patterns:
        writer.write_matrices(capture_lens.PATTERNS_FILE, patterns)


def run_capture(store, cfg: CaptureConfig, *, train_run: str | None = None, model: str | None = None,
                data_dir=None, progress: bool = True) -> tuple[str, dict]:
    """Capture the baseline (and, with ``train_run``, its trained skip model) into a new run.

    The one library call behind ``jobs.capture``: checks, loads, captures side by side and
    publishes the run; returns (run_id, summary).
    """
    from psilonet.model import loading as modeling
    from psilonet.store import StoreError
    from psilonet.training import loop as training

    cfg.validate()
    corpora.check_available(cfg.dataset, data_dir)
    if train_run:
        try:
            run = store.get_run(train_run)
        except StoreError as exc:
            raise CaptureError(f"run: {exc}") from exc
        if run["kind"] != "train":
            raise CaptureError(f"run: {train_run} is a {run['kind']} run, not a training run")
        trained, tokenizer, train_cfg = training.load_trained(store, train_run, data_dir=data_dir)
        base, model_name = trained.base, train_cfg.model
    else:
        base, tokenizer = modeling.load_model(model, data_dir)
        trained, model_name = None, model or modeling.DEFAULT_MODEL
    windows = evaluation_windows(tokenizer, cfg, data_dir)
    keep = select_positions(len(windows), cfg.seq_len, cfg.max_tokens, cfg.seed)
    sides = [("baseline", base)] + ([("trained", trained)] if trained is not None else [])
    with store.begin_run("capture", config={**cfg.to_dict(), "train_run": train_run, "model": model_name},
                         model=model_name, dataset=cfg.dataset, parent=train_run) as writer:
        shapes: dict = {}

        def records():  # one side at a time, so only one side's activations are in memory
            for i, (side, m) in enumerate(sides):
                resid, heads = capture_model(m, windows, keep, cfg.batch_size, progress=progress,
                                             desc=f"capture {side}")
                shapes[side] = (resid.shape, heads.shape)
                diagnostic.append(representation.norm_stat_rows(side, resid))
                writer.set_progress((i + 1) / len(sides))
                yield from matrix_records(side, resid, heads)

        diagnostic: list = []
        writer.write_matrices(ACTIVATIONS_FILE, records())
        writer.write_capture_tokens(token_rows(tokenizer, windows, keep))
        store_summaries(writer, sides, windows, tokenizer, cfg, progress)
        for stats, outliers, dims in diagnostic:  # the outlier diagnostic: norms cost nothing here
            writer.write_rows(tables.NORM_STATS, stats)
            writer.write_rows(tables.NORM_OUTLIERS, outliers)
            writer.write_rows(tables.OUTLIER_DIMS, dims)
        resid_shape, head_shape = shapes["baseline"]
        summary = {"sides": [s for s, _ in sides], "tokens": int(len(keep)), "layers": resid_shape[0],
                   "lens_windows": capture_lens.summary_windows(len(windows), cfg.seq_len, cfg.lens_positions),
                   "heads": head_shape[1], "hidden": resid_shape[2], "head_dim": head_shape[3]}
        writer.finish(summary)
    return writer.run_id, summary

"""How the next token is chosen: the sampling config, one row's draw, and the rows' key streams.

Each row draws from its own random stream keyed by its seed (:class:`RowKeys`), so a row gives
the same tokens alone or inside a batch. The plain decode loop and the compiled step both choose
their tokens here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import mlx.core as mx

from psilonet import config
from psilonet.config import option


@dataclass
class SamplingConfig(config.Checked):
    """How the next token is chosen: ``temperature == 0`` is greedy."""

    temperature: float = option(0.0, min=0.0, help="0 = greedy")
    top_p: float = option(1.0, above=0.0, max=1.0, help="nucleus sampling mass")
    max_tokens: int = option(64, min=1, help="new tokens per continuation")
    seed: int = option(0, help="the random stream of the first row")


def sample(logits: mx.array, cfg: SamplingConfig, key: mx.array | None) -> mx.array:
    """Next token per row from last-position logits ``(B, V)``."""
    if cfg.temperature == 0:
        return mx.argmax(logits, axis=-1)
    logprobs = logits.astype(mx.float32) / cfg.temperature
    if cfg.top_p < 1.0:
        # Keep the smallest set of tokens whose probability mass reaches top_p.
        order = mx.argsort(-logprobs, axis=-1)
        sorted_logits = mx.take_along_axis(logprobs, order, axis=-1)
        probs = mx.softmax(sorted_logits, axis=-1)
        mass_before = mx.cumsum(probs, axis=-1) - probs
        sorted_logits = mx.where(mass_before < cfg.top_p, sorted_logits, -mx.inf)
        choice = mx.random.categorical(sorted_logits, key=key)
        return mx.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
    return mx.random.categorical(logprobs, key=key)


class RowKeys:
    """The rows' random streams: each draw splits every row's key, so row ``r`` sees the same
    sequence of keys whatever else is in the batch."""

    def __init__(self, cfg: SamplingConfig, seeds: Sequence[int]):
        self.cfg = cfg
        self.keys = [mx.random.key(s) for s in seeds]

    def choose(self, out: dict[str, mx.array]) -> mx.array:
        """The next token per row from a step's outputs: its greedy ``tokens`` where the step
        chose them already, else drawn from its ``logits`` (B, V) one row at a time."""
        if self.cfg.temperature == 0:
            return out["tokens"] if "tokens" in out else sample(out["logits"], self.cfg, None)
        splits = [mx.random.split(k) for k in self.keys]
        self.keys = [s[0] for s in splits]
        logits = out["logits"]
        return mx.concatenate([sample(logits[r : r + 1], self.cfg, splits[r][1]) for r in range(len(splits))])

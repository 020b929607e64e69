"""Language-model loss on token windows: the one number every comparison here rests on."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# A paragraph of ordinary English prose; the default model scores about 2.6 nats/token on it
# with the correct RoPE layout and about a nat more with llama.cpp's interleaved rows left in.
REFERENCE_PARAGRAPH = (
    "The Industrial Revolution began in Great Britain in the late eighteenth century and spread "
    "to continental Europe and North America during the nineteenth century. It marked a shift "
    "from hand production methods to machines, new chemical manufacturing and iron production "
    "processes, and the increasing use of steam power. Historians continue to debate the causes "
    "of the revolution, but most agree that the availability of coal, a growing population, and "
    "access to capital all played important roles."
)


def lm_loss(model, batch: mx.array) -> mx.array:
    """Mean next-token cross-entropy (nats) of a (B, T) batch, as a differentiable array."""
    logits = model(batch[:, :-1])
    return nn.losses.cross_entropy(logits, batch[:, 1:], reduction="mean")


def mean_token_loss(model, tokens, batch_size: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) over windows ``(B, T)`` or one sequence ``(T,)``,
    ``batch_size`` windows per forward pass (all at once by default). Windows have equal
    lengths, so the mean of batch means weighted by their sizes is the mean over all tokens."""
    windows = np.atleast_2d(np.asarray(tokens))
    step = batch_size or len(windows)
    total = 0.0
    for start in range(0, len(windows), step):
        batch = windows[start : start + step]
        total += lm_loss(model, mx.array(batch)).item() * len(batch)
    return total / len(windows)

"""The two entropies (bits) tracked per generated token.

* **next-token entropy**: of the softmax over the vocabulary, ``-sum p log2 p`` (0 when
  certain, at most ``log2(vocab)``);
* **hidden-state entropy**, per layer: of the state at the position that predicted the token,
  with ``p = h^2 / sum(h^2)`` over the hidden dimensions (at most ``log2(hidden)``, reached
  when the energy is spread evenly over all dimensions).
"""

from __future__ import annotations

import mlx.core as mx

from psilonet.kernels import qmm


def token_entropy_bits(logits: mx.array) -> mx.array:
    """Entropy (bits) of softmax(logits) over the last axis."""
    logp = logits.astype(mx.float32) - mx.logsumexp(logits.astype(mx.float32), axis=-1, keepdims=True)
    return -(mx.exp(logp) * logp).sum(axis=-1) / mx.log(mx.array(2.0))


def hidden_entropy_bits(h: mx.array) -> mx.array:
    """Entropy (bits) of ``p = h^2 / sum(h^2)`` over the last axis."""
    energy = h.astype(mx.float32) ** 2
    p = energy / mx.maximum(energy.sum(axis=-1, keepdims=True), 1e-30)
    return -(p * mx.log2(mx.maximum(p, 1e-30))).sum(axis=-1)


def step_entropies(logits: mx.array, states: list[mx.array]) -> dict[str, mx.array]:
    """``entropy`` (B,) of last-position ``logits`` (B, V) and ``layer_entropy`` (B, L+1) of each
    state's last position: what a tracked decode step reports.

    Both take the extension's one-primitive kernels where it is built: the next-token entropy
    (:func:`psilonet.kernels.qmm.token_entropy`: closer to a float64 reference than the float32
    graph, to about 1e-5 bits against 1e-4; MLX's graph of it was a quarter of a batched 4-bit
    step) and the hidden-state ones (:func:`psilonet.kernels.qmm.layer_entropies`: one node
    instead of about 70), else :func:`token_entropy_bits` and :func:`hidden_entropy_bits`."""
    fast = qmm.token_entropy(logits)
    layers = qmm.layer_entropies(states)
    if layers is None:
        layers = hidden_entropy_bits(mx.stack([s[:, -1, :] for s in states], axis=1))
    return {"entropy": token_entropy_bits(logits) if fast is None else fast, "layer_entropy": layers}

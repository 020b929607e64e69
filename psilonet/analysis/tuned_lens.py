"""The tuned lens (Belrose et al. 2023): one learned affine translator per layer before the head.

Where the logit lens reads ``h[l]`` with the model's own final norm and unembedding, the tuned
lens first maps it with ``T_l(h) = h + W_l h + b_l`` (one ``D x D`` matrix and bias per state
``l = 0..L-1``; the last state is read as it is). ``W_l`` and ``b_l`` start at zero, so the
untrained tuned lens *is* the logit lens, bit for bit. Training minimises, over token windows
of the frozen model (base or skip), the mean over layers and positions of
``KL(p_L || p_l^tuned)`` (nats), the same divergence the logit lens reports as ``kl_final``.
The model itself never changes: its states are computed once per batch without gradients.

``python -m jobs.tuned_lens`` trains one on an offline corpus and stores it as a run
(:data:`WEIGHTS_FILE` in the run's folder); ``python -m jobs.lens --lens tuned --tuned RUN`` reads it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from psilonet.analysis.lens import layer_logprobs
from psilonet.model import forward

WEIGHTS_FILE = "tuned_lens.safetensors"


class TunedLens(nn.Module):
    """Translators for states ``0..num_layers-1`` of a model with ``hidden`` features."""

    def __init__(self, num_layers: int, hidden: int):
        super().__init__()
        self.translators = []
        for _ in range(num_layers):
            t = nn.Linear(hidden, hidden)
            t.weight = mx.zeros((hidden, hidden))
            t.bias = mx.zeros((hidden,))
            self.translators.append(t)

    @classmethod
    def for_model(cls, model) -> "TunedLens":
        return cls(forward.num_layers(model), model.args.hidden_size)

    def translate(self, l: int, h: mx.array) -> mx.array:
        if l == len(self.translators):
            return h
        return h + self.translators[l](h)


def load(path, model) -> TunedLens:
    """The tuned lens saved at ``path`` for ``model``: ValueError if it was fitted to another shape."""
    lens = TunedLens.for_model(model)
    weights = mx.load(str(path))
    expected = dict(tree_flatten(lens.parameters()))
    if set(weights) != set(expected) or any(weights[k].shape != v.shape for k, v in expected.items()):
        raise ValueError("the lens was fitted to a model of another shape")
    lens.load_weights(list(weights.items()))
    return lens


def _kl_per_layer(model, lens: TunedLens | None, states: list[mx.array]) -> mx.array:
    """(L,) mean over rows and positions of ``KL(p_L || p_l)`` for ``l = 0..L-1``."""
    final = layer_logprobs(model, states[-1])
    p = mx.exp(final)
    out = []
    for l, h in enumerate(states[:-1]):
        lp = layer_logprobs(model, h if lens is None else lens.translate(l, h))
        out.append((p * (final - lp)).sum(axis=-1).mean())
    return mx.stack(out)


def _states(model, windows: np.ndarray) -> list[mx.array]:
    states = [mx.stop_gradient(s) for s in forward.hidden_states(model, mx.array(windows))]
    mx.eval(states)
    return states


def train(model, windows, *, steps: int = 100, batch: int = 4, lr: float = 1e-3, seed: int = 0,
          lens: TunedLens | None = None, progress=None) -> tuple[TunedLens, list[float]]:
    """A tuned lens fitted with Adam on ``windows`` (N, T) token ids; ``(lens, loss per step)``.

    Each step draws ``batch`` windows at random (numpy generator of ``seed``)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or len(windows) == 0:
        raise ValueError("windows: give a non-empty (N, T) array of token ids")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch: must be >= 1, got {steps} and {batch}")
    lens = lens if lens is not None else TunedLens.for_model(model)
    opt = optim.Adam(learning_rate=lr)
    rng = np.random.default_rng(seed)

    def loss_fn(lens, states):
        return _kl_per_layer(model, lens, states).mean()

    step = nn.value_and_grad(lens, loss_fn)
    history = []
    for i in range(steps):
        states = _states(model, windows[rng.integers(0, len(windows), min(batch, len(windows)))])
        loss, grads = step(lens, states)
        opt.update(lens, grads)
        mx.eval(lens.parameters(), opt.state, loss)
        history.append(float(loss))
        if progress is not None:
            progress(i + 1, steps)
    return lens, history


def held_out_kl(model, lens: TunedLens, windows, batch: int = 4) -> dict[str, np.ndarray]:
    """Per layer ``0..L-1``, the mean ``KL(p_L || p_l)`` (nats) over ``windows`` for the logit
    lens (``logit``) and the tuned lens (``tuned``)."""
    windows = np.asarray(windows)
    logit, tuned, n = 0.0, 0.0, 0
    for i in range(0, len(windows), batch):
        part = windows[i : i + batch]
        states = _states(model, part)
        logit = logit + np.array(_kl_per_layer(model, None, states)) * len(part)
        tuned = tuned + np.array(_kl_per_layer(model, lens, states)) * len(part)
        n += len(part)
    return {"logit": logit / n, "tuned": tuned / n}

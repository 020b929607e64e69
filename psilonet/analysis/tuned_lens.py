"""The tuned lens (Belrose et al. 2023): one learned affine translator per layer before the head.

Where the logit lens reads ``h[l]`` with the model's own final norm and unembedding, the tuned
lens first maps it with ``T_l(h) = h + W_l h + b_l`` (one ``D x D`` matrix and bias per state
``l = 0..L-1``; the last state is read as it is). ``W_l`` and ``b_l`` start at zero, so the
untrained tuned lens *is* the logit lens, bit for bit. Training minimises, over token windows
of the frozen model (base or skip), the mean over layers and positions of
``KL(p_L || p_l^tuned)`` (nats), the same divergence the logit lens reports as ``kl_final``.
The model itself never changes: its states are computed once per batch without gradients.
:func:`train` can start the translators from a closed-form ridge fit of the final state on
each layer's state instead of zero (``init="lstsq"``); on the default model that start alone
is closer to the final read-out than the logit lens at every layer on held-out windows
(README, "Findings"), which 30 Adam steps from zero were not.

``python -m jobs.tuned_lens`` trains one on an offline corpus and stores it as a run
(:data:`WEIGHTS_FILE` in the run's folder); ``python -m jobs.lens --lens tuned --tuned RUN`` reads it.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from psilonet.analysis.lens import layer_logprobs, logit_lens
from psilonet.model import forward

WEIGHTS_FILE = "tuned_lens.safetensors"
INITS = ("zero", "lstsq")


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


def _fit_to_final(model, windows: np.ndarray, ridge: float, batch: int) -> TunedLens:
    """Translators fitted in closed form: per state ``l``, ridge regression of the final state,
    rescaled to ``h[l]``'s RMS (the final norm ignores the scale), on ``h[l]`` and a constant.

    The regression solves for ``W_l`` and ``b_l`` in ``h + W_l h + b_l`` and shrinks them
    towards zero (the logit lens) with the penalty ``ridge`` times the mean squared state; it
    needs only forward passes, no unembedding, so it costs about one capture of the windows."""
    lens = TunedLens.for_model(model)
    L = len(lens.translators)
    dim = model.args.hidden_size
    gram = np.zeros((L, dim + 1, dim + 1))
    cross = np.zeros((L, dim + 1, dim))
    for i in range(0, len(windows), batch):
        states = [np.array(s, dtype=np.float64).reshape(-1, dim) for s in _states(model, windows[i : i + batch])]
        final = states[-1]
        final_rms = np.sqrt((final ** 2).mean(axis=1, keepdims=True))
        for l, h in enumerate(states[:-1]):
            x = np.concatenate([h, np.ones((len(h), 1))], axis=1)
            target = final * (np.sqrt((h ** 2).mean(axis=1, keepdims=True)) / final_rms) - h
            gram[l] += x.T @ x
            cross[l] += x.T @ target
    for l in range(L):
        penalty = ridge * np.trace(gram[l][:dim, :dim]) / dim * np.eye(dim + 1)
        penalty[dim, dim] = 0.0  # the bias is not shrunk
        solution = np.linalg.solve(gram[l] + penalty, cross[l])
        lens.translators[l].weight = mx.array(solution[:dim].T.astype(np.float32))
        lens.translators[l].bias = mx.array(solution[dim].astype(np.float32))
    return lens


def train(model, windows, *, steps: int = 100, batch: int = 4, lr: float = 1e-3, seed: int = 0,
          lens: TunedLens | None = None, init: str = "zero", ridge: float = 1e-2,
          progress=None) -> tuple[TunedLens, list[float]]:
    """A tuned lens fitted with Adam on ``windows`` (N, T) token ids; ``(lens, loss per step)``.

    ``init="zero"`` starts every translator at zero (the logit lens); ``init="lstsq"`` starts
    from :func:`_fit_to_final` (ridge ``ridge``) on the same windows, which the KL steps then
    refine. Each step draws ``batch`` windows at random (numpy generator of ``seed``)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or len(windows) == 0:
        raise ValueError("windows: give a non-empty (N, T) array of token ids")
    if steps < 0 or batch < 1:
        raise ValueError(f"steps and batch: must be >= 0 and >= 1, got {steps} and {batch}")
    if init not in INITS:
        raise ValueError(f"init: one of {', '.join(INITS)}, got {init!r}")
    if lens is None:
        lens = _fit_to_final(model, windows, ridge, batch) if init == "lstsq" else TunedLens.for_model(model)
    opt = optim.Adam(learning_rate=lr)
    rng = np.random.default_rng(seed)

    def loss_fn(lens, states):
        return _kl_per_layer(model, lens, states).mean()

    value_and_grad = nn.value_and_grad(lens, loss_fn)
    state = [lens.state, opt.state]

    # Compiled, the log-softmax and KL of every layer run as fused kernels: about half the time
    # of a step here.
    @partial(mx.compile, inputs=state, outputs=state)
    def step(states):
        loss, grads = value_and_grad(lens, states)
        opt.update(lens, grads)
        return loss

    history = []
    for i in range(steps):
        states = _states(model, windows[rng.integers(0, len(windows), min(batch, len(windows)))])
        loss = step(states)
        mx.eval(state, loss)
        history.append(float(loss))
        if progress is not None:
            progress(i + 1, steps)
    return lens, history


def held_out_kl(model, lens: TunedLens, windows, batch: int = 4) -> dict[str, np.ndarray]:
    """Per layer ``0..L-1``, the mean ``KL(p_L || p_l)`` (nats) over ``windows`` for the logit
    lens (``logit``) and the tuned lens (``tuned``): the lens's ``kl_final``, averaged over rows
    and positions."""
    windows = np.asarray(windows)
    logit, tuned, n = 0.0, 0.0, 0
    for i in range(0, len(windows), batch):
        part = windows[i : i + batch]
        logit = logit + logit_lens(model, part, top_k=1).kl_final[:, :-1].mean(axis=(0, 2)) * len(part)
        tuned = tuned + logit_lens(model, part, top_k=1, tuned=lens).kl_final[:, :-1].mean(axis=(0, 2)) * len(part)
        n += len(part)
    return {"logit": logit / n, "tuned": tuned / n}

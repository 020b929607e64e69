"""Steering vectors: a fifth mechanism beside the four entropic doses.

A steering vector is the **difference of means** of residual states between two prompt sets
(in the style of ActAdd and contrastive activation addition): with ``h[l+1]`` the output of
block ``l`` (where doses act too),

    v = mean over every token of every prompt in A of h[l+1]  -  the same mean over B,

read teacher-forced on the raw text of each prompt (no chat template). The sets can be two
files of prompts, two corpora's windows, or two single prompts. While decoding, each row adds
``s * v`` to the output of each chosen block, ``s`` the row's strength, so several strengths
decode in one batch (one row each), beside or on top of an entropic dose. A row with ``s = 0``
takes ``h`` itself (selected per row, not ``h + 0 * v``), so it is the sober row bit for bit;
the vector is the same for every row, so a row's result does not depend on its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from psilonet.generation.decode_step import RowHook
from psilonet.generation.entropy import token_entropy_bits
from psilonet.generation.perturb import Doser
from psilonet.model import forward

MAX_STRENGTH = 64.0
CORPUS_WINDOWS, CORPUS_TOKENS = 16, 64  # a corpus as a prompt set: this many windows of this many tokens
VECTOR_KINDS = ("dose", "steering")  # runs that store a vector (jobs.dose with --steer-*, jobs.steer)


class SteeringError(ValueError):
    """A steering vector that cannot be built or used; the message names the option."""


def states_at(model, token_lists: Sequence[Sequence[int]], layer: int) -> np.ndarray:
    """``h[layer + 1]`` of every token of every sequence, stacked ``(tokens, D)`` (float32)."""
    n = forward.num_layers(model)
    if not 0 <= layer < n:
        raise SteeringError(f"layer: {layer} is out of range (the model has layers 0..{n - 1})")
    out = []
    for ids in token_lists:
        if len(ids):
            h = forward.hidden_states(model, mx.array([list(ids)]))[layer + 1][0]
            out.append(np.array(h.astype(mx.float32)))
    return np.concatenate(out) if out else np.zeros((0, model.args.hidden_size), np.float32)


def difference_of_means(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("A", "B")) -> np.ndarray:
    """``mean(a) - mean(b)`` over rows of two ``(n, D)`` state matrices of the same width."""
    for m, name in zip((a, b), names):
        if m.ndim != 2 or m.shape[0] == 0:
            raise SteeringError(f"prompts {name}: the set is empty (no prompt with a token in it)")
    if a.shape[1] != b.shape[1]:
        raise SteeringError(f"prompts: the two sets give states of different widths ({a.shape[1]} and "
                            f"{b.shape[1]}); take both from the same model and layer")
    return (a.astype(np.float64).mean(axis=0) - b.astype(np.float64).mean(axis=0)).astype(np.float32)


def steering_vector(model, tokenizer, positive: Sequence[str], negative: Sequence[str], layer: int) -> np.ndarray:
    """The difference of means at ``layer`` between two prompt sets (lists of texts)."""
    enc = lambda texts: [tokenizer.encode(t) for t in texts if t.strip()]
    pos, neg = enc(positive), enc(negative)
    for ids, name in ((pos, "A"), (neg, "B")):
        if not ids:
            raise SteeringError(f"prompts {name}: the set is empty (give at least one non-empty prompt)")
    return difference_of_means(states_at(model, pos, layer), states_at(model, neg, layer))


def corpus_texts(tokenizer, corpus: str, *, seed: int, data_dir) -> list[str]:
    """A corpus as a prompt set: :data:`CORPUS_WINDOWS` held-out windows of :data:`CORPUS_TOKENS`
    tokens (split ``seed``), decoded to text."""
    from psilonet import corpora

    wins = corpora.load_windows(tokenizer, corpus, seq_len=CORPUS_TOKENS, n_train=0, n_val=CORPUS_WINDOWS,
                                seed=seed, data_dir=data_dir).val
    return [tokenizer.decode(list(w)) for w in wins]


def stored_vector(store, run_id: str) -> tuple[int, np.ndarray]:
    """``(layer, vector)`` a dose or steering run stored (read at ``layer``, float32 ``(D,)``);
    an unknown run, another kind or a run without a vector is a :class:`SteeringError`."""
    from psilonet.store import StoreError

    try:
        run = store.get_run(run_id)
    except StoreError as exc:
        raise SteeringError(f"run: {exc}") from None
    if run["kind"] not in VECTOR_KINDS:
        raise SteeringError(f"run: {run_id} is a {run['kind']} run; a steering vector comes from a steering run "
                            "or a dose run with steering rows")
    if run["status"] != "complete":
        raise SteeringError(f"run: {run_id} is {run['status']}, not complete")
    with store.open_run(run_id) as reader:
        rows = reader.steering_vector()
    if rows.empty or rows.layer.nunique() != 1:
        raise SteeringError(f"run: {run_id} stored no steering vector")
    return int(rows.layer.iloc[0]), rows.sort_values("dim").value.to_numpy(np.float32)


def check_vector(vector: np.ndarray, model, layers: Sequence[int]) -> np.ndarray:
    """The vector as float32 ``(D,)`` matching the model's width; ``layers`` in range."""
    v = np.asarray(vector, dtype=np.float32)
    width = model.args.hidden_size
    if v.ndim != 1 or v.shape[0] != width:
        raise SteeringError(f"vector: has {v.shape[-1] if v.ndim else 0} dimensions, the model's residual stream "
                            f"has {width}")
    if not np.isfinite(v).all():
        raise SteeringError("vector: contains NaN or inf")
    n = forward.num_layers(model)
    if not layers:
        raise SteeringError("layers: give at least one layer to steer")
    bad = [l for l in layers if not 0 <= l < n]
    if bad:
        raise SteeringError(f"layers: {bad[0]} is out of range (the model has layers 0..{n - 1})")
    return v


def check_strengths(strengths: Sequence[float]) -> list[float]:
    out = [float(s) for s in strengths]
    if not out:
        raise SteeringError("strengths: give at least one")
    bad = [s for s in out if not -MAX_STRENGTH <= s <= MAX_STRENGTH]  # NaN fails too
    if bad:
        raise SteeringError(f"strengths: each must be in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], got {bad[0]:g}")
    return out


@dataclass(frozen=True)
class Steering:
    """A checked steering vector read at ``layer``, added after ``add_layers`` at each of
    ``strengths``: what ``jobs.dose`` crosses with a dose config's rows (one row per strength)."""

    vector: np.ndarray
    layer: int
    add_layers: tuple[int, ...]
    strengths: tuple[float, ...]

    def rows(self, n: int) -> list[float]:
        """Per-row strengths of ``n`` dose rows each taken at every strength (strengths fastest)."""
        return [s for _ in range(n) for s in self.strengths]

    def wrap(self, row_strengths: list[float]):
        """The ``wrap_doser`` hook of :func:`psilonet.generation.dosing.generate_doses`."""
        return lambda doser: SteeredDoser(doser, self.vector, list(self.add_layers), row_strengths)


@dataclass
class SteeredDoser:
    """A :class:`~psilonet.generation.perturb.Doser` with a steering vector added after it, per row:
    what :func:`psilonet.generation.decoding.decode` takes as its ``doser`` (plain loop and
    compiled step alike). ``strengths`` has one entry per row of ``dose``."""

    dose: Doser
    vector: np.ndarray
    layers: list[int]
    strengths: list[float]
    _s: mx.array = field(init=False, repr=False)

    def __post_init__(self):
        self.strengths = check_strengths(self.strengths)
        if len(self.strengths) != len(self.dose.intensities):
            raise SteeringError(f"strengths: one per row ({len(self.dose.intensities)}), got {len(self.strengths)}")
        self._s = mx.array(self.strengths, dtype=mx.float32)[:, None, None]
        self._v = mx.array(np.asarray(self.vector, dtype=np.float32))[None, None, :]
        self._layers = frozenset(self.layers)

    @property
    def intensities(self) -> list[float]:
        return self.dose.intensities

    @property
    def sober(self) -> bool:
        return self.dose.sober and all(s == 0 for s in self.strengths)

    def at_step(self, step: int) -> "SteeredDoser":
        self.dose.at_step(step)
        return self

    def _steer(self, layer: int, h: mx.array, s: mx.array, v: mx.array) -> mx.array:
        if layer not in self._layers:
            return h
        return mx.where(s == 0, h, h + (s * v).astype(h.dtype))

    def __call__(self, layer: int, h: mx.array) -> mx.array:
        return self._steer(layer, self.dose(layer, h), self._s, self._v)

    def hook(self):
        """The compiled step's :class:`~psilonet.generation.decode_step.RowHook`: the dose's, then the vector."""
        inner = None if self.dose.sober else self.dose.hook()

        def after_block(layer: int, h: mx.array, rows: dict):
            updates = {}
            if inner is not None:
                h, updates = inner.after_block(layer, h, rows)
            return self._steer(layer, h, rows["steer_s"], rows["steer_v"]), updates

        rows = {**(inner.rows if inner is not None else {}), "steer_s": self._s,
                "steer_v": mx.broadcast_to(self._v, (len(self.strengths), 1, self._v.shape[-1]))}
        key = ("steer", inner.key if inner is not None else None, tuple(sorted(self._layers)))
        return RowHook(key, rows, after_block, inner.step_inputs if inner is not None else (lambda step: {}))


def cost(model, windows: np.ndarray, vector: np.ndarray, layers: Sequence[int], strengths: Sequence[float],
         intensities: Sequence[float], *, seed: int = 0) -> list[tuple[str, float, float, float]]:
    """Teacher-forced cost on token ``windows`` (n, T): ``(mechanism, strength, loss nats, entropy
    bits)`` per steering strength (``steer``, no dose) and per dose intensity (``dose``, no
    steering), mean over windows; every row of a window is one row of the same batch."""


    strengths, intensities = list(strengths), list(intensities)
    rows = len(strengths) + len(intensities)
    loss, entropy = np.zeros(rows), np.zeros(rows)
    for window in windows:
        doser = SteeredDoser(Doser([0.0] * len(strengths) + intensities, [seed] * rows, forward.num_layers(model),
                                   model.args.hidden_size), vector, list(layers), strengths + [0.0] * len(intensities))
        tokens = mx.array(np.repeat(np.asarray(window)[None], rows, axis=0))
        logits, _ = forward.forward(model, tokens[:, :-1], hooks=forward.Hooks(after_block=doser.at_step(0)))
        ce = nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="none").mean(axis=1)
        ent = token_entropy_bits(logits).mean(axis=1)
        mx.eval(ce, ent)
        loss += np.array(ce, dtype=np.float64)
        entropy += np.array(ent, dtype=np.float64)
    n = max(len(windows), 1)
    labels = [("steer", s) for s in strengths] + [("dose", i) for i in intensities]
    return [(m, float(s), float(l / n), float(e / n)) for (m, s), l, e in zip(labels, loss, entropy)]

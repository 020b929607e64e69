"""Where a dose does its damage: activation patching between a sober row and its dosed twin.

For one prompt (teacher-forced, every row reads the same tokens), one batch holds:

* the **sober** row (no mechanism anywhere) and the **dosed** row (the mechanism at every block,
  the row's seed: the same random numbers in every dosed row);
* per block ``l`` a **restore** row: dosed everywhere, but its residual stream after block ``l``
  is replaced by the sober row's (at every position, or at one position only), so the later
  blocks see the sober state there (and are dosed again);
* per block ``l`` an **inject** row: the mechanism at block ``l`` only.

With ``p_s``, ``p_d`` and ``p`` the next-token distributions at the last position of the sober,
dosed and patched rows and ``KL(p_s || p)`` in nats:

* ``restored(l) = 1 - KL(p_s || p_restore_l) / KL(p_s || p_d)``: the fraction of the dose's change
  that restoring block ``l``'s output removes (1: all of it, 0: none, < 0: restoring there
  makes it worse);
* ``injected(l) = KL(p_s || p_inject_l) / KL(p_s || p_d)``: how much of the full change the
  mechanism at block ``l`` alone produces.

The mechanisms: an entropic dose (:class:`~psilonet.generation.perturb.Doser`, acting on block
outputs), synaptic fatigue (attention cores) or Hebbian fast weights (MLP branches) of
:mod:`psilonet.generation.bio`, each switched on per row and block. Restoring every block gives
the sober row's distribution bit for bit (the sober state is copied, and each row's LM head is
computed alone); restoring none is the dosed row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import scaled_dot_product_attention

from psilonet.generation import bio as bio_mod
from psilonet.generation.perturb import DoseSpec, Doser, check_intensity
from psilonet.model import forward

MECHANISMS = ("dose", "fatigue", "hebbian")


class PatchError(ValueError):
    """A patching request that cannot run; the message names the option."""


@dataclass(frozen=True)
class Plan:
    """One row: the blocks where the mechanism acts, the blocks after which the residual is the
    sober row's, and at which position (None: every position)."""

    dosed: frozenset = field(default_factory=frozenset)
    restored: frozenset = field(default_factory=frozenset)
    position: int | None = None


def profile_plans(num_layers: int, position: int | None = None) -> list[Plan]:
    """Sober, dosed, then one restore row and one inject row per block."""
    every = frozenset(range(num_layers))
    return ([Plan(), Plan(every)] + [Plan(every, frozenset([l]), position) for l in range(num_layers)]
            + [Plan(frozenset([l])) for l in range(num_layers)])


def _on(plans: list[Plan], l: int) -> mx.array:
    return mx.array([l in p.dosed for p in plans])


def mechanism_hooks(model, mechanism: str, strength: float, plans: list[Plan], *, seed: int = 0,
                    spec: DoseSpec = DoseSpec()) -> forward.Hooks:
    """Hooks that run ``mechanism`` at ``strength`` in each row at that row's dosed blocks."""
    n, layers = len(plans), forward.num_layers(model)
    if mechanism == "dose":
        check_intensity(strength)
        doser = Doser([strength] * n, [seed] * n, layers, model.args.hidden_size, spec).at_step(0)

        def after_block(l, h):
            on = _on(plans, l)
            return mx.where(on[:, None, None], doser(l, h), h) if any(l in p.dosed for p in plans) else h

        return forward.Hooks(after_block=after_block)
    if mechanism not in MECHANISMS:
        raise PatchError(f"mechanism: one of {', '.join(MECHANISMS)}, got {mechanism!r}")
    bio_mod.check_strength(strength, mechanism)
    bio_mod.check_family(model)
    s = [strength] * n
    bio = bio_mod.Bio(s if mechanism == "fatigue" else [0.0] * n, s if mechanism == "hebbian" else [0.0] * n, layers)

    def attention(l, q, k, v, scale, mask, cache):
        plain = scaled_dot_product_attention(q, k, v, cache=cache, scale=scale, mask=mask)
        if not any(l in p.dosed for p in plans):
            return plain
        return mx.where(_on(plans, l)[:, None, None, None], bio.attention(l, q, k, v, scale, mask, cache), plain)

    def mlp(l, layer, h, cache):
        plain = layer.mlp(layer.post_attention_layernorm(h))
        if not any(l in p.dosed for p in plans):
            return plain
        return mx.where(_on(plans, l)[:, None, None], bio.mlp(l, layer, h, cache), plain)

    if mechanism == "fatigue":
        return forward.Hooks(attention=attention)
    return forward.Hooks(mlp=mlp)


def patched_logits(model, tokens: list[int] | np.ndarray, plans: list[Plan], mechanism: str = "dose",
                   strength: float = 0.2, *, seed: int = 0, spec: DoseSpec = DoseSpec()) -> mx.array:
    """Next-token logits (rows, V) at the last position of every plan's row, in one forward.

    ``plans[0]`` must be the sober row (nothing dosed, nothing restored): restores copy its state.
    """
    if not plans or plans[0] != Plan():
        raise PatchError("plans: the first row must be the sober one")
    t = len(tokens)
    if t < 1:
        raise PatchError("prompt: no tokens")
    for p in plans:
        if p.position is not None and not -t <= p.position < t:
            raise PatchError(f"position: {p.position} is outside the prompt's {t} tokens")
    layers = forward.num_layers(model)
    bad = sorted(l for p in plans for l in p.dosed | p.restored if not 0 <= l < layers)
    if bad:
        raise PatchError(f"layer: {bad[0]} is out of range (the model has layers 0..{layers - 1})")
    hooks = mechanism_hooks(model, mechanism, strength, plans, seed=seed, spec=spec)
    dose_after = hooks.after_block

    def after_block(l, h):
        if dose_after is not None:
            h = dose_after(l, h)
        rows = [r for r, p in enumerate(plans) if l in p.restored]
        if not rows:
            return h
        where = np.zeros((len(plans), t, 1), bool)
        for r in rows:
            pos = plans[r].position
            where[r, slice(None) if pos is None else pos] = True
        return mx.where(mx.array(where), h[:1], h)

    hooks.after_block = after_block
    batch = mx.array(np.repeat(np.asarray(tokens)[None, :], len(plans), axis=0))
    last = forward.hidden_states(model, batch, hooks=hooks)[-1][:, -1:, :]
    # One row at a time through the head: equal states give equal logits, bit for bit.
    return mx.concatenate([forward.logits_from(model, last[r : r + 1])[:, 0] for r in range(len(plans))])


def kl(p_logits: mx.array, q_logits: mx.array) -> np.ndarray:
    """KL(p || q) in nats per row, from logits (float64)."""
    p = np.asarray(p_logits, dtype=np.float64)
    q = np.asarray(q_logits, dtype=np.float64)
    lp = p - np.logaddexp.reduce(p, axis=-1, keepdims=True)
    lq = q - np.logaddexp.reduce(q, axis=-1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def profile(model, tokens, mechanism: str = "dose", strength: float = 0.2, *, seed: int = 0,
            position: int | None = None, spec: DoseSpec = DoseSpec()) -> list[dict]:
    """One dict per block: ``layer``, ``restored``, ``injected`` (see the module docstring), plus
    ``kl_restored``, ``kl_injected`` and the whole dose's ``kl_dosed`` (nats)."""
    layers = forward.num_layers(model)
    if strength <= 0:
        raise PatchError(f"intensity: must be > 0 to have a change to patch, got {strength}")
    logits = patched_logits(model, tokens, profile_plans(layers, position), mechanism, strength, seed=seed, spec=spec)
    d = kl(logits[:1], logits)
    total = float(d[1])
    if total <= 0:
        raise PatchError(f"intensity: {strength:g} leaves the next-token distribution unchanged; nothing to patch")
    restore, inject = d[2 : 2 + layers], d[2 + layers :]
    return [dict(layer=l, restored=float(1 - restore[l] / total), injected=float(inject[l] / total),
                 kl_restored=float(restore[l]), kl_injected=float(inject[l]), kl_dosed=total)
            for l in range(layers)]

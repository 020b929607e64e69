"""Bio-inspired interventions: synaptic fatigue in attention and Hebbian fast weights.

Both change a pretrained model while it reads, per batch row, so several strengths decode in
one batch like the doses, a row's result does not depend on its neighbours, and strength 0
leaves the row bit-for-bit sober (those rows take the unmodified computation, selected per
row, not an arithmetic identity that rounding could break).

**Synaptic fatigue** (presynaptic vesicle depletion, per attention head). Every head keeps,
per row and key position ``j``, a readily-releasable pool ``r_j`` in [0, 1] that starts at 1
when key ``j`` enters. At every query step the logits get

    z_j = q.k_j / sqrt(d) + s * log(max(r_j, eps))

before the softmax (``s`` the row's strength), and then, with ``p`` the probabilities after
fatigue, the pool is used and recovers:

    r_j <- clip(r_j - k_use * p_j + (1 - r_j) / tau_rrp, 0, 1)

* ``tau_rrp = 40`` steps (the original work's refill time constant): a key no longer attended
  closes ``1/40`` of its deficit per step, ``1 - r`` shrinks by ``(1 - 1/40)`` per step
  (half-life about 27 tokens).
* ``k_use = 0.1`` (our choice): a key taking all of a head's attention for one step loses a
  tenth of its pool; at ``s = 0`` a key held at probability ``p`` settles at
  ``r = max(0, 1 - tau_rrp * k_use * p)``, so only keys a head keeps giving more than a
  quarter of its attention empty their pool, and diffuse heads barely tire.
* ``eps = 1e-3``: an empty pool lowers a logit by at most ``s * 6.9`` nats.
During a prompt (prefill) the pool evolves causally over query positions: a scan, query
``t`` sees the pool left by queries ``0..t-1``. During decoding the pool is part of the
cache state (:class:`Bio` keeps it per layer next to the KV cache).

**Hebbian fast weights** (postsynaptic consolidation, per block, low rank). Every block keeps
a fast weight over its MLP. With ``x`` the MLP input (after the block's post-attention norm),
``x^ = x / |x|`` and ``y`` the MLP output, the block adds ``s * (x^ W_fast)`` to ``y``:

    y_post = y + s * x^ W_fast,     W_fast = sum over the last R writes of c_n x^_n (x) y_post_n

After each token ``W_fast <- lambda * W_fast + eta * g * (x^ (x) y_post)``, kept as a ring of
its last ``R`` outer products (so rank(W_fast) <= R exactly and no SVD is needed; the oldest
term leaves when a new one comes). The consolidation gate ``g = sigmoid(gain * (a - theta))``
reduces the CaMKII/PP1 latch to one sigmoid of the block's activity
``a = rms(y_t) / mean_{k<=t} rms(y_k)``, this token's MLP output energy relative to the
running mean over the sequence so far (so the gate opens for unusually active tokens, in any
layer, at any scale).

* ``R = 16`` (rank, as the original eligibility traces), ``lambda = 0.95`` per token (the
  original ``rho_elig``: a write fades to a third in about 22 tokens).
* ``eta = 0.05`` (our choice): with the gate half open the ring's weights sum to about 0.28, so
  at ``s = 1`` a token that repeats recent context (``x^`` aligned with recent ``x^_n``) gets
  about a quarter more MLP output along what those tokens wrote. ``y_post`` depends on
  ``s * eta`` only, so ``eta`` just sets the scale of ``s``: on the default model ``s = 1``
  costs about as much next-token loss as fatigue at ``s = 1`` and text stays fluent, while
  ``s = 2`` breaks chat formatting.
* ``gain = 1.5`` (the original CaMKII gain), ``theta = 1`` (an average token: ``g = 0.5``).
Normalising ``x`` makes ``x^ . x^_n`` a cosine, so the read-out has the units of ``y`` in every
layer. During a prompt the fast weight is read causally too: token ``t`` reads the writes of
tokens ``t-R..t-1``; since those writes contain their own read-outs, the prompt's ``y_post``
solve one unit lower-triangular system ``(I - M) Y_post = Y`` (exact, one solve per block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import mlx.core as mx
from mlx_lm.models.base import scaled_dot_product_attention

from psilonet import config
from psilonet.config import option
from psilonet.model import forward

SUPPORTED_FAMILIES = tuple(forward.FAMILIES)  # llama, qwen2, qwen3
MECHANISMS = ("fatigue", "hebbian")
TRACE_KEYS = ("pool", "pool_attended", "fast_norm")  # what Bio.trace records per pass
# Strength presets shared by both mechanisms (the page's and the job's choices); custom
# strengths go up to MAX_STRENGTH, where both mechanisms take the default model apart.
PRESETS = {"off": 0.0, "light": 0.25, "medium": 0.5, "strong": 1.0}
MAX_STRENGTH = 2.0


@dataclass(frozen=True)
class FatigueParams(config.Checked):
    """Constants of synaptic fatigue (see the module docstring for their meaning)."""

    tau_rrp: float = option(40.0, min=1.0, help="pool refill time constant (steps)")
    k_use: float = option(0.1, above=0.0, max=1.0, help="pool used per unit of attention")
    eps: float = option(1e-3, above=0.0, below=1.0, help="floor of the pool inside the log")


@dataclass(frozen=True)
class HebbianParams(config.Checked):
    """Constants of the Hebbian fast weight (see the module docstring for their meaning)."""

    rank: int = option(16, min=1, help="writes kept in the ring")
    decay: float = option(0.95, above=0.0, max=1.0, help="lambda: per-token decay of a write")
    eta: float = option(0.05, min=0.0, help="write rate")
    gain: float = option(1.5, help="consolidation gate gain")
    theta: float = option(1.0, help="consolidation gate threshold (relative activity)")


def check_strength(value: float, name: str = "strength") -> float:
    if math.isnan(value) or not 0.0 <= value <= MAX_STRENGTH:
        raise ValueError(f"{name}: each must be in [0, {MAX_STRENGTH:g}], got {value}")
    return float(value)


def check_family(model) -> None:
    base, _ = forward.unwrap(model)
    family = getattr(getattr(base, "args", None), "model_type", None)
    if family not in SUPPORTED_FAMILIES or not hasattr(base, "model"):
        raise ValueError(f"model: bio interventions support {', '.join(SUPPORTED_FAMILIES)} base models, "
                         f"got {family or type(model).__name__}")


# ---------------------------------------------------------------- synaptic fatigue (functional)


def fatigue_scan(scores: mx.array, allowed: mx.array, pool: mx.array, strength: mx.array,
                 params: FatigueParams) -> tuple[mx.array, mx.array]:
    """Attention probabilities under fatigue for ``Tq`` consecutive queries, and the pool after them.

    ``scores`` (B, H, Tq, Tk) are the scaled logits ``q.k / sqrt(d)`` (float32), ``allowed``
    (Tq, Tk) or broadcastable to ``scores`` says which keys each query may see, ``pool``
    (B, H, Tk) is the pool before the first query (1 for keys not yet used), ``strength``
    (B,) the per-row ``s``. Query ``t`` uses the pool left by queries ``0..t-1``.
    """
    s = strength.astype(mx.float32)[:, None, None]
    allowed = mx.broadcast_to(allowed, scores.shape)
    probs = []
    for t in range(scores.shape[2]):
        p, pool = _fatigue_step(scores[:, :, t, :], allowed[:, :, t, :], pool, s,
                                params.k_use, 1.0 / params.tau_rrp, params.eps)
        probs.append(p)
    return mx.stack(probs, axis=2), pool


def _fatigue_step_ops(scores, allowed, pool, s, k_use: float, inv_tau: float, eps: float):
    z = scores + s * mx.log(mx.maximum(pool, eps))
    p = mx.softmax(mx.where(allowed, z, -mx.inf), axis=-1, precise=True)
    pool = mx.clip(pool - k_use * p + (1.0 - pool) * inv_tau, 0.0, 1.0)
    return p, pool


# One fused graph per query step (the scan runs it once per query and layer); shapeless, so
# the growing key axis of decoding reuses it.
_fatigue_step = mx.compile(_fatigue_step_ops, shapeless=True)


def causal_allowed(n_queries: int, offset: int, mask=None) -> mx.array:
    """(Tq, Tk) bool: query ``offset + t`` sees keys ``0..offset + t``; an array ``mask``
    (bool, or additive with ``-inf`` for hidden keys) narrows it further."""
    allowed = mx.arange(offset, offset + n_queries)[:, None] >= mx.arange(offset + n_queries)[None]
    if isinstance(mask, mx.array):
        allowed = allowed & (mask if mask.dtype == mx.bool_ else mask > -mx.inf)
    return allowed


# ---------------------------------------------------------------- Hebbian fast weight (functional)


@dataclass
class Ring:
    """The fast weight of one block for a batch: its last ``R`` writes, oldest first.

    ``W_fast`` at read position ``p`` is ``sum_n eg[n] * decay^(p - 1 - pos[n]) * xn[n] (x) y[n]``
    over entries with ``p - R <= pos[n] < p``.
    """

    xn: mx.array  # (B, N, D) normalised MLP inputs
    y: mx.array  # (B, N, D) MLP outputs after the fast weight
    eg: mx.array  # (B, N) eta * gate at write time
    pos: list[int]  # (N,) positions written (rows move together)
    act_sum: mx.array  # (B,) running sum of rms(y) (the activity baseline)
    count: int  # tokens seen

    @classmethod
    def empty(cls, batch: int, dim: int) -> "Ring":
        return cls(mx.zeros((batch, 0, dim)), mx.zeros((batch, 0, dim)), mx.zeros((batch, 0)), [],
                   mx.zeros((batch,)), 0)

    def coefficients(self, at: int, params: HebbianParams) -> mx.array:
        """(B, N) weight of each entry in ``W_fast`` read at position ``at`` (0 if out of the ring)."""
        age = mx.array([at - 1 - p for p in self.pos], dtype=mx.float32)
        inside = mx.array([at - params.rank <= p < at for p in self.pos])
        return mx.where(inside, self.eg * params.decay ** age, 0.0)

    def matrix(self, at: int, params: HebbianParams) -> mx.array:
        """The explicit fast weight (B, D, D) read at position ``at`` (tests and inspection)."""
        c = self.coefficients(at, params)
        return (self.xn * c[..., None]).transpose(0, 2, 1) @ self.y

    def norm(self, at: int, params: HebbianParams) -> mx.array:
        """(B,) Frobenius norm of ``W_fast`` at ``at`` from the R x R Gram matrices (no D x D)."""
        c = self.coefficients(at, params)
        gram = (self.xn @ self.xn.transpose(0, 2, 1)) * (self.y @ self.y.transpose(0, 2, 1))
        return mx.sqrt(mx.maximum((c[:, None, :] @ gram @ c[:, :, None])[:, 0, 0], 0.0))


def hebbian_update(x: mx.array, y: mx.array, ring: Ring, strength: mx.array, offset: int,
                   params: HebbianParams) -> tuple[mx.array, Ring]:
    """``y_post`` (B, T, D) for ``T`` new tokens at positions ``offset..offset+T-1`` and the ring
    after their writes. ``x`` is the MLP input, ``y`` its output; ``strength`` (B,)."""
    b, t, d = y.shape
    x32, y32 = x.astype(mx.float32), y.astype(mx.float32)
    xn = x32 / mx.maximum(mx.linalg.norm(x32, axis=-1, keepdims=True), 1e-12)
    rms = mx.sqrt(mx.mean(y32 * y32, axis=-1))  # (B, T)
    counts = mx.arange(ring.count + 1, ring.count + t + 1, dtype=mx.float32)
    baseline = (ring.act_sum[:, None] + mx.cumsum(rms, axis=1)) / counts
    gate = mx.sigmoid(params.gain * (rms / mx.maximum(baseline, 1e-12) - params.theta))
    eg = params.eta * gate  # (B, T)
    s = strength.astype(mx.float32)[:, None, None]
    positions = list(range(offset, offset + t))
    # Reads of the old ring: coefficient at each new position, times the cosine of the inputs.
    rhs = y32
    if ring.pos:
        age = mx.array([[q - 1 - p for p in ring.pos] for q in positions], dtype=mx.float32)
        inside = mx.array([[q - params.rank <= p < q for p in ring.pos] for q in positions])
        coef = mx.where(inside, ring.eg[:, None, :] * params.decay ** age, 0.0)  # (B, T, N)
        rhs = rhs + (s * coef * (xn @ ring.xn.transpose(0, 2, 1))) @ ring.y
    if t > 1:
        # Reads among the new tokens: token q reads the writes of k in [q - R, q - 1].
        qi, ki = mx.arange(t)[:, None], mx.arange(t)[None]
        band = (ki < qi) & (ki >= qi - params.rank)
        decay = mx.where(band, params.decay ** (qi - 1 - ki).astype(mx.float32), 0.0)
        m = s * eg[:, None, :] * decay * (xn @ xn.transpose(0, 2, 1))  # (B, T, T), strictly lower
        system = mx.eye(t) - m
        y_post = mx.linalg.solve_triangular(system, rhs, upper=False, stream=mx.cpu)
    else:
        y_post = rhs
    keep = params.rank
    new = Ring(
        xn=mx.concatenate([ring.xn, xn], axis=1)[:, -keep:],
        y=mx.concatenate([ring.y, y_post], axis=1)[:, -keep:],
        eg=mx.concatenate([ring.eg, eg], axis=1)[:, -keep:],
        pos=(ring.pos + positions)[-keep:],
        act_sum=ring.act_sum + rms.sum(axis=1),
        count=ring.count + t,
    )
    return y_post, new


# ---------------------------------------------------------------- the intervention in a model


@dataclass
class Bio:
    """Per-row fatigue and Hebbian strengths for one generation (or one batch of windows),
    with their state: the fatigue pool per layer ``(B, H, Tk)`` and the fast-weight ring per
    layer. It plugs into the hooked forward (:meth:`hooks`) and keeps its state beside the
    KV cache: a pass that starts at position 0 starts a fresh sequence, later passes continue
    it (:meth:`reset` also clears it).

    ``trace`` collects, after every forward pass, per row, layer and head ``(B, L, H)`` the mean
    pool level over the keys (``pool``) and the pool level of the keys the pass's last query
    attends to, ``sum_j p_j r_j`` after its use (``pool_attended``), and per row and layer
    ``(B, L)`` the fast-weight norm (``fast_norm``), as lazy arrays.

    Why both pool numbers: every query spends ``k_use`` of pool in total (its probabilities sum
    to 1) and a deficit refills at ``1/tau_rrp``, so the summed deficit over keys tends to
    ``k_use * tau_rrp`` (4) in every head, and the mean over ``T`` keys to ``1 - 4/T``, whatever
    the head attends to; heads differ only where pools empty (clipped at 0). The attended level
    says how tired the keys a head actually reads are.
    """

    fatigue: list[float]
    hebbian: list[float]
    num_layers: int
    fatigue_params: FatigueParams = field(default_factory=FatigueParams)
    hebbian_params: HebbianParams = field(default_factory=HebbianParams)
    fatigue_on: bool | None = None  # default: on when any row has a strength > 0
    hebbian_on: bool | None = None
    patterns: dict[int, mx.array] | None = None  # if a dict: each layer's last probabilities (B, H, Tq, Tk)

    def __post_init__(self):
        if len(self.fatigue) != len(self.hebbian):
            raise ValueError(f"{len(self.fatigue)} fatigue strengths for {len(self.hebbian)} hebbian ones")
        self.fatigue = [check_strength(v, "fatigue") for v in self.fatigue]
        self.hebbian = [check_strength(v, "hebbian") for v in self.hebbian]
        if self.fatigue_on is None:
            self.fatigue_on = any(v > 0 for v in self.fatigue)
        if self.hebbian_on is None:
            self.hebbian_on = any(v > 0 for v in self.hebbian)
        self._sf = mx.array(self.fatigue, dtype=mx.float32)
        self._sh = mx.array(self.hebbian, dtype=mx.float32)
        self.reset()

    @property
    def rows(self) -> int:
        return len(self.fatigue)

    @property
    def active(self) -> bool:
        return bool(self.fatigue_on or self.hebbian_on)

    def reset(self) -> "Bio":
        self.pools: list[mx.array | None] = [None] * self.num_layers
        self.rings: list[Ring | None] = [None] * self.num_layers
        self.trace: list[dict[str, mx.array]] = []
        self._pool_means: list[mx.array] = []
        self._pool_attended: list[mx.array] = []
        self._norms: list[mx.array] = []
        return self

    def hooks(self, after_block=None) -> forward.Hooks:
        """The forward hooks that run the mechanisms (and ``after_block``, e.g. a dose, after them)."""
        if not self.active:
            return forward.Hooks(after_block=after_block)
        return forward.Hooks(after_block=after_block, attention=self.attention if self.fatigue_on else None,
                             mlp=self.mlp)

    def end_pass(self) -> None:
        """Close one forward pass's trace entry (the last block does it)."""
        entry = {}
        if self._pool_means:
            entry["pool"] = mx.stack(self._pool_means, axis=1)  # (B, L, H)
            entry["pool_attended"] = mx.stack(self._pool_attended, axis=1)
        if self._norms:
            entry["fast_norm"] = mx.stack(self._norms, axis=1)  # (B, L)
        self._pool_means, self._pool_attended, self._norms = [], [], []
        if entry:
            self.trace.append(entry)

    def attention(self, l: int, q: mx.array, k: mx.array, v: mx.array, scale: float, mask, cache) -> mx.array:
        """Block ``l``'s attention core under fatigue: heads (B, H, Tq, hd) from queries and keys
        after RoPE and the cache update."""
        if hasattr(cache, "bits"):
            raise ValueError("fatigue: quantized KV caches are not supported")
        b, h, tq, _ = q.shape
        scores = forward.grouped_scores(q.astype(mx.float32), k.astype(mx.float32), scale)
        tk = scores.shape[-1]
        pool = self.pools[l] if tk > tq else None
        if pool is None:
            pool = mx.zeros((b, h, 0))
        if pool.shape[-1] != tk - tq:
            raise ValueError(f"fatigue: layer {l} has a pool for {pool.shape[-1]} keys but the cache holds "
                             f"{tk - tq}; make one Bio per cache")
        pool = mx.concatenate([pool, mx.ones((b, h, tq))], axis=-1)
        probs, pool = fatigue_scan(scores, causal_allowed(tq, tk - tq, mask), pool, self._sf, self.fatigue_params)
        self.pools[l] = pool
        self._pool_means.append(pool.mean(axis=-1))
        self._pool_attended.append((probs[:, :, -1, :] * pool).sum(axis=-1))
        if self.patterns is not None:
            self.patterns[l] = probs
        out = forward.grouped_values(probs, v.astype(mx.float32)).astype(v.dtype)
        if min(self.fatigue) == 0:
            # Strength-0 rows take the model's own attention, bit for bit.
            sober = scaled_dot_product_attention(q, k, v, cache=cache, scale=scale, mask=mask)
            out = mx.where((self._sf == 0)[:, None, None, None], sober, out)
        return out

    def mlp(self, l: int, layer, h: mx.array, cache) -> mx.array:
        """Block ``l``'s MLP branch with the fast weight (the plain branch where Hebbian is off)."""
        y = self._hebbian(l, layer, h, cache) if self.hebbian_on else layer.mlp(layer.post_attention_layernorm(h))
        if l == self.num_layers - 1:
            self.end_pass()
        return y

    def _hebbian(self, l: int, layer, h: mx.array, cache) -> mx.array:
        x = layer.post_attention_layernorm(h)
        y = layer.mlp(x)
        t = h.shape[1]
        offset = cache.offset - t if cache is not None else 0  # the attention already advanced the cache
        ring = (self.rings[l] if offset else None) or Ring.empty(h.shape[0], h.shape[-1])
        y_post, ring = hebbian_update(x, y, ring, self._sh, offset, self.hebbian_params)
        self.rings[l] = ring
        self._norms.append(ring.norm(offset + t, self.hebbian_params))
        return mx.where((self._sh == 0)[:, None, None], y, y_post.astype(y.dtype))

    def _series(self, key: str) -> mx.array | None:
        """(passes, B, ...) of one ``trace`` entry over the passes that recorded it."""
        values = [e[key] for e in self.trace if key in e]
        return mx.stack(values) if values else None

    def summary(self) -> dict[str, mx.array]:
        """Per row, the mean over passes of each ``trace`` entry (``pool``, ``pool_attended``
        ``(B, L, H)``, ``fast_norm`` ``(B, L)``)."""
        series = {key: self._series(key) for key in TRACE_KEYS}
        return {key: s.mean(axis=0) for key, s in series.items() if s is not None}

    def row_summary(self, passes: list[int]) -> dict[str, list[list | None]]:
        """Like :meth:`summary`, per row ``r`` over its first ``passes[r]`` passes only (a row
        that stopped early leaves out the passes after its stop token), as lists; None for a
        row without passes."""
        out = {}
        for key in TRACE_KEYS:
            s = self._series(key)
            if s is not None:
                s = np.array(s)
                out[key] = [s[:n, r].mean(axis=0).tolist() if n else None for r, n in enumerate(passes)]
        return out


def logits(model, inputs: mx.array, cache=None, bio: Bio | None = None) -> mx.array:
    """Logits (B, T, V) of a model with the interventions (plain where ``bio`` is None)."""
    if bio is not None:
        check_family(model)
    hooks = bio.hooks() if bio is not None else forward.NO_HOOKS
    return forward.forward(model, inputs, cache, hooks)[0]

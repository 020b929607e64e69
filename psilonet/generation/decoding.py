"""Our own decode loop over an mlx-lm model (or a skip model) and its KV cache.

Unlike ``mlx_lm.generate`` (one row, no hooks; about as fast as this loop on one row, see the
README's performance section), this loop decodes ``B`` rows that share one prompt (several samples, or several doses, in one batched pass), samples
greedily or with temperature and top-p, stops each row at an end token and yields one step at
a time so that callers can stream.

Each row draws from its own random stream keyed by its seed, and doses depend only on the
row's seed too, so a row gives the same tokens alone or inside a batch.

**Entropies** (bits), per generated token: the next-token entropy of the softmax over the
vocabulary, ``-sum p log2 p`` (0 when certain, at most ``log2(vocab)``), and per layer the
hidden-state entropy of the state at the position that predicted the token, with
``p = h^2 / sum(h^2)`` over the hidden dimensions (at most ``log2(hidden)``, reached when the
energy is spread evenly over all dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from psilonet.generation import decode_step
from psilonet.generation.bio import Bio
from psilonet.generation.perturb import Doser
from psilonet.model import forward


@dataclass
class SamplingConfig:
    """How the next token is chosen: ``temperature == 0`` is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_tokens}")


@dataclass
class Step:
    """One decode step for every row."""

    index: int
    tokens: list[int]
    done: list[bool] = field(default_factory=list)  # rows that had stopped before this step
    entropy: list[float] | None = None  # next-token entropy (bits) per row
    layer_entropy: list[list[float]] | None = None  # per row, per state h[0..L] (bits)


def stop_ids(tokenizer) -> set[int]:
    """End-of-turn and end-of-text ids of a (wrapped) Hugging Face tokenizer."""
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if hasattr(tokenizer, "convert_tokens_to_ids") else None
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def encode_prompt(tokenizer, prompt: str, *, chat: bool) -> list[int]:
    """Token ids of a prompt, through the chat template when ``chat`` and one exists."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return list(tokenizer.encode(prompt))


def token_entropy_bits(logits: mx.array) -> mx.array:
    """Entropy (bits) of softmax(logits) over the last axis."""
    logp = logits.astype(mx.float32) - mx.logsumexp(logits.astype(mx.float32), axis=-1, keepdims=True)
    return -(mx.exp(logp) * logp).sum(axis=-1) / mx.log(mx.array(2.0))


def hidden_entropy_bits(h: mx.array) -> mx.array:
    """Entropy (bits) of ``p = h^2 / sum(h^2)`` over the last axis."""
    energy = h.astype(mx.float32) ** 2
    p = energy / mx.maximum(energy.sum(axis=-1, keepdims=True), 1e-30)
    return -(p * mx.log2(mx.maximum(p, 1e-30))).sum(axis=-1)


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


def decode(
    model,
    prompt_ids: Sequence[int],
    cfg: SamplingConfig,
    *,
    batch: int = 1,
    stop: Iterable[int] = (),
    seeds: Sequence[int] | None = None,
    doser: Doser | None = None,
    track: bool = False,
    should_stop: Callable[[], bool] | None = None,
    compiled: bool | None = None,
    bio: Bio | None = None,
) -> Iterator[Step]:
    """Yield :class:`Step` s for ``batch`` rows continuing the same prompt.

    ``seeds`` gives each row's sampling seed (default ``cfg.seed + row``); ``doser`` perturbs
    block outputs per row; ``track`` adds both entropies to every step. Rows that produced a
    stop token keep decoding (the batch moves together) but are reported as done. A caller
    ends the generation early by not asking for the next step (the app's Stop button raises
    inside the streaming callback, at Streamlit's next call) or through ``should_stop()``,
    asked before every step (a closed browser tab, which no callback notices). ``compiled`` picks the compiled
    step over a fixed cache (:mod:`psilonet.generation.decode_step`; the default wherever the
    model supports it) or the plain loop (``False``, also used for skip models). ``bio`` runs the
    bio-inspired interventions per row (:mod:`psilonet.generation.bio`; its state starts fresh
    with this generation's cache), before any dose; they run in the plain loop, since their
    state grows with the sequence (a pool per key) and the compiled step's cache is fixed.
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if doser is not None:
        batch = len(doser.intensities)
    if bio is not None:
        if doser is not None and bio.rows != batch:
            raise ValueError(f"{bio.rows} bio rows for {batch} dose rows")
        batch = bio.rows
        bio.reset()
    seeds = list(seeds) if seeds is not None else [cfg.seed + r for r in range(batch)]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} rows")
    stop = set(stop)
    bio_on = bio is not None and bio.active
    if compiled is None:
        compiled = decode_step.supports(model) and not bio_on
    if compiled and bio_on:
        raise ValueError("compiled: the bio interventions run in the plain loop (compiled=False)")
    if compiled:
        yield from _decode_compiled(model, prompt_ids, cfg, batch, stop, seeds, doser, track, should_stop)
        return
    cache = make_prompt_cache(model)
    keys = [mx.random.key(s) for s in seeds]
    x = mx.array([list(prompt_ids)] * batch)
    done = [False] * batch
    plain = (doser is None or doser.sober) and not track and not bio_on
    for index in range(cfg.max_tokens):
        if should_stop is not None and should_stop():
            return
        if plain:
            logits, states = model(x, cache=cache)[:, -1, :], None
        else:
            after = doser.at_step(index) if doser is not None and not doser.sober else None
            hooks = bio.hooks(after) if bio is not None else forward.Hooks(after_block=after)
            full, states = forward.forward(model, x, cache=cache, hooks=hooks)
            logits = full[:, -1, :]
        if cfg.temperature == 0:
            tokens = sample(logits, cfg, None)
        else:
            splits = [mx.random.split(k) for k in keys]
            keys = [s[0] for s in splits]
            tokens = mx.concatenate([sample(logits[r : r + 1], cfg, splits[r][1]) for r in range(batch)])
        outputs = [tokens]
        if track:
            entropy = token_entropy_bits(logits)
            layer_entropy = hidden_entropy_bits(mx.stack([s[:, -1, :] for s in states], axis=1))  # (B, L+1)
            outputs += [entropy, layer_entropy]
        mx.eval(*outputs)
        token_list = tokens.tolist()
        was_done = list(done)
        done = [d or t in stop for d, t in zip(done, token_list)]
        step = Step(index, token_list, was_done)
        if track:
            step.entropy, step.layer_entropy = entropy.tolist(), layer_entropy.tolist()
        yield step
        if all(done):
            return
        x = tokens[:, None]


def _decode_compiled(model, prompt_ids, cfg, batch, stop, seeds, doser, track, should_stop) -> Iterator[Step]:
    """The same steps as the plain loop, from the compiled step; each step's graph is queued
    (``mx.async_eval``) before the previous step's tokens are read back, so building and
    computing overlap."""
    greedy = cfg.temperature == 0
    hook = doser.hook() if doser is not None and not doser.sober else None
    dec = decode_step.Decoder(model, batch, decode_step.capacity_for(len(prompt_ids) + cfg.max_tokens),
                              hook=hook, track=track, greedy=greedy)
    keys = [mx.random.key(s) for s in seeds]

    def choose(out):
        nonlocal keys
        if greedy:
            return out["tokens"]
        splits = [mx.random.split(k) for k in keys]
        keys = [s[0] for s in splits]
        return mx.concatenate([sample(out["logits"][r : r + 1], cfg, splits[r][1]) for r in range(batch)])

    def outputs(out, tokens):
        return [tokens] + ([out["entropy"], out["layer_entropy"]] if track else [])

    out = dec.prefill(prompt_ids)
    current = outputs(out, choose(out))
    mx.async_eval(*current)
    done = [False] * batch
    for index in range(cfg.max_tokens):
        if should_stop is not None and should_stop():
            return
        upcoming = None
        if index + 1 < cfg.max_tokens:
            out = dec.step(current[0])
            upcoming = outputs(out, choose(out))
            mx.async_eval(*upcoming)
        token_list = current[0].tolist()
        was_done = list(done)
        done = [d or t in stop for d, t in zip(done, token_list)]
        step = Step(index, token_list, was_done)
        if track:
            step.entropy, step.layer_entropy = current[1].tolist(), current[2].tolist()
        yield step
        if all(done):
            return
        current = upcoming


def generate(model, tokenizer, prompt: str, cfg: SamplingConfig, *, chat: bool = True, batch: int = 1) -> list[str]:
    """Decoded continuations (one per row), stop tokens excluded."""
    stops = stop_ids(tokenizer)
    rows: list[list[int]] = [[] for _ in range(batch)]
    for step in decode(model, encode_prompt(tokenizer, prompt, chat=chat), cfg, batch=batch, stop=stops):
        for r, (tok, was_done) in enumerate(zip(step.tokens, step.done)):
            if not was_done and tok not in stops:
                rows[r].append(tok)
    return [tokenizer.decode(r) for r in rows]

"""Our own decode loop over an mlx-lm model (or a skip model) and its KV cache.

``mlx_lm.generate`` decodes one row without hooks (and ``mlx_lm``'s batch generator several
prompts, again without hooks); this loop decodes ``B`` rows that share one prompt (several
samples, or several doses, in one batched pass) with per-row interventions and entropies,
samples greedily or with temperature and top-p, stops each row at an end token and yields one
step at a time so that callers can stream.

Each row draws from its own random stream keyed by its seed (:class:`~psilonet.generation.
sampling.RowKeys`), and doses depend only on the row's seed too, so a row gives the same tokens
alone or inside a batch. The entropies of a tracked step are those of
:mod:`psilonet.generation.entropy`.

One loop (:func:`decode`) turns per-step outputs into :class:`Step` s. The outputs come from
one of two sources: the compiled step over a fixed cache (:mod:`psilonet.generation.decode_step`,
the default wherever the model supports it) or the plain hooked forward over mlx-lm's cache
(skip models, the bio interventions, ``compiled=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from psilonet.generation import decode_step
from psilonet.generation.bio import Bio
from psilonet.generation.entropy import step_entropies
from psilonet.generation.perturb import Doser
from psilonet.generation.prompts import encode_prompt, stop_ids
from psilonet.generation.sampling import RowKeys, SamplingConfig
from psilonet.model import forward


@dataclass
class DecodeConfig:
    """One decode: how to sample, and which rows with which interventions.

    ``seeds`` gives each row's sampling seed (default ``sampling.seed + row``); ``doser``
    perturbs block outputs per row (its rows set ``batch``); ``track`` adds both entropies to
    every step. ``compiled`` picks the compiled step (the default wherever the model supports
    it) or the plain loop (``False``). ``bio`` runs the bio-inspired interventions per row
    (:mod:`psilonet.generation.bio`; its state starts fresh with this generation's cache), before
    any dose; they run in the plain loop, since their state grows with the sequence (a pool per
    key) and the compiled step's cache is fixed.
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch: int = 1
    stop: Iterable[int] = ()
    seeds: Sequence[int] | None = None
    doser: Doser | None = None
    track: bool = False
    compiled: bool | None = None
    bio: Bio | None = None


@dataclass
class Step:
    """One decode step for every row."""

    index: int
    tokens: list[int]
    done: list[bool] = field(default_factory=list)  # rows that had stopped before this step
    entropy: list[float] | None = None  # next-token entropy (bits) per row
    layer_entropy: list[list[float]] | None = None  # per row, per state h[0..L] (bits)


def decode(model, prompt_ids: Sequence[int], cfg: DecodeConfig) -> Iterator[Step]:
    """Yield :class:`Step` s for the rows of ``cfg`` continuing the same prompt.

    Rows that produced a stop token keep decoding (the batch moves together) but are reported
    as done. A caller ends the generation early by not asking for the next step (the app's Stop
    button and a closed tab raise inside the streaming callback).
    """
    if not isinstance(cfg, DecodeConfig):  # the pre-DecodeConfig signature took a SamplingConfig here
        raise TypeError(f"decode takes a DecodeConfig, got {type(cfg).__name__}")
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    batch, doser, bio = cfg.batch, cfg.doser, cfg.bio
    if doser is not None:
        batch = len(doser.intensities)
    if bio is not None:
        if doser is not None and bio.rows != batch:
            raise ValueError(f"{bio.rows} bio rows for {batch} dose rows")
        batch = bio.rows
        bio.reset()
    seeds = list(cfg.seeds) if cfg.seeds is not None else [cfg.sampling.seed + r for r in range(batch)]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} rows")
    bio_on = bio is not None and bio.active
    compiled = cfg.compiled
    if compiled is None:
        compiled = decode_step.supports(model) and not bio_on
    if compiled and bio_on:
        raise ValueError("compiled: the bio interventions run in the plain loop (compiled=False)")
    keys = RowKeys(cfg.sampling, seeds)
    source = _compiled_outputs if compiled else _plain_outputs
    stop = set(cfg.stop)
    done = [False] * batch
    for index, current in enumerate(source(model, prompt_ids, cfg, batch, keys)):
        token_list = current["tokens"].tolist()
        was_done = list(done)
        done = [d or t in stop for d, t in zip(done, token_list)]
        step = Step(index, token_list, was_done)
        if cfg.track:
            step.entropy, step.layer_entropy = current["entropy"].tolist(), current["layer_entropy"].tolist()
        yield step
        if all(done):
            return


def _reported(out: dict, tokens: mx.array, track: bool) -> dict:
    """What a step hands to the loop: its chosen tokens and, when tracked, both entropies."""
    return {"tokens": tokens, **({"entropy": out["entropy"], "layer_entropy": out["layer_entropy"]} if track else {})}


def _plain_outputs(model, prompt_ids, cfg: DecodeConfig, batch: int, keys: RowKeys) -> Iterator[dict]:
    """Each step's outputs from the hooked forward over mlx-lm's cache, evaluated before use."""
    doser, bio, track = cfg.doser, cfg.bio, cfg.track
    cache = make_prompt_cache(model)
    x = mx.array([list(prompt_ids)] * batch)
    plain = (doser is None or doser.sober) and not track and not (bio is not None and bio.active)
    for index in range(cfg.sampling.max_tokens):
        if plain:
            out = {"logits": model(x, cache=cache)[:, -1, :]}
        else:
            after = doser.at_step(index) if doser is not None and not doser.sober else None
            hooks = bio.hooks(after) if bio is not None else forward.Hooks(after_block=after)
            full, states = forward.forward(model, x, cache=cache, hooks=hooks)
            out = {"logits": full[:, -1, :]}
            if track:
                out.update(step_entropies(out["logits"], states))
        current = _reported(out, keys.choose(out), track)
        mx.eval(*current.values())
        yield current
        x = current["tokens"][:, None]


def _compiled_outputs(model, prompt_ids, cfg: DecodeConfig, batch: int, keys: RowKeys) -> Iterator[dict]:
    """Each step's outputs from the compiled step; each step's graph is queued
    (``mx.async_eval``) before the previous step's tokens are read back, so building and
    computing overlap."""
    doser, track, max_tokens = cfg.doser, cfg.track, cfg.sampling.max_tokens
    hook = doser.hook() if doser is not None and not doser.sober else None
    dec = decode_step.Decoder(model, batch, decode_step.capacity_for(len(prompt_ids) + max_tokens),
                              hook=hook, track=track, greedy=cfg.sampling.temperature == 0)
    out = dec.prefill(prompt_ids)
    current = _reported(out, keys.choose(out), track)
    mx.async_eval(*current.values())
    for index in range(max_tokens):
        upcoming = None
        if index + 1 < max_tokens:
            out = dec.step(current["tokens"])
            upcoming = _reported(out, keys.choose(out), track)
            mx.async_eval(*upcoming.values())
        yield current
        current = upcoming


def generate(model, tokenizer, prompt: str, cfg: SamplingConfig, *, chat: bool = True, batch: int = 1) -> list[str]:
    """Decoded continuations (one per row), stop tokens excluded."""
    stops = stop_ids(tokenizer)
    rows: list[list[int]] = [[] for _ in range(batch)]
    for step in decode(model, encode_prompt(tokenizer, prompt, chat=chat), DecodeConfig(cfg, batch=batch, stop=stops)):
        for r, (tok, was_done) in enumerate(zip(step.tokens, step.done)):
            if not was_done and tok not in stops:
                rows[r].append(tok)
    return [tokenizer.decode(r) for r in rows]

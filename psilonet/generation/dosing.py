"""Dosed generation: one prompt at several intensities in one batch, with both entropies.

All intensities of a prompt and seed decode together as the rows of one batch (one forward
pass per token for all doses). Each row samples and perturbs with the same seed, so the
doses are compared on common random numbers, and row ``r`` equals a single-row run of the
same dose.

Beside the doses, every row may carry the bio-inspired interventions of
:mod:`psilonet.generation.bio` (synaptic fatigue and Hebbian fast weights) at its own
strengths; a configuration's rows are every combination of its intensities and bio strengths
(:mod:`psilonet.generation.dose_config`). Storing the results is
:func:`psilonet.store.dose_runs.save_dose_run`; the app's frames of them are in
:mod:`psilonet.app.dose_frames`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from psilonet.generation import bio as bio_mod
from psilonet.generation.decoding import DecodeConfig, decode
from psilonet.generation.dose_config import MAX_NEW_TOKENS, DoseConfig, row_label
from psilonet.generation.perturb import DoseSpec, Doser, check_intensity
from psilonet.generation.prompts import encode_prompt, stop_ids
from psilonet.generation.sampling import SamplingConfig
from psilonet.generation.steering import Steering
from psilonet.model import forward
from psilonet.store.dose_runs import DoseItem, save_dose_run


@dataclass
class DoseResult:
    """One continuation at one intensity."""

    intensity: float
    seed: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)  # bits per generated token
    layer_entropy: list[list[float]] = field(default_factory=list)  # per token, per state h[0..L]
    stopped: bool = False  # ended on an end-of-turn token (not the length cap)
    fatigue: float = 0.0  # bio strengths of this row
    hebbian: float = 0.0
    pool: list[list[float]] | None = None  # mean fatigue pool level per layer and head over its tokens
    pool_attended: list[list[float]] | None = None  # pool level of the keys each head attends to, same
    fast_norm: list[float] | None = None  # mean fast-weight norm per layer over its tokens
    steering: float = 0.0  # steering strength of this row (psilonet.generation.steering)

    @property
    def mean_entropy(self) -> float:
        return float(np.mean(self.entropy)) if self.entropy else float("nan")

    @property
    def label(self) -> str:
        """``intensity 0.2``, with ``+ fatigue 0.5`` / ``+ hebbian 1`` where those are on."""
        return row_label(self.intensity, self.fatigue, self.hebbian, self.steering)


def generate_doses(
    model,
    tokenizer,
    prompt: str,
    intensities: list[float],
    *,
    sampling: SamplingConfig,
    spec: DoseSpec = DoseSpec(),
    chat: bool = True,
    on_token: Callable[[int, str], None] | None = None,
    fatigue: list[float] | None = None,
    hebbian: list[float] | None = None,
    wrap_doser: Callable[[Doser], Any] | None = None,
) -> list[DoseResult]:
    """Continue ``prompt`` at every intensity (one batch row each) with seed ``sampling.seed``.

    ``fatigue`` and ``hebbian``, if given, are each row's bio strengths (one per intensity; see
    :meth:`DoseConfig.rows`); rows with a mechanism on also get its state (``pool``,
    ``fast_norm``). ``on_token(row, text)`` streams each new token's text as it is decoded; a
    caller ends the generation early by raising from it (the app's Stop button and closed tab).
    """
    if not intensities:
        raise ValueError("intensities: give at least one")
    for i in intensities:
        check_intensity(i)
    if sampling.max_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"max_tokens: at most {MAX_NEW_TOKENS}, got {sampling.max_tokens}")
    ids = encode_prompt(tokenizer, prompt, chat=chat)
    stops = stop_ids(tokenizer)
    num_layers = forward.num_layers(model)
    doser = Doser(list(intensities), [sampling.seed] * len(intensities), num_layers, model.args.hidden_size, spec)
    if wrap_doser is not None:  # e.g. a steering vector on top (psilonet.generation.steering)
        doser = wrap_doser(doser)
    fatigue = list(fatigue) if fatigue is not None else [0.0] * len(intensities)
    hebbian = list(hebbian) if hebbian is not None else [0.0] * len(intensities)
    if not len(fatigue) == len(hebbian) == len(intensities):
        raise ValueError(f"fatigue/hebbian: one strength per intensity row ({len(intensities)}), "
                         f"got {len(fatigue)} and {len(hebbian)}")
    bio = bio_mod.Bio(fatigue, hebbian, num_layers)
    if bio.active:
        bio_mod.check_family(model)
    results = [DoseResult(i, sampling.seed, fatigue=f, hebbian=h) for i, f, h in zip(intensities, fatigue, hebbian)]
    steps = [0] * len(results)  # passes each row took part in (its own tokens, stop token included)
    # Every row samples with the same seed (common random numbers, and a row equals its run alone).
    plan = DecodeConfig(sampling, stop=stops, seeds=[sampling.seed] * len(results), doser=doser, track=True,
                        bio=bio if bio.active else None)
    for step in decode(model, ids, plan):
        for r, res in enumerate(results):
            if step.done[r]:
                continue
            steps[r] += 1
            token = step.tokens[r]
            if token in stops:
                res.stopped = True
                continue
            # Decode the growing sequence so multi-byte characters come out whole.
            before = len(res.text)
            res.token_ids.append(token)
            res.text = tokenizer.decode(res.token_ids)
            piece = res.text[before:]
            res.token_texts.append(piece)
            res.entropy.append(step.entropy[r])
            res.layer_entropy.append(step.layer_entropy[r])
            if on_token is not None:
                on_token(r, piece)
    if bio.active:
        _attach_bio_state(results, bio, steps)
    return results


def _attach_bio_state(results: list[DoseResult], bio: bio_mod.Bio, steps: list[int]) -> None:
    """Each row's state (:meth:`Bio.row_summary`), for the rows where that mechanism is on (a
    strength-0 row's would-be state is left out, so a row reports the same alone and in a batch)."""
    for key, per_row in bio.row_summary(steps).items():
        strength = "hebbian" if key == "fast_norm" else "fatigue"
        for res, value in zip(results, per_row):
            if value is not None and getattr(res, strength) > 0:
                setattr(res, key, value)


def batch_rows(cfg: DoseConfig, steer: Steering | None = None) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per batch row of ``cfg`` (intensities, fatigue, hebbian, steering strengths): with ``steer``,
    each of ``cfg``'s rows at every strength, strengths fastest (one batch row each)."""
    intensities, fatigue, hebbian = cfg.rows()
    if steer is None:
        return intensities, fatigue, hebbian, [0.0] * len(intensities)
    k = len(steer.strengths)
    strengths = steer.rows(len(intensities))
    intensities, fatigue, hebbian = ([x for x in xs for _ in range(k)] for xs in (intensities, fatigue, hebbian))
    return intensities, fatigue, hebbian, strengths


def generate_item(model, tokenizer, line: int, prompt: str, seed: int, cfg: DoseConfig, steer: Steering | None = None,
                  on_token: Callable[[int, str], None] | None = None) -> DoseItem:
    """One prompt and seed at every row of ``cfg`` (and ``steer``'s strengths, :func:`batch_rows`)
    in one batch: what ``jobs.dose`` and the Dosed generation page both call per prompt."""
    intensities, fatigue, hebbian, strengths = batch_rows(cfg, steer)
    results = generate_doses(model, tokenizer, prompt, intensities, sampling=cfg.sampling(seed), spec=cfg.spec(),
                             chat=cfg.chat, on_token=on_token, fatigue=fatigue, hebbian=hebbian,
                             wrap_doser=None if steer is None else steer.wrap(strengths))
    for res, s in zip(results, strengths):
        res.steering = s
    return DoseItem(line, prompt, seed, results)


def dose_items(model, tokenizer, prompts: list[tuple[int, str]], cfg: DoseConfig,
               on_item: Callable[[DoseItem], None] | None = None, steer: Steering | None = None) -> Iterator[DoseItem]:
    """Every (line, prompt) x seed of ``cfg`` generated at all its rows, one item at a time.

    With ``steer``, each of ``cfg``'s rows is taken at every steering strength (one batch row each)."""
    cfg.validate()
    for line, prompt in prompts:
        for seed in cfg.seeds:
            item = generate_item(model, tokenizer, line, prompt, seed, cfg, steer)
            if on_item is not None:
                on_item(item)
            yield item


def run_doses(store, model, tokenizer, prompts: list[tuple[int, str]], cfg: DoseConfig, *, run_config: dict,
              model_name: str, dataset: str, parent: str | None = None, progress: bool = True,
              steer: Steering | None = None) -> tuple[str, dict]:
    """Every (line, prompt) x seed at every intensity of ``cfg`` into one ``dose`` run; (run_id, summary).

    The one library call behind ``jobs.dose``; ``run_config`` adds what the caller knows (model,
    skip run, skipped prompts) to the stored config. Progress and each continuation are
    printed through tqdm when ``progress``. ``steer`` adds steering rows (:func:`dose_items`)
    and stores its vector with the run.
    """
    cfg.validate()
    bar = tqdm(total=len(prompts) * len(cfg.seeds), desc="dose", unit="prompt", disable=not progress)

    def show(item: DoseItem) -> None:
        if progress:
            bar.write(f"\n[{item.prompt}] seed {item.seed}")
            for res in item.results:
                bar.write(f"  {res.label} | mean entropy {res.mean_entropy:.2f} bits | {res.text.strip()!r}")

    try:
        return save_dose_run(store, {**cfg.to_dict(), **run_config}, dose_items(model, tokenizer, prompts, cfg, show, steer),
                             model=model_name, dataset=dataset, parent=parent, progress=lambda k: bar.update(1),
                             vector=None if steer is None else (steer.layer, steer.vector))
    finally:
        bar.close()

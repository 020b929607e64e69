"""Dosed generation: one prompt at several intensities in one batch, with both entropies.

All intensities of a prompt and seed decode together as the rows of one batch (one forward
pass per token for all doses). Each row samples and perturbs with the same seed, so the
doses are compared on common random numbers, and row ``r`` equals a single-row run of the
same dose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from psilonet import config
from psilonet.config import option
from psilonet.generation.decoding import SamplingConfig, decode, encode_prompt, stop_ids
from psilonet.generation.perturb import MECHANISMS, PRESETS, DoseSpec, Doser, check_intensity
from psilonet.model import forward

MAX_NEW_TOKENS = 512
MAX_SEED = 2**32 - 1  # MLX and NumPy seeds are unsigned 32-bit


@dataclass
class DoseConfig:
    """One dosed generation's settings, shared by ``jobs.dose`` and the app (and stored with the run)."""

    intensities: list[float] = option(default_factory=lambda: list(PRESETS.values()), min=0.0, max=1.0,
                                      help="each in [0, 1]; presets: "
                                           + ", ".join(f"{k} {v}" for k, v in PRESETS.items()))
    seeds: list[int] = option(default_factory=lambda: [0], min=0, max=MAX_SEED,
                              help="one continuation per seed (same seed: same sampling and noise)")
    mechanisms: list[str] = option(default_factory=lambda: list(MECHANISMS), choices=MECHANISMS,
                                   help="perturbations applied")
    max_tokens: int = option(48, min=1, max=MAX_NEW_TOKENS, help="new tokens per continuation")
    temperature: float = option(0.0, min=0.0, max=100.0, help="0 = greedy")
    top_p: float = option(1.0, above=0.0, max=1.0, help="nucleus sampling mass")
    chat: bool = option(True, flag=False)

    def validate(self) -> "DoseConfig":
        for name in ("intensities", "seeds", "mechanisms"):
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                raise config.ConfigError(f"{name}: give at least one value")
        config.check(self)
        return self

    def sampling(self, seed: int) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.max_tokens, seed)

    def spec(self) -> DoseSpec:
        return DoseSpec.only(*self.mechanisms)

    def to_dict(self) -> dict:
        return {**asdict(self), "mechanisms": self.spec().enabled()}


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

    @property
    def mean_entropy(self) -> float:
        return float(np.mean(self.entropy)) if self.entropy else float("nan")


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
    should_stop: Callable[[], bool] | None = None,
) -> list[DoseResult]:
    """Continue ``prompt`` at every intensity (one batch row each) with seed ``sampling.seed``.

    ``on_token(row, text)`` streams each new token's text as it is decoded; ``should_stop()``
    ends the generation early (the app's closed browser tab).
    """
    if not intensities:
        raise ValueError("intensities: give at least one")
    for i in intensities:
        check_intensity(i)
    if sampling.max_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"max_tokens: at most {MAX_NEW_TOKENS}, got {sampling.max_tokens}")
    ids = encode_prompt(tokenizer, prompt, chat=chat)
    stops = stop_ids(tokenizer)
    hidden = (model.args.hidden_size)
    doser = Doser(list(intensities), [sampling.seed] * len(intensities), forward.num_layers(model), hidden, spec)
    results = [DoseResult(i, sampling.seed) for i in intensities]
    for step in decode(model, ids, sampling, stop=stops, doser=doser, track=True, should_stop=should_stop):
        for r, res in enumerate(results):
            if step.done[r]:
                continue
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
    return results


def save_dose_run(store, config: dict, items: list[tuple[int, str, int, list[DoseResult]]], *,
                  model: str, dataset: str, parent: str | None = None, progress=None) -> tuple[str, dict]:
    """Write (prompt_line, prompt, seed, results) items as one ``dose`` run; return (run_id, summary).

    ``items`` may be a generator (the batch job generates while it writes); ``progress(k)`` is
    called after each item.
    """
    mechanisms = ",".join(config.get("mechanisms", []))
    means: dict[float, list[float]] = {}
    gen_id = 0
    with store.begin_run("dose", config=config, model=model, dataset=dataset, parent=parent) as run:
        for k, (line, prompt, seed, results) in enumerate(items):
            for res in results:
                run.log_generation(gen_id, prompt_line=line, prompt=prompt, intensity=res.intensity, seed=seed,
                                   mechanisms=mechanisms, text=res.text, token_ids=res.token_ids,
                                   token_texts=res.token_texts, entropy=res.entropy,
                                   layer_entropy=res.layer_entropy, stopped=res.stopped)
                means.setdefault(res.intensity, []).append(res.mean_entropy)
                gen_id += 1
            if progress is not None:
                progress(k)
        summary = {f"mean_entropy@{i:g}": float(np.nanmean(v)) for i, v in means.items() if v}
        summary.update(generations=gen_id, skipped_prompts=len(config.get("skipped", [])))
        run.finish(summary)
    return run.run_id, summary


#: Hard bound on one request from the app: the token rows it may process, counted as
#: sum over prompts of (prompt tokens + new tokens) x intensities.  Larger batches belong to
#: ``python -m jobs.dose`` (which shows progress in the terminal and is not tied to a browser tab).
MAX_REQUEST_WORK = 150_000


def request_work(prompt_lengths: list[int], n_intensities: int, max_tokens: int) -> int:
    """Token rows one request processes: every prompt is prefilled and continued per intensity."""
    return sum(n + max_tokens for n in prompt_lengths) * n_intensities


def check_request(prompt_lengths: list[int], n_intensities: int, max_tokens: int,
                  limit: int | None = None) -> None:
    """Raise ValueError (saying what to reduce) when a request exceeds ``limit`` token rows
    (default :data:`MAX_REQUEST_WORK`)."""
    limit = MAX_REQUEST_WORK if limit is None else limit
    work = request_work(prompt_lengths, n_intensities, max_tokens)
    if work > limit:
        raise ValueError(
            f"this request would process {work:,} token rows ({len(prompt_lengths)} prompt(s) x "
            f"{n_intensities} intensities, prompt + {max_tokens} new tokens each); the app's limit is {limit:,}. "
            "Use fewer prompts, intensities or tokens, or run `python -m jobs.dose --prompts-file FILE`.")


def result_frames(items: list[tuple[int, str, int, list[DoseResult]]]):
    """(generations, token_entropy, layer_entropy) frames of in-memory results, with the columns
    of the stored tables (``RunReader.generations()`` etc.), so that live and stored runs are
    shown by the same code."""
    import pandas as pd

    gens, tokens, layers = [], [], []
    gen_id = 0
    for line, prompt, seed, results in items:
        for res in results:
            gens.append(dict(gen_id=gen_id, prompt_line=line, prompt=prompt, intensity=res.intensity, seed=seed,
                             text=res.text, n_tokens=len(res.token_ids), mean_entropy=res.mean_entropy,
                             stopped=res.stopped))
            tokens += [dict(gen_id=gen_id, pos=p, token_text=t, entropy=e)
                       for p, (t, e) in enumerate(zip(res.token_texts, res.entropy))]
            layers += [dict(gen_id=gen_id, pos=p, layer=l, entropy=e)
                       for p, row in enumerate(res.layer_entropy) for l, e in enumerate(row)]
            gen_id += 1
    return (pd.DataFrame(gens, columns=["gen_id", "prompt_line", "prompt", "intensity", "seed", "text", "n_tokens",
                                        "mean_entropy", "stopped"]),
            pd.DataFrame(tokens, columns=["gen_id", "pos", "token_text", "entropy"]),
            pd.DataFrame(layers, columns=["gen_id", "pos", "layer", "entropy"]))


def plan_prompts(tokenizer, prompts: list[tuple[int, str]], *, max_tokens: int, chat: bool, context: int,
                 n_intensities: int, limit: int | None = None) -> tuple[list[tuple[int, str]], list[str]]:
    """Split (line, prompt) pairs into those to run and a reason per skipped one, before any work.

    A prompt whose tokens plus ``max_tokens`` exceed ``context`` is skipped, named by its line.
    Raises ValueError (:func:`check_request`) if the prompts that remain exceed ``limit``."""
    from psilonet.generation.decoding import encode_prompt

    runnable, lengths, skipped = [], [], []
    for line, text in prompts:
        n = len(encode_prompt(tokenizer, text, chat=chat))
        if n + max_tokens > context:
            skipped.append(f"line {line}: {n} tokens; with {max_tokens} new tokens it exceeds the model's "
                           f"context of {context}")
        else:
            runnable.append((line, text))
            lengths.append(n)
    check_request(lengths, n_intensities, max_tokens, limit)
    return runnable, skipped

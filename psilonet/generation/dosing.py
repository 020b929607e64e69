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

    ``on_token(row, text)`` streams each new token's text as it is decoded.
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


def run_doses(store, model, tokenizer, prompts: list[tuple[int, str]], cfg: DoseConfig, *, run_config: dict,
              model_name: str, dataset: str, parent: str | None = None, progress: bool = True) -> tuple[str, dict]:
    """Every (line, prompt) x seed at every intensity of ``cfg`` into one ``dose`` run; (run_id, summary).

    The one library call behind ``jobs.dose``; ``run_config`` adds what the caller knows (model,
    skip run, skipped prompts) to the stored config. Progress and each continuation are
    printed through tqdm when ``progress``.
    """
    from tqdm import tqdm

    cfg.validate()
    spec = cfg.spec()
    items = [(line, prompt, seed) for line, prompt in prompts for seed in cfg.seeds]
    bar = tqdm(total=len(items), desc="dose", unit="prompt", disable=not progress)

    def generated():
        for line, prompt, seed in items:
            results = generate_doses(model, tokenizer, prompt, cfg.intensities, sampling=cfg.sampling(seed),
                                     spec=spec, chat=cfg.chat)
            if progress:
                bar.write(f"\n[{prompt}] seed {seed}")
                for res in results:
                    bar.write(f"  intensity {res.intensity:.2f} | mean entropy {res.mean_entropy:.2f} bits | "
                              f"{res.text.strip()!r}")
            yield line, prompt, seed, results

    try:
        return save_dose_run(store, {**cfg.to_dict(), **run_config}, generated(), model=model_name,
                             dataset=dataset, parent=parent, progress=lambda k: bar.update(1))
    finally:
        bar.close()

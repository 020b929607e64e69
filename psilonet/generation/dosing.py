"""Dosed generation: one prompt at several intensities in one batch, with both entropies.

All intensities of a prompt and seed decode together as the rows of one batch (one forward
pass per token for all doses). Each row samples and perturbs with the same seed, so the
doses are compared on common random numbers, and row ``r`` equals a single-row run of the
same dose.

Beside the doses, every row may carry the bio-inspired interventions of
:mod:`psilonet.generation.bio` (synaptic fatigue and Hebbian fast weights) at its own
strengths; a configuration's rows are every combination of its intensities and bio strengths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

import mlx.core as mx

from psilonet import config
from psilonet.config import option
from psilonet.generation import bio as bio_mod
from psilonet.generation.decoding import SamplingConfig, decode, encode_prompt, stop_ids
from psilonet.generation.perturb import MECHANISMS, PRESETS, DoseSpec, Doser, check_intensity
from psilonet.model import forward
from psilonet.store import tables as T

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
    # Bio-inspired interventions beside the doses: every row combines one intensity with one of each.
    fatigue: list[float] = option(default_factory=lambda: [0.0], min=0.0, max=bio_mod.MAX_STRENGTH,
                                  help="synaptic fatigue strengths (0 = off); presets: "
                                       + ", ".join(f"{k} {v:g}" for k, v in bio_mod.PRESETS.items()))
    hebbian: list[float] = option(default_factory=lambda: [0.0], min=0.0, max=bio_mod.MAX_STRENGTH,
                                  help="Hebbian fast-weight strengths (0 = off); same presets")

    def validate(self) -> "DoseConfig":
        for name in ("intensities", "seeds", "mechanisms", "fatigue", "hebbian"):
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                raise config.ConfigError(f"{name}: give at least one value")
        config.check(self)
        return self

    def sampling(self, seed: int) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.max_tokens, seed)

    def spec(self) -> DoseSpec:
        return DoseSpec.only(*self.mechanisms)

    def rows(self) -> tuple[list[float], list[float], list[float]]:
        """(intensities, fatigue, hebbian) of the batch rows, see :func:`combine_rows`."""
        return combine_rows(self.intensities, self.fatigue, self.hebbian)

    def to_dict(self) -> dict:
        return {**asdict(self), "mechanisms": self.spec().enabled()}


def combine_rows(intensities: list[float], fatigue: list[float], hebbian: list[float]):
    """Per-row (intensities, fatigue, hebbian): every combination, intensities varying slowest."""
    combos = [(i, f, h) for i in intensities for f in fatigue for h in hebbian]
    return [c[0] for c in combos], [c[1] for c in combos], [c[2] for c in combos]


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

    @property
    def mean_entropy(self) -> float:
        return float(np.mean(self.entropy)) if self.entropy else float("nan")

    @property
    def label(self) -> str:
        """``intensity 0.2``, with ``+ fatigue 0.5`` / ``+ hebbian 1`` where those are on."""
        parts = [f"intensity {self.intensity:g}"]
        parts += [f"fatigue {self.fatigue:g}"] if self.fatigue else []
        parts += [f"hebbian {self.hebbian:g}"] if self.hebbian else []
        return " + ".join(parts)


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
    fatigue: list[float] | None = None,
    hebbian: list[float] | None = None,
    wrap_doser: Callable[[Doser], Any] | None = None,
) -> list[DoseResult]:
    """Continue ``prompt`` at every intensity (one batch row each) with seed ``sampling.seed``.

    ``fatigue`` and ``hebbian``, if given, are each row's bio strengths (one per intensity; see
    :meth:`DoseConfig.rows`); rows with a mechanism on also get its state (``pool``,
    ``fast_norm``). ``on_token(row, text)`` streams each new token's text as it is decoded;
    ``should_stop()`` ends the generation early (the app's closed browser tab).
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
    if wrap_doser is not None:  # e.g. a steering vector on top (psilonet.generation.steering)
        doser = wrap_doser(doser)
    fatigue = list(fatigue) if fatigue is not None else [0.0] * len(intensities)
    hebbian = list(hebbian) if hebbian is not None else [0.0] * len(intensities)
    if not len(fatigue) == len(hebbian) == len(intensities):
        raise ValueError(f"fatigue/hebbian: one strength per intensity row ({len(intensities)}), "
                         f"got {len(fatigue)} and {len(hebbian)}")
    bio = bio_mod.Bio(fatigue, hebbian, forward.num_layers(model))
    if bio.active:
        bio_mod.check_family(model)
    results = [DoseResult(i, sampling.seed, fatigue=f, hebbian=h) for i, f, h in zip(intensities, fatigue, hebbian)]
    steps = [0] * len(results)  # passes each row took part in (its own tokens, stop token included)
    # Every row samples with the same seed (common random numbers, and a row equals its run alone).
    for step in decode(model, ids, sampling, stop=stops, seeds=[sampling.seed] * len(results), doser=doser,
                       track=True, should_stop=should_stop, bio=bio if bio.active else None):
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
    """Each row's mean pool level and fast-weight norm over the passes that made its tokens, for
    the rows where that mechanism is on (a strength-0 row's would-be state is left out, so a row
    reports the same alone and in a batch)."""
    for key, strength, on in (("pool", "fatigue", bio.fatigue_on), ("pool_attended", "fatigue", bio.fatigue_on),
                              ("fast_norm", "hebbian", bio.hebbian_on)):
        if not on or not bio.trace:
            continue
        series = np.array(mx.stack([entry[key] for entry in bio.trace]))  # (passes, B, ...)
        for r, res in enumerate(results):
            if steps[r] and getattr(res, strength) > 0:
                setattr(res, key, series[: steps[r], r].mean(axis=0).tolist())


def _summary_key(res: DoseResult) -> str:
    """``0.2`` for a dose alone, ``0.2+fatigue0.5+hebbian1`` with bio strengths."""
    key = f"{res.intensity:g}"
    key += f"+fatigue{res.fatigue:g}" if res.fatigue else ""
    return key + (f"+hebbian{res.hebbian:g}" if res.hebbian else "")


def _write_bio(run, gen_id: int, res: DoseResult) -> None:
    run.write_rows(T.BIO_STRENGTHS, [(gen_id, res.fatigue, res.hebbian)])
    if res.pool is not None:
        run.write_rows(T.BIO_POOL, [(gen_id, l, h, level, attended)
                                    for l, (heads, att) in enumerate(zip(res.pool, res.pool_attended))
                                    for h, (level, attended) in enumerate(zip(heads, att))])
    if res.fast_norm is not None:
        run.write_rows(T.BIO_FAST_NORM, [(gen_id, l, norm) for l, norm in enumerate(res.fast_norm)])


def save_dose_run(store, config: dict, items: list[tuple[int, str, int, list[DoseResult]]], *,
                  model: str, dataset: str, parent: str | None = None, progress=None) -> tuple[str, dict]:
    """Write (prompt_line, prompt, seed, results) items as one ``dose`` run; return (run_id, summary).

    ``items`` may be a generator (the batch job generates while it writes); ``progress(k)`` is
    called after each item. Where the config has bio strengths, each generation's strengths and
    its mechanisms' state go to the bio tables too.
    """
    mechanisms = ",".join(config.get("mechanisms", []))
    with_bio = any(v for v in [*config.get("fatigue", []), *config.get("hebbian", [])])
    means: dict[str, list[float]] = {}
    gen_id = 0
    with store.begin_run("dose", config=config, model=model, dataset=dataset, parent=parent) as run:
        for k, (line, prompt, seed, results) in enumerate(items):
            for res in results:
                run.log_generation(gen_id, prompt_line=line, prompt=prompt, intensity=res.intensity, seed=seed,
                                   mechanisms=mechanisms, text=res.text, token_ids=res.token_ids,
                                   token_texts=res.token_texts, entropy=res.entropy,
                                   layer_entropy=res.layer_entropy, stopped=res.stopped)
                if with_bio:
                    _write_bio(run, gen_id, res)
                means.setdefault(_summary_key(res), []).append(res.mean_entropy)
                gen_id += 1
            if progress is not None:
                progress(k)
        summary = {f"mean_entropy@{k}": float(np.nanmean(v)) for k, v in means.items() if v}
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


def bio_frames(items: list[tuple[int, str, int, list[DoseResult]]]):
    """(bio_strengths, bio_pool, bio_fast_norm) frames of in-memory results, numbered like
    :func:`result_frames` and with the columns of the stored bio tables (empty without bio)."""
    import pandas as pd

    strengths, pool, norms = [], [], []
    gen_id = 0
    for _, _, _, results in items:
        for res in results:
            strengths.append((gen_id, res.fatigue, res.hebbian))
            pool += [(gen_id, l, h, v, a) for l, (heads, att) in enumerate(zip(res.pool or [], res.pool_attended or []))
                     for h, (v, a) in enumerate(zip(heads, att))]
            norms += [(gen_id, l, v) for l, v in enumerate(res.fast_norm or [])]
            gen_id += 1
    if not any(f or h for _, f, h in strengths):
        strengths = []
    return (pd.DataFrame(strengths, columns=list(T.BIO_STRENGTHS.names)),
            pd.DataFrame(pool, columns=list(T.BIO_POOL.names)),
            pd.DataFrame(norms, columns=list(T.BIO_FAST_NORM.names)))


def label_rows(gens, strengths):
    """``gens`` (generations frame) with each row's ``fatigue``, ``hebbian`` and a ``label`` naming
    its dose and bio strengths, where the run has bio rows (``strengths`` as :func:`bio_frames`
    or ``RunReader.bio_strengths()``); unchanged otherwise, so charts key rows by intensity."""
    if strengths is None or strengths.empty:
        return gens
    out = gens.merge(strengths, on="gen_id", how="left").fillna({"fatigue": 0.0, "hebbian": 0.0})
    out["label"] = [DoseResult(i, 0, fatigue=f, hebbian=h).label
                    for i, f, h in zip(out.intensity, out.fatigue, out.hebbian)]
    return out


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
    intensities, fatigue, hebbian = cfg.rows()
    items = [(line, prompt, seed) for line, prompt in prompts for seed in cfg.seeds]
    bar = tqdm(total=len(items), desc="dose", unit="prompt", disable=not progress)

    def generated():
        for line, prompt, seed in items:
            results = generate_doses(model, tokenizer, prompt, intensities, sampling=cfg.sampling(seed),
                                     spec=spec, chat=cfg.chat, fatigue=fatigue, hebbian=hebbian)
            if progress:
                bar.write(f"\n[{prompt}] seed {seed}")
                for res in results:
                    bar.write(f"  {res.label} | mean entropy {res.mean_entropy:.2f} bits | "
                              f"{res.text.strip()!r}")
            yield line, prompt, seed, results

    try:
        return save_dose_run(store, {**cfg.to_dict(), **run_config}, generated(), model=model_name,
                             dataset=dataset, parent=parent, progress=lambda k: bar.update(1))
    finally:
        bar.close()

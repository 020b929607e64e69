"""Dose runs in the store: each generation with its entropies, and its bio state where it has one.

A result here is anything with the fields of :class:`psilonet.generation.dosing.DoseResult`
(the store does not import the generation code, which needs MLX).
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np

from psilonet.store import tables as T


class DoseItem(NamedTuple):
    """One prompt and seed of a dose run with its results, one per batch row."""

    line: int  # the prompt's line in its file (negative: from the command line)
    prompt: str
    seed: int
    results: list[Any]  # DoseResult


def summary_key(res) -> str:
    """``0.2`` for a dose alone, ``0.2+fatigue0.5+hebbian1`` with bio strengths."""
    key = f"{res.intensity:g}"
    key += f"+fatigue{res.fatigue:g}" if res.fatigue else ""
    key += f"+hebbian{res.hebbian:g}" if res.hebbian else ""
    return key + (f"+steer{res.steering:g}" if getattr(res, "steering", 0.0) else "")


def pool_rows(gen_id: int, res) -> list[tuple]:
    """(gen_id, layer, head, level, attended) rows of a result's fatigue pool (none without one)."""
    return [(gen_id, l, h, level, attended)
            for l, (heads, att) in enumerate(zip(res.pool or [], res.pool_attended or []))
            for h, (level, attended) in enumerate(zip(heads, att))]


def fast_norm_rows(gen_id: int, res) -> list[tuple]:
    """(gen_id, layer, norm) rows of a result's fast-weight norms (none without them)."""
    return [(gen_id, l, norm) for l, norm in enumerate(res.fast_norm or [])]


def _write_bio(run, gen_id: int, res) -> None:
    run.write_rows(T.BIO_STRENGTHS, [(gen_id, res.fatigue, res.hebbian)])
    if res.pool is not None:
        run.write_rows(T.BIO_POOL, pool_rows(gen_id, res))
    if res.fast_norm is not None:
        run.write_rows(T.BIO_FAST_NORM, fast_norm_rows(gen_id, res))


def save_dose_run(store, config: dict, items: Iterable[DoseItem], *, model: str, dataset: str,
                  parent: str | None = None, progress=None, vector=None) -> tuple[str, dict]:
    """Write (prompt_line, prompt, seed, results) items as one ``dose`` run; return (run_id, summary).

    ``items`` may be a generator (the batch job generates while it writes); ``progress(k)`` is
    called after each item. Where the config has bio strengths, each generation's strengths and
    its mechanisms' state go to the bio tables too; with a steering ``vector`` ``(layer, values)``,
    the vector and each generation's steering strength go to the steering tables.
    """
    mechanisms = ",".join(config.get("mechanisms", []))
    with_bio = any(v for v in [*config.get("fatigue", []), *config.get("hebbian", [])])
    means: dict[str, list[float]] = {}
    gen_id = 0
    with store.begin_run("dose", config=config, model=model, dataset=dataset, parent=parent) as run:
        if vector is not None:
            run.write_rows(T.STEERING_VECTOR, [(vector[0], d, float(v)) for d, v in enumerate(vector[1])])
        for k, (line, prompt, seed, results) in enumerate(items):
            for res in results:
                run.log_generation(gen_id, prompt_line=line, prompt=prompt, intensity=res.intensity, seed=seed,
                                   mechanisms=mechanisms, text=res.text, token_ids=res.token_ids,
                                   token_texts=res.token_texts, entropy=res.entropy,
                                   layer_entropy=res.layer_entropy, stopped=res.stopped)
                if with_bio:
                    _write_bio(run, gen_id, res)
                if vector is not None:
                    run.write_rows(T.STEERING_ROWS, [(gen_id, float(res.steering))])
                means.setdefault(summary_key(res), []).append(res.mean_entropy)
                gen_id += 1
            if progress is not None:
                progress(k)
        summary = {f"mean_entropy@{k}": float(np.nanmean(v)) for k, v in means.items() if v}
        summary.update(generations=gen_id, skipped_prompts=len(config.get("skipped", [])))
        run.finish(summary)
    return run.run_id, summary

"""The dose page's frames of live results, with the columns of the stored tables
(``RunReader.generations()`` etc.), so that live and stored runs are shown by the same code."""

from __future__ import annotations

import pandas as pd

from psilonet.generation.dose_config import row_label
from psilonet.store import tables as T
from psilonet.store.dose_runs import DoseItem, fast_norm_rows, pool_rows


def result_frames(items: list[DoseItem]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(generations, token_entropy, layer_entropy) frames of in-memory results."""
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


def bio_frames(items: list[DoseItem]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(bio_strengths, bio_pool, bio_fast_norm) frames of in-memory results, numbered like
    :func:`result_frames` and with the columns of the stored bio tables (empty without bio)."""
    strengths, pool, norms = [], [], []
    gen_id = 0
    for item in items:
        for res in item.results:
            strengths.append((gen_id, res.fatigue, res.hebbian))
            pool += pool_rows(gen_id, res)
            norms += fast_norm_rows(gen_id, res)
            gen_id += 1
    if not any(f or h for _, f, h in strengths):
        strengths = []
    return (pd.DataFrame(strengths, columns=list(T.BIO_STRENGTHS.names)),
            pd.DataFrame(pool, columns=list(T.BIO_POOL.names)),
            pd.DataFrame(norms, columns=list(T.BIO_FAST_NORM.names)))


def steering_frame(items: list[DoseItem]) -> pd.DataFrame:
    """Each live generation's steering strength (``gen_id, strength``, numbered like
    :func:`result_frames`, as ``RunReader.steering_rows()``); empty when no row was steered."""
    rows = [res.steering for item in items for res in item.results]
    if not any(rows):
        return pd.DataFrame(columns=list(T.STEERING_ROWS.names))
    return pd.DataFrame(list(enumerate(rows)), columns=list(T.STEERING_ROWS.names))


def label_rows(gens: pd.DataFrame, strengths: pd.DataFrame | None, steering: pd.DataFrame | None = None) -> pd.DataFrame:
    """``gens`` (generations frame) with each row's ``fatigue``, ``hebbian``, ``steering`` and a
    ``label`` naming its dose, bio and steering strengths, where the run has bio rows
    (``strengths`` as :func:`bio_frames` or ``RunReader.bio_strengths()``) or steering rows
    (``steering`` as :func:`steering_frame` or ``RunReader.steering_rows()``); unchanged
    otherwise, so charts key rows by intensity."""
    bio_rows = strengths is not None and not strengths.empty
    steered = steering is not None and not steering.empty
    if not (bio_rows or steered):
        return gens
    out = gens.merge(strengths, on="gen_id", how="left") if bio_rows else gens.assign(fatigue=0.0, hebbian=0.0)
    out = (out.merge(steering.rename(columns={"strength": "steering"}), on="gen_id", how="left") if steered
           else out.assign(steering=0.0))
    out = out.fillna({"fatigue": 0.0, "hebbian": 0.0, "steering": 0.0})
    out["label"] = [row_label(i, f, h, s) for i, f, h, s in zip(out.intensity, out.fatigue, out.hebbian, out.steering)]
    return out

"""The decode loop on a tiny random model: determinism, batching, sampling and stopping."""

from __future__ import annotations

import pytest

from psilonet.generation import decoding as generation
from psilonet.generation.decoding import SamplingConfig

PROMPT = [5, 17, 3, 42, 8]


def tokens_of(model, cfg, batch=1, stop=()):
    rows = [[] for _ in range(batch)]
    for step in generation.decode(model, PROMPT, generation.DecodeConfig(cfg, batch=batch, stop=stop)):
        for r, t in enumerate(step.tokens):
            rows[r].append(t)
    return rows


def test_greedy_matches_argmax_of_full_forward(tiny_model):
    import mlx.core as mx

    out = tokens_of(tiny_model, SamplingConfig(max_tokens=6))[0]
    seq = list(PROMPT)
    for _ in range(6):
        seq.append(mx.argmax(tiny_model(mx.array([seq]))[0, -1]).item())
    assert out == seq[len(PROMPT):]


def test_sampling_is_seeded_and_batch_rows_equal_single_runs(tiny_model):
    cfg = SamplingConfig(temperature=1.0, max_tokens=8, seed=11)
    batch = tokens_of(tiny_model, cfg, batch=3)
    assert batch == tokens_of(tiny_model, cfg, batch=3)
    for r in range(3):
        single = tokens_of(tiny_model, SamplingConfig(temperature=1.0, max_tokens=8, seed=11 + r))[0]
        assert batch[r] == single
    assert batch[0] != batch[1]


def test_tiny_top_p_is_greedy(tiny_model):
    greedy = tokens_of(tiny_model, SamplingConfig(max_tokens=6))
    assert tokens_of(tiny_model, SamplingConfig(temperature=1.0, top_p=1e-6, max_tokens=6, seed=5)) == greedy


def test_stops_when_every_row_stopped(tiny_model):
    first = tokens_of(tiny_model, SamplingConfig(max_tokens=6))[0][0]
    steps = list(generation.decode(tiny_model, PROMPT, generation.DecodeConfig(SamplingConfig(max_tokens=6), stop={first})))
    assert len(steps) == 1


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(max_tokens=0)])
def test_bad_sampling_config(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_empty_prompt_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        next(generation.decode(tiny_model, [], generation.DecodeConfig(SamplingConfig())))


"""Steering vectors (psilonet.generation.steering): difference of means, per-row strengths in the
plain loop and the compiled step, beside doses."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from psilonet.generation import steering as S
from psilonet.generation.decoding import DecodeConfig, decode
from psilonet.generation.sampling import SamplingConfig
from psilonet.generation.perturb import Doser
from psilonet.model import forward
from tests.conftest import make_tiny_model

PROMPT = [5, 17, 33, 2, 61, 8]


class Tok:
    def encode(self, text):
        return [ord(c) % 97 for c in text]


def test_vector_is_the_difference_of_pooled_means():
    model = make_tiny_model()
    v = S.steering_vector(model, Tok(), ["happy day", "joy"], ["sad night"], layer=2)
    states = lambda t: np.array(forward.hidden_states(model, mx.array([Tok().encode(t)]))[3][0])
    want = np.concatenate([states("happy day"), states("joy")]).mean(0) - states("sad night").mean(0)
    np.testing.assert_allclose(v, want, atol=1e-5)
    assert v.shape == (64,) and np.abs(v).max() > 0


def run(model, doser, steps=5, compiled=None):
    out = list(decode(model, PROMPT, DecodeConfig(SamplingConfig(temperature=0.0, max_tokens=steps), doser=doser,
                                              track=True, compiled=compiled)))
    return np.array([s.tokens for s in out]), np.array([s.entropy for s in out])


@pytest.mark.parametrize("compiled", [False, True])
def test_strength_zero_is_sober_bit_for_bit_and_rows_are_independent(compiled):
    model = make_tiny_model(seed=1)
    v = np.random.default_rng(0).standard_normal(64).astype(np.float32) * 4
    strengths = [0.0, 1.0, -2.0, 0.0]
    doser = S.SteeredDoser(Doser([0.0] * 4, [0] * 4, 6, 64), v, [2, 3], strengths)
    tokens, entropy = run(model, doser, compiled=compiled)
    sober_tokens, sober_entropy = run(model, Doser([0.0] * 4, [0] * 4, 6, 64), compiled=compiled)
    assert (tokens[:, 0] == sober_tokens[:, 0]).all() and (entropy[:, 0] == sober_entropy[:, 0]).all()
    assert (entropy[:, 3] == sober_entropy[:, 3]).all()
    assert (entropy[:, 1] != sober_entropy[:, 1]).any()  # steering moved the row
    for r in (1, 2):  # alone, a row gives what it gives in the batch
        alone, alone_entropy = run(model, S.SteeredDoser(Doser([0.0], [0], 6, 64), v, [2, 3], [strengths[r]]),
                                   compiled=compiled)
        assert (alone[:, 0] == tokens[:, r]).all()
        np.testing.assert_allclose(alone_entropy[:, 0], entropy[:, r], atol=1e-4)


def test_steering_on_top_of_a_dose_keeps_the_dose_row():
    model = make_tiny_model(seed=2)
    v = np.ones(64, np.float32)
    dose = lambda: Doser([0.5, 0.5], [3, 3], 6, 64)
    tokens, entropy = run(model, S.SteeredDoser(dose(), v, [1], [0.0, 2.0]), compiled=False)
    dosed, dosed_entropy = run(model, dose(), compiled=False)
    assert (tokens[:, 0] == dosed[:, 0]).all() and (entropy[:, 0] == dosed_entropy[:, 0]).all()


def test_bad_input_names_the_problem():
    model = make_tiny_model()
    with pytest.raises(S.SteeringError, match="prompts B: the set is empty"):
        S.steering_vector(model, Tok(), ["a"], ["  ", ""], layer=1)
    with pytest.raises(S.SteeringError, match="different widths \\(64 and 32\\)"):
        S.difference_of_means(np.ones((3, 64)), np.ones((2, 32)))
    with pytest.raises(S.SteeringError, match="prompts A: the set is empty"):
        S.difference_of_means(np.ones((0, 64)), np.ones((2, 64)))
    with pytest.raises(S.SteeringError, match="layer: 6 is out of range"):
        S.steering_vector(model, Tok(), ["a"], ["b"], layer=6)
    with pytest.raises(S.SteeringError, match="vector: has 32 dimensions"):
        S.check_vector(np.ones(32), model, [1])
    with pytest.raises(S.SteeringError, match="layers: 9 is out of range"):
        S.check_vector(np.ones(64), model, [9])
    with pytest.raises(S.SteeringError, match="strengths: each must be in"):
        S.check_strengths([1.0, float("nan")])


# ------------------------------------------------------------------ jobs.steer


def test_job_stores_the_vector_the_rows_and_their_cost(tiny_model_dir, tmp_path, capsys):
    from jobs import steer
    from psilonet.store import Store
    from psilonet.store import tables as T

    (tmp_path / "a.txt").write_text("a happy day\njoy and light\n")
    assert steer.main(["--model", str(tiny_model_dir), "--a-file", str(tmp_path / "a.txt"), "--b", "a sad night",
                       "--layer", "2", "--strengths", "0", "3", "--prompt", "Hello", "--no-chat", "--max-tokens", "3",
                       "--eval-windows", "2", "--dose-intensities", "0.2", "--data-dir", str(tmp_path)]) == 0
    store = Store(tmp_path)
    run = store.list_runs(kind="steering").iloc[0]
    with store.open_run(run.run_id) as reader:
        vector = reader.rows(T.STEERING_VECTOR)
        rows, cost, gens = reader.rows(T.STEERING_ROWS), reader.rows(T.STEERING_COST), reader.generations()
    assert len(vector) == 64 and set(vector.layer) == {2} and list(rows.strength) == [0.0, 3.0]
    assert len(gens) == 2 and list(cost.mechanism) == ["dose", "steer", "steer"]
    by = cost.set_index(["mechanism", "strength"]).loss
    assert by[("steer", 3.0)] != by[("steer", 0.0)]


@pytest.mark.parametrize("argv, message", [
    (["--b", "x"], "--a: give set A once"),
    (["--a", "x", "--a-corpus", "python-docs", "--b", "y"], "--a: give set A once"),
    (["--a", "  ", "--b", "y"], "--a: is empty"),
    (["--a", "x", "--b-file", "nope.txt"], "--b-file: nope.txt does not exist"),
    (["--a", "x", "--b", "y", "--strengths", "1000"], "--strengths: each must be in [-64, 64], got 1000"),
    (["--a", "x", "--b", "y", "--layer", "9"], "--layer: 9 is out of range"),
])
def test_job_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, argv, message):
    from jobs import steer
    from psilonet.store import Store

    args = ["--model", str(tiny_model_dir), "--prompt", "Hi", "--data-dir", str(tmp_path), *argv]
    if "--layer" not in argv:
        args += ["--layer", "1"]
    assert steer.main(args) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert Store(tmp_path).list_runs().empty

"""Activation patching between sober and dosed rows (psilonet.analysis.patching, jobs.patch)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from jobs import patch as patch_job
from psilonet.analysis import patching as P
from tests.conftest import make_tiny_model

TOKENS = list(np.random.default_rng(0).integers(0, 97, 18))
EVERY = frozenset(range(6))


@pytest.mark.parametrize("mechanism, strength", [("dose", 0.5), ("fatigue", 1.0), ("hebbian", 1.0)])
def test_restoring_every_layer_is_sober_and_none_is_dosed(mechanism, strength):
    model = make_tiny_model()
    plans = [P.Plan(), P.Plan(EVERY), P.Plan(EVERY, EVERY), P.Plan(EVERY), P.Plan(EVERY, EVERY, -1)]
    logits = P.patched_logits(model, TOKENS, plans, mechanism, strength)
    assert mx.array_equal(logits[2], logits[0]).item()  # every layer restored: the sober row, bit for bit
    np.testing.assert_allclose(np.array(logits[3]), np.array(logits[1]), atol=1e-5)  # none restored: dosed
    assert float(mx.abs(logits[1] - logits[0]).max()) > 1e-2  # the mechanism did change the prediction
    # Restoring the last position at every layer is enough for the last position's prediction
    # only up to what attention carried over from dosed earlier positions.
    assert P.kl(logits[:1], logits[4:5])[0] < P.kl(logits[:1], logits[1:2])[0]
    # A row's result does not depend on its neighbours.
    alone = P.patched_logits(model, TOKENS, [P.Plan(), P.Plan(frozenset([2]), frozenset([3]))], mechanism, strength)
    np.testing.assert_allclose(np.array(alone[1]), np.array(
        P.patched_logits(model, TOKENS, [P.Plan(), P.Plan(EVERY), P.Plan(frozenset([2]), frozenset([3]))],
                         mechanism, strength)[2]), atol=1e-5)


def test_profile_fractions_follow_their_definitions():
    model = make_tiny_model(seed=1)
    rows = P.profile(model, TOKENS, "dose", 0.6, seed=3)
    assert [r["layer"] for r in rows] == list(range(6))
    logits = P.patched_logits(model, TOKENS, P.profile_plans(6), "dose", 0.6, seed=3)
    total = P.kl(logits[:1], logits[1:2])[0]
    assert rows[0]["kl_dosed"] == pytest.approx(total)
    assert rows[2]["restored"] == pytest.approx(1 - P.kl(logits[:1], logits[4:5])[0] / total)
    assert rows[2]["injected"] == pytest.approx(P.kl(logits[:1], logits[10:11])[0] / total)
    assert rows[-1]["restored"] == pytest.approx(1.0)  # the last block's output is what the head reads
    with pytest.raises(P.PatchError, match="layer: 6 is out of range"):
        P.patched_logits(model, TOKENS, [P.Plan(), P.Plan(frozenset([6]))])
    with pytest.raises(P.PatchError, match="position: 40 is outside"):
        P.profile(model, TOKENS, "dose", 0.5, position=40)


def test_job_prints_one_object_per_layer(tiny_model_dir, capsys):
    assert patch_job.main(["--model", str(tiny_model_dir), "--prompt", "Hello there, friend", "--intensity", "0.5",
                           "--no-chat", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["layer"] for r in rows] == list(range(6)) and {"restored", "injected"} <= set(rows[0])


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "  ", "--intensity", "0.2"], "--prompt: is empty"),
    (["--prompt", "Hi", "--intensity", "1.5"], "--intensity: a dose intensity must be in (0, 1], got 1.5"),
    (["--prompt", "Hi", "--intensity", "0"], "--intensity: a dose intensity must be in (0, 1], got 0"),
    (["--prompt", "Hi", "--intensity", "3", "--mechanism", "fatigue"], "--intensity: a fatigue strength must be in (0, 2]"),
    (["--prompt", "Hi there", "--intensity", "0.3", "--position", "99", "--no-chat"], "--position: 99 is outside"),
])
def test_bad_input_is_one_line(tiny_model_dir, capsys, argv, message):
    assert patch_job.main(["--model", str(tiny_model_dir), *argv]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], lines

"""Bio-inspired interventions: fatigue and Hebbian fast weights, against their definitions and
on tiny random models of every supported family."""

from __future__ import annotations

import numpy as np
import pytest

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from conftest import make_tiny_model
from psilonet.generation import bio

FAMILIES = ("llama", "qwen2", "qwen3")


def tiny(family: str = "llama", seed: int = 0):
    return make_tiny_model(seed, model_type=family)


def greedy(model, prompt: list[int], steps: int, b: bio.Bio | None, rows: int = 1):
    """Greedy tokens (rows, steps) and every step's last logits, through the KV cache."""
    cache = make_prompt_cache(model)
    x = mx.array([prompt] * rows)
    tokens, logits = [], []
    for _ in range(steps):
        out = bio.logits(model, x, cache=cache, bio=b)[:, -1, :] if b is not None else model(x, cache=cache)[:, -1, :]
        x = mx.argmax(out, axis=-1)[:, None]
        mx.eval(x, out)
        tokens.append(x[:, 0].tolist())
        logits.append(out)
    return np.array(tokens).T, logits


PROMPT = [5, 17, 33, 8, 61, 5, 17, 33, 8, 61, 5, 17, 33]


# ------------------------------------------------------------------ fatigue


def reference_scan(scores, allowed, s, p: bio.FatigueParams):
    """The definition, one query at a time in float64."""
    b, h, tq, tk = scores.shape
    pool = np.ones((b, h, tk))
    probs = np.zeros_like(scores)
    for t in range(tq):
        z = scores[:, :, t] + s[:, None, None] * np.log(np.maximum(pool, p.eps))
        z = np.where(allowed[t], z, -np.inf)
        e = np.exp(z - z.max(-1, keepdims=True))
        probs[:, :, t] = e / e.sum(-1, keepdims=True)
        pool = np.clip(pool - p.k_use * probs[:, :, t] + (1 - pool) / p.tau_rrp, 0, 1)
    return probs, pool


def test_fatigue_scan_matches_its_definition():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 2, 9, 9)).astype(np.float32) * 3
    s = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    allowed = np.tril(np.ones((9, 9), dtype=bool))
    params = bio.FatigueParams()
    probs, pool = bio.fatigue_scan(mx.array(scores), mx.array(allowed), mx.ones((3, 2, 9)), mx.array(s), params)
    ref_probs, ref_pool = reference_scan(scores.astype(np.float64), allowed, s.astype(np.float64), params)
    np.testing.assert_allclose(np.array(probs), ref_probs, atol=2e-6)
    np.testing.assert_allclose(np.array(pool), ref_pool, atol=2e-6)
    assert np.all(np.array(pool)[..., :] <= 1) and np.array(pool)[1:].min() < 0.95  # fatigued rows drained


def test_fatigue_drains_repeated_keys_then_recovers_at_tau_rrp():
    """Keys 0..3 (a phrase the head keeps matching) hold most of the attention: under fatigue
    their share falls step after step as their pool drains; once hidden (no longer attended)
    each one's deficit 1 - r shrinks by exactly (1 - 1/tau_rrp) per step."""
    params = bio.FatigueParams()
    tk, attended, hidden = 8, 30, 40
    tq = attended + hidden
    scores = np.zeros((2, 1, tq, tk), dtype=np.float32)
    scores[..., :4] = 3.0  # the repeated phrase
    allowed = np.ones((tq, tk), dtype=bool)
    allowed[attended:, :4] = False  # later queries no longer see the phrase
    probs, _ = bio.fatigue_scan(mx.array(scores), mx.array(allowed), mx.ones((2, 1, tk)),
                                mx.array([0.0, 1.0]), params)
    mass = np.array(probs)[:, 0, :attended, :4].sum(-1)  # (row, step)
    assert np.allclose(mass[0], mass[0, 0])  # sober: the same share every step
    assert np.all(np.diff(mass[1]) < 0) and mass[1, -1] < mass[0, -1] - 0.03  # fatigued: falls
    # Recovery: replay the scan and read the pool after every hidden step.
    _, pool_at_hide = bio.fatigue_scan(mx.array(scores[:, :, :attended]), mx.array(allowed[:attended]),
                                       mx.ones((2, 1, tk)), mx.array([0.0, 1.0]), params)
    _, pool_end = bio.fatigue_scan(mx.array(scores[:, :, attended:]), mx.array(allowed[attended:]),
                                   pool_at_hide, mx.array([0.0, 1.0]), params)
    deficit_start = 1 - np.array(pool_at_hide)[1, 0, :4]
    deficit_end = 1 - np.array(pool_end)[1, 0, :4]
    assert deficit_start.min() > 0.3
    np.testing.assert_allclose(deficit_end, deficit_start * (1 - 1 / params.tau_rrp) ** hidden, rtol=1e-4)


def test_every_head_spends_the_same_total_pool():
    """Why the page shows the attended pool: without empty pools, the summed deficit after t
    queries is k_use * tau * (1 - (1 - 1/tau)^t) in every head, whatever it attends to."""
    params = bio.FatigueParams()
    rng = np.random.default_rng(4)
    scores = mx.array(rng.normal(size=(1, 3, 50, 60)).astype(np.float32))
    _, pool = bio.fatigue_scan(scores, mx.ones((50, 60), dtype=mx.bool_), mx.ones((1, 3, 60)), mx.array([0.5]), params)
    expected = params.k_use * params.tau_rrp * (1 - (1 - 1 / params.tau_rrp) ** 50)
    np.testing.assert_allclose((1 - np.array(pool)).sum(-1), expected, rtol=1e-4)


def test_fatigue_in_a_model_drains_the_repeated_phrase_over_decode_steps():
    """Layer 0 sees the same queries with and without fatigue (its input is the embedding), so
    the fatigued/sober attention on the prompt's repeated phrase isolates the pool: it falls
    as decoding keeps attending to it."""
    model = tiny()
    sober_p, tired_p = {}, {}
    sober = bio.Bio([0.0], [0.0], 6, fatigue_on=True, patterns=sober_p)
    tired = bio.Bio([1.0], [0.0], 6, patterns=tired_p)
    for b, patterns, store in ((sober, sober_p, []), (tired, tired_p, [])):
        cache = make_prompt_cache(model)
        bio.logits(model, mx.array([PROMPT]), cache=cache, bio=b)
        for tok in [5, 17, 33, 8, 61, 5, 17, 33, 8, 61]:  # teacher-forced: the phrase again
            bio.logits(model, mx.array([[tok]]), cache=cache, bio=b)
            store.append(float(patterns[0][0, :, -1, :len(PROMPT)].sum(-1).mean()))
        b.store = store
    ratio = np.array(tired.store) / np.array(sober.store)
    assert ratio[-1] < ratio[0] < 1
    assert np.mean(np.diff(ratio) < 0) >= 0.8
    pool0 = np.array(tired.pools[0])[0]  # (H, Tk)
    assert pool0[:, :len(PROMPT)].mean() < pool0[:, -3:].mean()  # old, much-used keys are the most tired


# ------------------------------------------------------------------ Hebbian


def reference_hebbian(x, y, s, p: bio.HebbianParams):
    """The definition token by token in float64: read W, write the decayed ring."""
    b, t, d = y.shape
    xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
    rms = np.sqrt((y ** 2).mean(-1))
    terms: list[list] = [[] for _ in range(b)]
    y_post = np.zeros_like(y)
    for r in range(b):
        act = 0.0
        for k in range(t):
            w = sum((c * np.outer(u, v) for c, u, v in terms[r]), np.zeros((d, d)))
            y_post[r, k] = y[r, k] + s[r] * xn[r, k] @ w
            act += rms[r, k]
            g = 1 / (1 + np.exp(-p.gain * (rms[r, k] / (act / (k + 1)) - p.theta)))
            terms[r] = [(c * p.decay, u, v) for c, u, v in terms[r]] + [(p.eta * g, xn[r, k], y_post[r, k])]
            terms[r] = terms[r][-p.rank:]
    return y_post, [sum((c * np.outer(u, v) for c, u, v in tr), np.zeros((d, d))) for tr in terms]


def test_hebbian_prefill_and_decode_follow_the_definition_and_stay_rank_bounded():
    rng = np.random.default_rng(1)
    params = bio.HebbianParams(rank=4)
    b, t, d = 2, 11, 12
    x = rng.normal(size=(b, t, d))
    y = rng.normal(size=(b, t, d)) * rng.uniform(0.5, 2, size=(b, t, 1))
    s = np.array([0.5, 1.0])
    ref_y, ref_w = reference_hebbian(x, y, s, params)
    # Whole sequence at once (the prompt's triangular solve) ...
    y_all, ring = bio.hebbian_update(mx.array(x, dtype=mx.float32), mx.array(y, dtype=mx.float32),
                                     bio.Ring.empty(b, d), mx.array(s), 0, params)
    np.testing.assert_allclose(np.array(y_all), ref_y, atol=1e-4)
    np.testing.assert_allclose(np.array(ring.matrix(t, params)), np.stack(ref_w), atol=1e-4)
    # ... and a 6-token prompt followed by single-token decode steps give the same thing.
    y_pre, ring2 = bio.hebbian_update(mx.array(x[:, :6], dtype=mx.float32), mx.array(y[:, :6], dtype=mx.float32),
                                      bio.Ring.empty(b, d), mx.array(s), 0, params)
    outs = [y_pre]
    for k in range(6, t):
        w_before = np.array(ring2.matrix(k, params))
        oldest = (np.array(ring2.eg[:, 0]) * params.decay ** (k - 1 - ring2.pos[0]))[:, None, None] * \
            np.einsum("bi,bj->bij", np.array(ring2.xn[:, 0]), np.array(ring2.y[:, 0]))
        out, ring2 = bio.hebbian_update(mx.array(x[:, k:k + 1], dtype=mx.float32),
                                        mx.array(y[:, k:k + 1], dtype=mx.float32), ring2, mx.array(s), k, params)
        outs.append(out)
        w_after = np.array(ring2.matrix(k + 1, params))
        newest = np.array(ring2.eg[:, -1])[:, None, None] * np.einsum("bi,bj->bij", np.array(ring2.xn[:, -1]),
                                                                     np.array(ring2.y[:, -1]))
        # W <- lambda W + eta g x^ (x) y_post, the oldest of R terms leaving the ring.
        np.testing.assert_allclose(w_after, params.decay * (w_before - oldest) + newest, atol=1e-5)
        assert max(np.linalg.matrix_rank(w, tol=1e-5) for w in w_after) <= params.rank
    np.testing.assert_allclose(np.array(mx.concatenate(outs, axis=1)), ref_y, atol=1e-4)
    np.testing.assert_allclose(np.array(ring2.norm(t, params)), [np.linalg.norm(w) for w in ref_w], rtol=1e-4)


def test_hebbian_decays_with_lambda_without_new_writes():
    params = bio.HebbianParams(rank=16, decay=0.9)
    rng = np.random.default_rng(2)
    _, ring = bio.hebbian_update(mx.array(rng.normal(size=(1, 5, 8)), dtype=mx.float32),
                                 mx.array(rng.normal(size=(1, 5, 8)), dtype=mx.float32),
                                 bio.Ring.empty(1, 8), mx.array([1.0]), 0, params)
    norms = [float(ring.norm(5 + n, params)[0]) for n in range(6)]
    np.testing.assert_allclose(np.array(norms[1:]) / np.array(norms[:-1]), 0.9, rtol=1e-5)


# ------------------------------------------------------------------ in the model, every family


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_sober_bit_for_bit(family):
    model = tiny(family)
    plain_tokens, plain_logits = greedy(model, PROMPT, 6, None, rows=3)
    forced = bio.Bio([0.0] * 3, [0.0] * 3, 6, fatigue_on=True, hebbian_on=True)
    tokens, logits = greedy(model, PROMPT, 6, forced, rows=3)
    assert (tokens == plain_tokens).all()
    assert all(mx.array_equal(a, b).item() for a, b in zip(logits, plain_logits))
    # A sober row beside dosed rows is still the plain model's row, bit for bit.
    mixed = bio.Bio([0.0, 1.0, 0.5], [0.0, 0.0, 1.0], 6)
    tokens, logits = greedy(model, PROMPT, 6, mixed, rows=3)
    assert all(mx.array_equal(a[0], b[0]).item() for a, b in zip(logits, plain_logits))
    assert all(float(mx.abs(a[1:] - b[1:]).max()) > 1e-3 for a, b in zip(logits, plain_logits))  # dosed rows moved


@pytest.mark.parametrize("family", FAMILIES)
def test_a_row_gives_the_same_tokens_alone_and_in_a_batch(family):
    model = tiny(family, seed=3)
    fatigue, hebbian = [0.0, 1.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.5]
    together, logits = greedy(model, PROMPT, 8, bio.Bio(fatigue, hebbian, 6), rows=4)
    for r in range(4):
        alone, alone_logits = greedy(model, PROMPT, 8, bio.Bio([fatigue[r]], [hebbian[r]], 6))
        assert (alone[0] == together[r]).all(), r
        # Not only the argmax: the whole distribution, to float rounding of the batch shape.
        np.testing.assert_allclose(np.array(mx.stack([a[0] for a in alone_logits])),
                                   np.array(mx.stack([b[r] for b in logits])), atol=2e-5)
    assert len({tuple(np.round(np.array(logits[-1][r]), 3)) for r in range(4)}) == 4  # the rows differ


def test_decode_with_the_cache_matches_the_whole_sequence():
    """The pool and the ring carried in the cache state give what one pass over the whole
    sequence gives (the prompt's scan and solve equal the step-by-step recursion)."""
    model = tiny("qwen3", seed=1)
    seq = mx.array([PROMPT + [7, 9, 11, 2]])
    whole = bio.logits(model, seq, bio=bio.Bio([1.0], [1.0], 6))
    b = bio.Bio([1.0], [1.0], 6)
    cache = make_prompt_cache(model)
    parts = [bio.logits(model, seq[:, :len(PROMPT)], cache=cache, bio=b)]
    parts += [bio.logits(model, seq[:, k:k + 1], cache=cache, bio=b) for k in range(len(PROMPT), seq.shape[1])]
    np.testing.assert_allclose(np.array(mx.concatenate(parts, axis=1)), np.array(whole), atol=1e-4)
    summary = b.summary()
    assert summary["pool"].shape == (1, 6, 4) and summary["fast_norm"].shape == (1, 6)
    assert float(summary["pool"].max()) <= 1 and float(summary["fast_norm"].min()) > 0


def test_bad_strengths_and_models_fail_with_one_line():
    with pytest.raises(ValueError, match="fatigue: each must be in"):
        bio.Bio([2.5], [0.0], 6)
    with pytest.raises(ValueError, match="hebbian: each must be in"):
        bio.Bio([0.0], [float("nan")], 6)
    with pytest.raises(ValueError, match="strengths"):
        bio.Bio([0.0, 0.1], [0.0], 6)
    with pytest.raises(ValueError, match="tau_rrp"):
        bio.FatigueParams(tau_rrp=0.5)


# ------------------------------------------------------------------ beside the doses


def test_bio_rows_batch_with_doses_and_keep_their_state(tiny_model_dir):
    from psilonet.generation.decoding import SamplingConfig
    from psilonet.generation.dosing import generate_doses
    from psilonet.model import loading

    model, tokenizer = loading.load_model(str(tiny_model_dir))
    sampling = SamplingConfig(max_tokens=6, temperature=0.8, seed=3)
    rows = dict(intensities=[0.0, 0.3, 0.0, 0.3], fatigue=[0.0, 0.0, 1.0, 1.0], hebbian=[0.0, 0.0, 0.5, 0.5])
    batch = generate_doses(model, tokenizer, "Once upon a time", rows["intensities"], sampling=sampling,
                           fatigue=rows["fatigue"], hebbian=rows["hebbian"], chat=False)
    for r in (0, 3):
        alone = generate_doses(model, tokenizer, "Once upon a time", [rows["intensities"][r]], sampling=sampling,
                               fatigue=[rows["fatigue"][r]], hebbian=[rows["hebbian"][r]], chat=False)[0]
        assert alone.token_ids == batch[r].token_ids
        np.testing.assert_allclose(alone.entropy, batch[r].entropy, atol=1e-4)
    assert batch[2].label == "intensity 0 + fatigue 1 + hebbian 0.5"
    assert batch[0].pool is None and batch[1].fast_norm is None  # state only where the mechanism is on
    assert np.array(batch[3].pool).shape == np.array(batch[3].pool_attended).shape == (6, 4)
    assert len(batch[3].fast_norm) == 6 and min(batch[3].fast_norm) > 0
    assert 0 < np.min(batch[3].pool) < 1 and 0 < np.min(batch[3].pool_attended) < 1


def test_dose_job_records_bio_strengths_and_state(tiny_model_dir, tmp_path, capsys):
    from jobs import dose as dose_job
    from psilonet.store import Store

    assert dose_job.main(["--model", str(tiny_model_dir), "--prompt", "Hello", "--intensities", "0", "--fatigue", "0",
                          "1", "--hebbian", "0.5", "--max-tokens", "4", "--no-chat", "--data-dir", str(tmp_path)]) == 0
    assert "intensity 0 + fatigue 1 + hebbian 0.5 |" in capsys.readouterr().out
    store = Store(tmp_path)
    run = store.list_runs(kind="dose").iloc[0]
    assert set(run.summary) >= {"mean_entropy@0+hebbian0.5", "mean_entropy@0+fatigue1+hebbian0.5"}
    assert run.config["fatigue"] == [0.0, 1.0] and run.config["hebbian"] == [0.5]
    with store.open_run(run.run_id) as reader:
        strengths, pool, norms = reader.bio_strengths(), reader.bio_pool(), reader.bio_fast_norm()
    assert strengths.values.tolist() == [[0, 0.0, 0.5], [1, 1.0, 0.5]]
    assert len(pool) == 6 * 4 and set(pool.gen_id) == {1}
    assert len(norms) == 2 * 6 and pool.level.between(0, 1).all()
    assert dose_job.main(["--model", str(tiny_model_dir), "--prompt", "Hello", "--fatigue", "3",
                          "--data-dir", str(tmp_path)]) == 2
    assert "--fatigue: each must be in [0, 2]" in capsys.readouterr().err

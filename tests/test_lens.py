"""The logit lens and attention patterns (psilonet.analysis.lens / attention, jobs.lens / jobs.attention)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from jobs import attention as attention_job
from jobs import lens as lens_job
from jobs import tuned_lens as tuned_job
from psilonet.analysis import attention as A
from psilonet.analysis import lens as L
from psilonet.analysis import tuned_lens as T
from psilonet.generation.bio import Bio
from psilonet.model import forward
from psilonet.model.skip import SkipConfig, SkipModel
from tests.conftest import make_tiny_model

TOKENS = np.array([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38], [2, 71, 82, 81, 82, 84, 59, 4, 52, 6]])
FAMILIES = {
    "llama": {},
    "llama-sliding": {"layer_types": ["sliding_attention", "full_attention"] * 3, "sliding_window": 3},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": False},
    "qwen3": {"model_type": "qwen3"},
}


def family_model(name: str, seed: int = 0):
    """A tiny model of the family whose norms are away from 1, so a skipped q/k norm shows."""
    model = make_tiny_model(seed=seed, **FAMILIES[name])
    mx.random.seed(seed + 7)
    norms = [(k, 1 + 0.5 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.parameters()) if "norm" in k]
    model.load_weights(norms, strict=False)
    return model


def skip_model(base, **cfg):
    model = SkipModel.from_base(base, SkipConfig(**{"distances": [1, 2], "skip_start": 2, "alpha": 0.5, **cfg}))
    mx.random.seed(5)
    params = [(k, mx.random.normal(v.shape) * 0.2) for k, v in tree_flatten(model.trainable_parameters())]
    model.load_weights(params, strict=False)
    return model


# ---------------------------------------------------------------------- logit lens

@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_last_layer_is_the_models_own_prediction(name):
    model = family_model(name)
    lens = L.logit_lens(model, TOKENS, top_k=4)
    states = forward.hidden_states(model, mx.array(TOKENS))
    own = model(mx.array(TOKENS)).astype(mx.float32)
    own_lp = np.array(own - mx.logsumexp(own, axis=-1, keepdims=True))
    last = np.array(L.layer_logprobs(model, states[-1]))
    np.testing.assert_array_equal(last, own_lp)  # the lens at L is the model's log-softmax, bit for bit
    np.testing.assert_array_equal(lens.top_ids[:, -1, :, 0], own_lp.argmax(-1))
    np.testing.assert_allclose(lens.top_p[:, -1], np.exp(np.sort(own_lp, -1)[..., ::-1][..., :4]), rtol=1e-6)
    assert (lens.kl_final[:, -1] == 0).all()
    p_next = np.exp(np.take_along_axis(own_lp[:, :-1], TOKENS[:, 1:, None], -1)[..., 0])
    np.testing.assert_allclose(lens.p_next[:, -1, :-1], p_next, rtol=1e-6)
    assert np.isnan(lens.p_next[:, :, -1]).all() and (lens.rank_next[:, :, -1] == 0).all()
    ranks = (own_lp[:, :-1] > np.log(p_next)[..., None]).sum(-1) + 1
    np.testing.assert_array_equal(lens.rank_next[:, -1, :-1], ranks)
    # Every layer: the entropy and KL by their definitions (nats), from that layer's state.
    for l in (0, 3):
        lp = np.array(L.layer_logprobs(model, states[l]), dtype=np.float64)
        np.testing.assert_allclose(lens.entropy[:, l], -(np.exp(lp) * lp).sum(-1), rtol=1e-4)
        kl = (np.exp(own_lp) * (own_lp - lp)).sum(-1)
        np.testing.assert_allclose(lens.kl_final[:, l], kl, rtol=1e-3, atol=1e-5)
        assert (lens.kl_final[:, l] > 0).all()
    assert lens.top_ids.shape == (2, 7, 10, 4)


def test_skip_model_lens_reads_its_blended_states():
    model = skip_model(family_model("llama"))
    lens = L.logit_lens(model, TOKENS)
    own = np.array(mx.argmax(model(mx.array(TOKENS)), axis=-1))
    np.testing.assert_array_equal(lens.top_ids[:, -1, :, 0], own)
    plain = L.logit_lens(model.base, TOKENS)
    # Before the first skip block (states 0..2) the read-outs are the base model's.
    np.testing.assert_array_equal(lens.entropy[:, :3], plain.entropy[:, :3])
    first = forward.hidden_states(model, mx.array(TOKENS))
    base = forward.hidden_states(model.base, mx.array(TOKENS))
    assert mx.array_equal(first[2], base[2]).item()
    assert not np.allclose(lens.entropy[:, -1], plain.entropy[:, -1], atol=1e-4)


@pytest.mark.parametrize("fatigue, hebbian", [(None, None), ([0.0, 1.0], None), (None, [0.0, 1.0])])
def test_sober_row_of_a_dosed_batch_is_the_baseline(fatigue, hebbian):
    model = family_model("llama")
    batch = np.repeat(TOKENS[:1], 2, axis=0)
    intensities = [0.0, 0.3] if fatigue is None and hebbian is None else [0.0, 0.0]
    hooks = L.side_hooks(model, intensities, fatigue=fatigue, hebbian=hebbian, seed=2)
    dosed = L.logit_lens(model, batch, hooks=hooks)
    sober = L.logit_lens(model, TOKENS[:1])
    for field in ("kl_final", "entropy", "top_p"):
        np.testing.assert_allclose(getattr(dosed, field)[0], getattr(sober, field)[0], atol=1e-5)
    np.testing.assert_array_equal(dosed.top_ids[0, :, :, 0], sober.top_ids[0, :, :, 0])
    assert not np.allclose(dosed.entropy[1, -1], sober.entropy[0, -1], atol=1e-4)  # the other row did change
    assert (dosed.kl_sober[0] == 0).all()
    lp0, lp1 = (np.array(L.layer_logprobs(model, st), dtype=np.float64)
                for st in (forward.hidden_states(model, mx.array(batch), hooks=hooks)[-1][r:r + 1] for r in (0, 1)))
    np.testing.assert_allclose(dosed.kl_sober[1, -1], (np.exp(lp0) * (lp0 - lp1)).sum(-1)[0], rtol=1e-3, atol=1e-6)
    assert dosed.kl_sober[1, -1].max() > 1e-4


def test_tuned_lens_starts_as_the_logit_lens_and_training_lowers_held_out_kl():
    model = family_model("llama")
    fresh = T.TunedLens.for_model(model)
    plain, tuned = L.logit_lens(model, TOKENS), L.logit_lens(model, TOKENS, tuned=fresh)
    for field in ("kl_final", "entropy", "top_p", "top_ids", "rank_next"):
        np.testing.assert_array_equal(getattr(tuned, field), getattr(plain, field))
    windows = np.random.default_rng(1).integers(0, 97, (24, 12))
    lens, history = T.train(model, windows[:16], steps=40, batch=8, lr=3e-3)
    kl = T.held_out_kl(model, lens, windows[16:])
    before = T.held_out_kl(model, fresh, windows[16:])
    np.testing.assert_allclose(before["tuned"], before["logit"], rtol=1e-6)
    np.testing.assert_allclose(kl["logit"], before["logit"], rtol=1e-6)
    assert history[-1] < history[0] and (kl["tuned"] < kl["logit"]).all(), (kl, history[:3], history[-3:])
    # The training objective (MLX) and the held-out figure (the lens's numpy statistics) agree.
    objective = np.array(T._kl_per_layer(model, None, T._states(model, windows[16:])))
    np.testing.assert_allclose(kl["logit"], objective, rtol=1e-4)


def test_least_squares_start_fits_every_layer_without_a_step():
    model = family_model("llama")
    windows = np.random.default_rng(1).integers(0, 97, (40, 12))
    lens, history = T.train(model, windows[:32], steps=0, init="lstsq")
    assert history == []
    kl = T.held_out_kl(model, lens, windows[32:])
    assert (kl["tuned"] < kl["logit"]).all(), kl
    with pytest.raises(ValueError, match="init: one of zero, lstsq"):
        T.train(model, windows, init="random")


# ---------------------------------------------------------------------- attention

def softmax_pattern(attn, x_q: mx.array, x_k: mx.array, window: int | None = None) -> np.ndarray:
    """softmax(q k^T * scale) recomputed in numpy from an attention module's own projections,
    its q/k norms (qwen3) and RoPE, with grouped-query heads and a causal (or windowed) mask."""
    b, t, _ = x_q.shape

    def heads(proj, x, n, norm):
        y = proj(x).reshape(b, t, n, -1)
        y = norm(y) if norm is not None else y
        return attn.rope(y.transpose(0, 2, 1, 3))

    q = np.array(heads(attn.q_proj, x_q, attn.n_heads, getattr(attn, "q_norm", None)), dtype=np.float64)
    k = np.array(heads(attn.k_proj, x_k, attn.n_kv_heads, getattr(attn, "k_norm", None)), dtype=np.float64)
    k = np.repeat(k, attn.n_heads // attn.n_kv_heads, axis=1)
    scores = q @ k.swapaxes(-1, -2) * attn.scale
    i, j = np.arange(t)[:, None], np.arange(t)[None]
    allowed = (j <= i) & ((i - j < window) if window else True)
    scores = np.where(allowed, scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_base_patterns_are_the_softmax_of_q_dot_k(name):
    model = family_model(name)
    states = forward.hidden_states(model, mx.array(TOKENS))
    for l in (0, 3):  # llama-sliding: layer 0 sees a 3-token window, layer 3 everything before it
        window = 3 if name == "llama-sliding" and l % 2 == 0 else None
        p = A.patterns(model, TOKENS, l)
        assert set(p) == {"base"} and p["base"].shape == (2, 4, 10, 10)
        np.testing.assert_allclose(p["base"].sum(-1), 1.0, atol=1e-5)
        layer = model.model.layers[l]
        x = layer.input_layernorm(states[l])
        np.testing.assert_allclose(p["base"], softmax_pattern(layer.self_attn, x, x, window), atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_skip_tap_patterns_read_state_l_minus_d(name):
    model = skip_model(family_model(name))
    states = forward.hidden_states(model, mx.array(TOKENS))
    p = A.patterns(model, TOKENS, 3)
    assert set(p) == {"base", 1, 2}
    layer = model.layers[3]
    norm = layer.input_layernorm
    for d in (1, 2):
        np.testing.assert_allclose(p[d].sum(-1), 1.0, atol=1e-5)
        want = softmax_pattern(model.blocks["l3"].attn, norm(states[3]), norm(states[3 - d]))
        np.testing.assert_allclose(p[d], want, atol=1e-5)
    assert not np.allclose(p[1], p[2], atol=1e-3)
    assert set(A.patterns(model, TOKENS, 1)) == {"base"}  # below skip_start: no taps
    with pytest.raises(ValueError, match="layer: 6 is out of range"):
        A.patterns(model, TOKENS, 6)


def test_fatigued_pattern_is_the_one_the_block_used():
    model = skip_model(family_model("llama"))
    batch = np.repeat(TOKENS[:1], 2, axis=0)
    tired = A.patterns(model, batch, 3, fatigue=[0.0, 1.5])
    plain = A.patterns(model, TOKENS[:1], 3)
    for tap in ("base", 1, 2):
        np.testing.assert_allclose(tired[tap][0], plain[tap][0], atol=1e-5)  # strength 0: the plain pattern
        np.testing.assert_allclose(tired[tap].sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(tired["base"][1], plain["base"][0], atol=1e-3)  # fatigue moved the attention
    # The fatigued probabilities are the ones whose weighted values the block added: o_proj(p v) + MLP.
    bio = Bio([0.0, 1.5], [0.0, 0.0], 6)
    states = forward.hidden_states(model.base, mx.array(batch), hooks=bio.hooks())
    base_tired = A.patterns(model.base, batch, 3, fatigue=[0.0, 1.5])["base"]
    layer = model.base.model.layers[3]
    x = layer.input_layernorm(states[3])
    _, v = forward.keys_values(layer.self_attn, x)
    heads = forward.grouped_values(mx.array(base_tired), v)
    h = states[3] + layer.self_attn.o_proj(forward.merge_heads(heads))
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    np.testing.assert_allclose(np.array(h), np.array(states[4]), atol=1e-4)


def test_summaries_follow_their_definitions():
    t = 4
    sink = np.zeros((1, 2, t, t))
    sink[0, 0, :, 0] = 1  # head 0 reads only position 0
    sink[0, 1] = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]  # head 1: uniform over the past
    s = A.summaries(sink)
    np.testing.assert_allclose(s["sink"][0], [1.0, np.mean([1 / 2, 1 / 3, 1 / 4])])
    np.testing.assert_allclose(s["entropy"][0], [0.0, np.mean(np.log([2, 3, 4]))])
    np.testing.assert_allclose(s["distance"][0], [np.mean([1, 2, 3]), np.mean([0.5, 1.0, 1.5])])
    real = A.summaries(A.patterns(family_model("qwen3"), TOKENS, 2)["base"])
    assert real["sink"].shape == (2, 4) and ((0 <= real["sink"]) & (real["sink"] <= 1)).all()
    assert (real["entropy"] <= np.log(10)).all() and (real["distance"] >= 0).all()
    with pytest.raises(ValueError, match="at least two positions"):
        A.summaries(np.ones((1, 1, 1, 1)))


# ---------------------------------------------------------------------- jobs

def test_lens_job_prints_one_object_per_layer_and_position(tiny_model_dir, capsys):
    assert lens_job.main(["--model", str(tiny_model_dir), "--prompt", "Hello there, friend", "--no-chat", "--json",
                          "--intensity", "0.3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    keys = {"layer", "position", "top1", "p_top1", "kl_final", "kl_sober", "entropy", "p_next", "rank_next", "row", "intensity"}
    assert keys <= set(rows[0])
    sober = [r for r in rows if r["intensity"] == 0]
    assert sorted({r["layer"] for r in sober}) == list(range(7))
    assert all(r["kl_final"] == 0 for r in sober if r["layer"] == 6)
    assert {r["intensity"] for r in rows} == {0.0, 0.3}
    assert all(r["kl_sober"] == 0 for r in sober) and max(r["kl_sober"] for r in rows) > 0


def test_attention_job_prints_one_object_per_head_and_position(tiny_model_dir, capsys):
    assert attention_job.main(["--model", str(tiny_model_dir), "--prompt", "Hello there, friend", "--no-chat",
                               "--json", "--layer", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"head", "tap", "position", "weights"} <= set(rows[0])
    assert {r["head"] for r in rows} == {0, 1, 2, 3} and {r["tap"] for r in rows} == {"base"}
    assert all(len(r["weights"]) == r["position"] + 1 and abs(sum(r["weights"]) - 1) < 1e-5 for r in rows)
    assert attention_job.main(["--model", str(tiny_model_dir), "--prompt", "Hello there, friend", "--no-chat",
                               "--json", "--layer", "2", "--fatigue", "1.5"]) == 0
    tired = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["fatigue"] for r in tired} == {0.0, 1.5} and len(tired) == 2 * len(rows)
    sober = [r for r in tired if r["fatigue"] == 0]
    assert all(np.allclose(a["weights"], b["weights"], atol=1e-5) for a, b in zip(sober, rows))


@pytest.mark.parametrize("job, argv, message", [
    (lens_job, ["--prompt", "Hi", "--lens", "tuned"], "--lens: the tuned lens is not trained"),
    (lens_job, ["--prompt", "  "], "--prompt: is empty"),
    (lens_job, ["--prompt", "Hi", "--intensity", "1.5"], "--intensity: must be in [0, 1], got 1.5"),
    (lens_job, ["--prompt", "Hi", "--top-k", "0"], "--top-k: must be >= 1"),
    (lens_job, ["--prompt", "Hi", "--run", "train-nope"], "--run:"),
    (lens_job, ["--prompt", "word " * 600, "--no-chat"], "over the model's context of 512"),
    (attention_job, ["--prompt", "Hi", "--layer", "6", "--no-chat"], "--layer: 6 is out of range"),
    (attention_job, ["--prompt", "Hi", "--layer", "-1"], "--layer: must be >= 0"),
    (attention_job, ["--prompt", "Hi", "--layer", "1", "--fatigue", "-1"], "--fatigue: must be in [0, 2], got -1"),
    (attention_job, ["--prompt", "Hi", "--layer", "1", "--run", "train-nope"], "--run:"),
    (lens_job, ["--prompt", "Hi", "--run", "train-nope", "--model", "default"], "--model: --run train-nope reads"),
    (lens_job, ["--prompt", "Hi", "--tuned", "tuned_lens-x"], "--tuned: only with --lens tuned"),
    (tuned_job, ["--init", "zero", "--steps", "0"], "--steps: must be >= 1 with --init zero, got 0"),
    (tuned_job, ["--seq-len", "1"], "--seq-len: must be >= 2, got 1"),
    (tuned_job, ["--lr", "0"], "--lr: must be > 0, got 0"),
    (tuned_job, ["--init", "lstsq", "--ridge", "0"], "--ridge: must be > 0, got 0"),
    (tuned_job, ["--run", "train-nope"], "--run: unknown run id"),
])
def test_bad_input_is_one_line(tiny_model_dir, tmp_path, capsys, job, argv, message):
    data = tmp_path / "data"
    model = [] if "--run" in argv else ["--model", str(tiny_model_dir)]
    assert job.main([*model, "--data-dir", str(data), *argv]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not data.exists() or not any(data.rglob("*.duckdb"))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A real (short) multi-tap, gated training run on the tiny model."""
    from jobs import train as train_job
    from psilonet.store import Store

    data = tmp_path_factory.mktemp("lens-data")
    assert train_job.main(["--model", str(tiny_model_dir), "--seq-len", "16", "--train-samples", "4", "--val-samples", "2",
                           "--lr", "1e-3", "--skip-start", "1", "--distances", "1", "2", "--gates", "--alpha", "0.5",
                           "--data-dir", str(data), "--quiet"]) == 0
    return data, Store(data).list_runs(kind="train").run_id.iloc[0]


def test_jobs_read_a_training_runs_skip_model(trained, capsys):
    data, run = trained
    common = ["--run", run, "--prompt", "Hello there, friend", "--no-chat", "--json", "--data-dir", str(data)]
    assert attention_job.main([*common, "--layer", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["tap"] for r in rows} == {"base", 1, 2}
    assert all(abs(sum(r["weights"]) - 1) < 1e-5 for r in rows)
    assert lens_job.main(common) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted({r["layer"] for r in rows}) == list(range(7))
    assert lens_job.main([*common[:2], "--prompt", "Hi", "--data-dir", str(data), "--lens", "tuned"]) == 2


def test_bad_input_fails_before_any_model_loads(tmp_path, capsys):
    weightless = tmp_path / "weightless"  # a config but no weights or tokenizer: loading it would fail
    weightless.mkdir()
    (weightless / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 6}))
    data = ["--data-dir", str(tmp_path / "data")]
    assert attention_job.main(["--model", str(weightless), "--prompt", "Hi", "--layer", "6", *data]) == 2
    assert lens_job.main(["--model", str(weightless), "--prompt", "Hi", "--lens", "tuned", *data]) == 2
    assert lens_job.main(["--model", str(weightless), "--prompt", "Hi", "--fatigue", "3", *data]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 3 and "--layer: 6 is out of range" in lines[0] and "--lens: the tuned lens" in lines[1]
    assert "--fatigue: must be in [0, 2], got 3" in lines[2]
    assert not (tmp_path / "data").exists()


def test_tuned_lens_job_trains_a_run_that_the_lens_job_reads(tiny_model_dir, tmp_path, capsys):
    from psilonet.store import Store

    data = tmp_path / "data"
    model = ["--model", str(tiny_model_dir), "--data-dir", str(data)]
    assert tuned_job.main([*model, "--dataset", "smol-stories", "--seq-len", "16", "--train-samples", "8",
                           "--val-samples", "4", "--steps", "6", "--lr", "3e-3", "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["layer"] for r in rows] == list(range(6))
    assert sum(r["kl_tuned"] for r in rows) < sum(r["kl_logit"] for r in rows)
    run = Store(data).list_runs(kind="tuned_lens").run_id.iloc[0]
    prompt = ["--prompt", "Hello there, friend", "--no-chat", "--json"]
    assert lens_job.main([*model, *prompt]) == 0
    logit = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lens_job.main([*model, *prompt, "--lens", "tuned", "--tuned", run]) == 0
    tuned = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["lens"] for r in tuned} == {"tuned"} and {r["lens"] for r in logit} == {"logit"}
    same = lambda r: {k: v for k, v in r.items() if k != "lens"}
    assert len(tuned) == len(logit) and same(tuned[-1]) == same(logit[-1])  # the last layer is read as it is
    assert any(a["kl_final"] != b["kl_final"] for a, b in zip(tuned, logit))
    assert lens_job.main(["--data-dir", str(data), *prompt, "--lens", "tuned", "--tuned", run]) == 2
    assert lens_job.main([*model, *prompt, "--lens", "tuned", "--tuned", "tuned_lens-nope"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 2 and f"--tuned: {run} was fitted to model" in err[0] and "--tuned: unknown run id" in err[1]

"""The dose job end to end on a tiny model, and the default model's sober output."""

from __future__ import annotations

import pytest

from jobs import dose as dose_job
from psilonet.generation import decoding as generation
from psilonet.generation.decoding import SamplingConfig
from psilonet.generation.dosing import generate_doses
from psilonet.store import Store


def test_prompts_file_x_intensities_x_seeds_into_the_store(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n{broken\n{"prompt": "The sea is"}\n')
    code = dose_job.main(["--model", str(tiny_model_dir), "--prompts-file", str(prompts), "--prompt", "Hello",
                          "--intensities", "0", "0.3", "--seeds", "1", "2", "--max-tokens", "6", "--no-chat",
                          "--data-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "line 2: not valid JSON" in out.err
    store = Store(tmp_path)
    run = store.list_runs(kind="dose").iloc[0]
    assert run.state == "complete" and run.summary["generations"] == 12 and run.summary["skipped_prompts"] == 1
    with store.open_run(run.run_id) as reader:
        gens, tokens, layers = reader.generations(), reader.token_entropy(), reader.layer_entropy()
    assert len(gens) == 12 and set(gens.intensity) == {0.0, 0.3} and set(gens.seed) == {1, 2}
    assert set(gens.prompt) == {"Once upon a time", "The sea is", "Hello"}
    assert (gens.n_tokens == tokens.groupby("gen_id").size().reindex(gens.gen_id).values).all()
    assert layers.layer.nunique() == 7  # h[0..6] of the tiny model
    assert (tokens.groupby("gen_id").entropy.mean().values == pytest.approx(gens.sort_values("gen_id").mean_entropy.values))


@pytest.mark.parametrize("args, message", [
    (["--intensities", "1.5"], "--intensities: each must be in [0, 1]"),
    (["--max-tokens", "100000"], "--max-tokens: must be in [1, 512]"),
    ([], "no prompt to run"),
])
def test_bad_options(tiny_model_dir, tmp_path, capsys, args, message):
    assert dose_job.main(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert Store(tmp_path).list_runs().empty


def test_binary_prompts_file_is_refused(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"\x00\x01\x02binary")
    assert dose_job.main(["--model", str(tiny_model_dir), "--prompts-file", str(bad), "--data-dir", str(tmp_path)]) == 2
    assert "looks binary" in capsys.readouterr().err


@pytest.mark.integration
def test_default_model_sober_dose_equals_plain_greedy(default_model):
    model, tokenizer = default_model
    prompt = "What is the capital of France?"
    cfg = SamplingConfig(max_tokens=16)
    plain = generation.generate(model, tokenizer, prompt, cfg)[0]
    results = generate_doses(model, tokenizer, prompt, [0.0, 0.3], sampling=cfg)
    assert results[0].text == plain and "Paris" in plain
    assert results[1].mean_entropy > results[0].mean_entropy

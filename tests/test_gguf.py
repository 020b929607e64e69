"""The GGUF conversion: RoPE layout, tokenizer, chat template, idempotent and atomic fetch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import llama

from psilonet.generation import decoding as generation
from psilonet.model import gguf, loading as modeling
from psilonet.training import evaluation


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``permute``: the layout we must undo."""
    out = w.shape[0]
    return w.reshape(n_heads, 2, out // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_undo_rope_permutation_inverts_llamacpp_permute():
    w = np.random.default_rng(0).normal(size=(3 * 8, 5)).astype(np.float32)
    back = gguf.undo_rope_permutation(mx.array(llamacpp_permute(w, 3)), 3)
    np.testing.assert_array_equal(np.array(back), w)


def test_non_llama_gguf_is_rejected():
    with pytest.raises(gguf.GGUFError, match="llama-family"):
        gguf.hf_config({"general.architecture": "gpt2"})


def test_unreadable_gguf_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(gguf.GGUFError, match="cannot read GGUF"):
        gguf.read_gguf(bad)


def _gguf_model(tensors, meta, *, fix_rope: bool, traditional: bool):
    config = gguf.hf_config(meta)
    args = llama.ModelArgs.from_dict({**config, "rope_traditional": traditional})
    model = llama.Model(args)
    model.load_weights(list(gguf.hf_weights(tensors, config, fix_rope=fix_rope).items()))
    return model


@pytest.mark.integration
def test_converted_loss_matches_gguf_and_wrong_layout_is_worse(default_model, default_model_dir):
    model, tokenizer = default_model
    tokens = tokenizer.encode(evaluation.REFERENCE_PARAGRAPH)
    converted = evaluation.mean_token_loss(model, tokens)
    tensors, meta = gguf.read_gguf(modeling.default_gguf_path())
    # llama.cpp's own semantics: interleaved rows with interleaved (traditional) RoPE.
    reference = evaluation.mean_token_loss(_gguf_model(tensors, meta, fix_rope=False, traditional=True), tokens)
    wrong = evaluation.mean_token_loss(_gguf_model(tensors, meta, fix_rope=False, traditional=False), tokens)
    assert abs(converted - reference) < 0.01, (converted, reference)
    assert wrong - converted >= 0.5, (converted, wrong)
    assert converted < 3.2


@pytest.mark.integration
def test_special_tokens_and_chat_template(default_model):
    _, tokenizer = default_model
    for token in ("<|im_start|>", "<|im_end|>"):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, (token, ids)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nhi<|im_end|>" in text
    # digits are split one by one, as in SmolLM2's own tokenizer
    assert len(tokenizer.encode("2024", add_special_tokens=False)) == 4
    assert tokenizer.decode(tokenizer.encode("Hello, world!")) == "Hello, world!"


@pytest.mark.integration
def test_greedy_answer_names_paris(default_model):
    model, tokenizer = default_model
    answer = generation.generate(model, tokenizer, "What is the capital of France?", generation.SamplingConfig(max_tokens=24))[0]
    assert "Paris" in answer, answer


@pytest.mark.integration
def test_fetch_is_idempotent(default_model_dir):
    weights = default_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert modeling.fetch_default_model(progress=False) == default_model_dir
    assert weights.stat().st_mtime_ns == before


@pytest.mark.integration
def test_killed_conversion_leaves_no_model_folder(tmp_path, default_model_dir):
    gguf_copy = modeling.default_gguf_path(tmp_path)
    gguf_copy.parent.mkdir(parents=True)
    shutil.copy(modeling.default_gguf_path(), gguf_copy)
    env = {**os.environ, "PSILONET_DATA": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.fetch_model"], cwd=modeling.Path(__file__).parent.parent,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = gguf_copy.parent.parent
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".SmolLM2") for p in models.iterdir()):
        time.sleep(0.02)
    assert proc.poll() is None, "the conversion finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    target = modeling.default_model_path(tmp_path)
    assert not target.exists()
    assert not modeling.is_complete(target)
    with pytest.raises(modeling.ModelError, match="jobs.fetch_model"):
        modeling.resolve_model(None, tmp_path)

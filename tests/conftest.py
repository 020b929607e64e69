"""Shared fixtures: tiny random llama models for unit tests, the real default model for a few
integration tests (converted once per machine by ``python -m jobs.fetch_model``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psilonet  # noqa: E402,F401  (fast BLAS before mlx)
import mlx.core as mx  # noqa: E402
from mlx_lm.models import llama  # noqa: E402

from psilonet import modeling  # noqa: E402

TINY_ARGS = dict(
    model_type="llama", hidden_size=64, num_hidden_layers=6, intermediate_size=128,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=97,
    rope_theta=10000.0, tie_word_embeddings=True,
)


def make_tiny_model(seed: int = 0, **overrides):
    """A randomly initialised mlx-lm llama small enough for millisecond forwards."""
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs(**{**TINY_ARGS, **overrides}))
    mx.eval(model.parameters())
    return model


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return modeling.fetch_default_model(progress=False)


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    return modeling.load_model(str(default_model_dir))


def save_model_folder(model, folder: Path, tokenizer_dir: Path) -> Path:
    """An mlx-lm model folder (config, safetensors, tokenizer) that ``mlx_lm.load`` opens."""
    import json
    import shutil

    from mlx.utils import tree_flatten

    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps({**TINY_ARGS, **model.args.__dict__, "model_type": "llama"}, default=str))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A tiny random llama with the default model's real tokenizer: jobs run on it in seconds."""
    model = make_tiny_model(seed=0, vocab_size=49152, max_position_embeddings=512)
    return save_model_folder(model, tmp_path_factory.mktemp("tiny-model"), default_model_dir)

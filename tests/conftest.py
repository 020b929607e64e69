"""Shared fixtures: tiny random llama models for unit tests, the real default model for a few
integration tests (converted once per machine by ``python -m jobs.fetch_model``)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psilonet import runtime  # noqa: E402

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")
import mlx.core as mx  # noqa: E402

from psilonet.model import loading as modeling  # noqa: E402

TINY_ARGS = dict(
    model_type="llama", hidden_size=64, num_hidden_layers=6, intermediate_size=128,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=97,
    rope_theta=10000.0, tie_word_embeddings=True,
)


def make_tiny_model(seed: int = 0, **overrides):
    """A randomly initialised mlx-lm model small enough for millisecond forwards: a llama, or
    the family ``model_type`` names (``qwen2``, ``qwen3``), built from mlx-lm's own class."""
    args = {**TINY_ARGS, **overrides}
    family = importlib.import_module(f"mlx_lm.models.{args['model_type']}")
    args.setdefault("head_dim", args["hidden_size"] // args["num_attention_heads"])
    args.setdefault("max_position_embeddings", 512)
    mx.random.seed(seed)
    model = family.Model(family.ModelArgs.from_dict(args))
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


@pytest.fixture(scope="session")
def filled(tiny_model_dir, tmp_path_factory):
    """A data folder filled by real jobs on the tiny model: a training run (multi-tap, gated),
    a sweep, a capture, an analysis and a dose run."""
    from jobs import analyze as analyze_job
    from jobs import capture as capture_job
    from jobs import dose as dose_job
    from jobs import sweep as sweep_job
    from jobs import train as train_job
    from psilonet.store import Store

    data = tmp_path_factory.mktemp("app-data")
    common = ["--model", str(tiny_model_dir), "--seq-len", "16", "--val-samples", "4", "--lr", "1e-3",
              "--skip-start", "1", "--data-dir", str(data), "--quiet"]
    assert train_job.main([*common, "--train-samples", "12", "--distances", "1", "2", "--gates", "--alpha", "0.5"]) == 0
    assert sweep_job.main([*common, "--train-samples", "8", "--distances", "1", "2", "--alphas", "0.3", "0.6",
                           "--seeds", "0", "1"]) == 0
    store = Store(data)
    train_id = store.list_runs(kind="train").query("parent.isna()").run_id.iloc[0]
    assert capture_job.main(["--run", train_id, "--seq-len", "16", "--samples", "4", "--max-tokens", "32",
                             "--data-dir", str(data), "--quiet"]) == 0
    capture_id = store.list_runs(kind="capture").run_id.iloc[0]
    assert analyze_job.main(["--captures", capture_id, "--data-dir", str(data)]) == 0
    assert dose_job.main(["--model", str(tiny_model_dir), "--prompt", "Hello there", "--intensities", "0", "0.3",
                          "--max-tokens", "4", "--no-chat", "--data-dir", str(data)]) == 0
    return data, train_id


def headless_chromium(width: int = 1400, height: int = 1400, extra_args: tuple[str, ...] = (), browser_log: bool = False):
    """Debian's Chromium driven headless by Selenium (the browser tests, the export test and the
    serving test all drive the same browser, with the same quiet, offline-friendly flags)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--window-size={width},{height}", *extra_args):
        opts.add_argument(arg)
    if browser_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


APP = str(ROOT / "streamlit_app.py")


def open_app_page(page: str, params: dict | None = None):
    """One page of the app run headless with AppTest, its URL holding ``params``."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    at.switch_page(f"views/{page}.py")
    at.run()
    return at

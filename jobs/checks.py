"""Checks the jobs share that need more than one config field: the model's context length (read
from its ``config.json``, without loading weights), batch sizes against the data, and a
training run's checkpoint before it is resumed. Each raises :class:`jobs.cli.JobError` in one line
naming the flag or file, before any model loads or any run row is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.cli import JobError
from psilonet.files import json_problem, safetensors_problem


def model_context(name: str | None, data_dir) -> int | None:
    """The model's context length from its ``config.json`` (no weights read); None where unknown
    (a hub name, whose config is fetched only when it loads)."""
    from psilonet.model import loading as modeling

    path = Path(modeling.check_model_name(name, data_dir))  # refuses a missing or odd model first
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        raise JobError(f"--model: {config} is not a JSON object; fetch or convert the model again")
    return value if isinstance(value, int) and value > 0 else None


def check_context(flag: str, tokens: int, model: str | None, data_dir, what: str = "") -> None:
    """``tokens`` (a window, with any extra the job adds, said by ``what``) fit the model's context."""
    context = model_context(model, data_dir)
    if context and tokens > context:
        raise JobError(f"{flag}: {tokens}{' ' + what if what else ''} is longer than the model's context "
                       f"of {context} tokens")


def fit_batch(flag: str, batch_size: int, samples: int, samples_flag: str, *, given: bool) -> int:
    """The batch size to run and record: a given one larger than the data is refused (it would be
    recorded but never run); the default shrinks to the data without a word."""
    if batch_size <= samples:
        return batch_size
    if given:
        raise JobError(f"{flag}: {batch_size} is more than the {samples} windows of {samples_flag}; "
                       f"give at most {samples}")
    return samples


def checkpoint_problem(folder: Path) -> str | None:
    """Why a training checkpoint folder cannot be resumed from (missing, truncated, corrupt), or None."""
    from psilonet.training import loop

    old = folder.parent / f".{folder.name}.old"
    if not folder.exists() and old.exists():  # killed between the two renames: the old one is whole
        folder = old
    if not folder.exists():
        return "missing"
    for name in (loop.WEIGHTS_FILE, "optimizer.safetensors"):
        problem = safetensors_problem(folder / name)
        if problem:
            return f"{folder / name} {problem}"
    state = folder / "state.json"
    problem = json_problem(state)
    if not problem:
        step = json.loads(state.read_text(encoding="utf-8"))
        if not isinstance(step, dict) or not isinstance(step.get("step"), int) or step["step"] < 0:
            problem = "is corrupt (no step count)"
    return f"{state} {problem}" if problem else None

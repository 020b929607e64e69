"""Prompt files from users: parsed and validated so that one bad line never sinks the rest.

Accepted: ``.txt`` (one prompt per non-empty line), ``.jsonl`` (objects with a ``prompt``
string) and ``.csv`` (a ``prompt`` column). Whole-file problems raise :class:`PromptFileError`
(empty, binary, not UTF-8, larger than :data:`MAX_BYTES` or more than :data:`MAX_PROMPTS`
prompts, unknown format). Line problems (malformed JSON, an empty prompt, a prompt longer than
the model's context) skip that line with a reason naming it; the other prompts still run.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MAX_BYTES = 1_000_000
MAX_PROMPTS = 1_000
FORMATS = (".txt", ".jsonl", ".csv")


class PromptFileError(ValueError):
    """The file as a whole cannot be used; the message says why."""


@dataclass
class PromptFile:
    prompts: list[tuple[int, str]] = field(default_factory=list)  # (line number, prompt)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def report(self) -> str:
        lines = [f"{len(self.prompts)} prompt(s) to run, {len(self.skipped)} skipped"]
        lines += [f"  line {n}: {why}" for n, why in self.skipped]
        return "\n".join(lines)


def _decode(data: bytes, name: str) -> str:
    if not data.strip():
        raise PromptFileError(f"{name} is empty")
    if len(data) > MAX_BYTES:
        raise PromptFileError(f"{name} is {len(data):,} bytes; the limit is {MAX_BYTES:,}")
    if b"\x00" in data[:8192]:
        raise PromptFileError(f"{name} looks binary (it contains NUL bytes); give a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptFileError(f"{name} is not UTF-8 (invalid byte at line {line}); save it as UTF-8") from exc


def parse_prompts(data: bytes, name: str, *, too_long: Callable[[str], str | None] | None = None) -> PromptFile:
    """Parse an uploaded or given prompts file. ``too_long(prompt)`` returns a reason or None."""
    suffix = Path(name).suffix.lower()
    if suffix not in FORMATS:
        raise PromptFileError(f"{name}: unsupported format {suffix or '(none)'}; use {', '.join(FORMATS)}")
    text = _decode(data, name)
    candidates: list[tuple[int, str | None, str | None]] = []  # (line, prompt, problem)
    if suffix == ".txt":
        candidates = [(n, line.strip(), None) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                candidates.append((n, None, f"not valid JSON ({exc.msg})"))
                continue
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            candidates.append((n, prompt, None) if isinstance(prompt, str) else (n, None, 'no "prompt" string'))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise PromptFileError(f"{name} has no 'prompt' column (columns: {', '.join(reader.fieldnames or [])})")
        for row in reader:
            candidates.append((reader.line_num, row.get("prompt") or "", None))

    result = PromptFile()
    for n, prompt, problem in candidates:
        if problem is None and not (prompt or "").strip():
            problem = "empty prompt"
        if problem is None and too_long is not None:
            problem = too_long(prompt)
        if problem is None:
            result.prompts.append((n, prompt.strip()))
        else:
            result.skipped.append((n, problem))
    if len(result.prompts) > MAX_PROMPTS:
        raise PromptFileError(f"{name} has {len(result.prompts):,} prompts; the limit is {MAX_PROMPTS:,}")
    if not result.prompts:
        raise PromptFileError(f"{name} has no usable prompt:\n{result.report()}")
    return result


def context_check(tokenizer, context: int, max_tokens: int, *, chat: bool) -> Callable[[str], str | None]:
    """A ``too_long`` check: the prompt plus the tokens to generate must fit the context."""
    from psilonet.generation.decoding import encode_prompt

    def check(prompt: str) -> str | None:
        n = len(encode_prompt(tokenizer, prompt, chat=chat))
        if n + max_tokens > context:
            return f"prompt is {n} tokens; with {max_tokens} new tokens it exceeds the model's context of {context}"
        return None

    return check

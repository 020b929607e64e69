"""Prompts: files from users parsed and validated so that one bad line never sinks the rest,
their tokens (chat template, stop ids) and whether they fit the model's context.

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


#: The context assumed for a model whose config does not say (``max_position_embeddings``).
DEFAULT_CONTEXT = 2048


def context_length(model) -> int:
    """The model's context in tokens (its ``max_position_embeddings``, else :data:`DEFAULT_CONTEXT`)."""
    return getattr(model.args, "max_position_embeddings", None) or DEFAULT_CONTEXT


def stop_ids(tokenizer) -> set[int]:
    """End-of-turn and end-of-text ids of a (wrapped) Hugging Face tokenizer."""
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if hasattr(tokenizer, "convert_tokens_to_ids") else None
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def encode_prompt(tokenizer, prompt: str, *, chat: bool) -> list[int]:
    """Token ids of a prompt, through the chat template when ``chat`` and one exists."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return list(tokenizer.encode(prompt))


def context_problem(n_tokens: int, max_tokens: int, context: int) -> str | None:
    """Why a prompt of ``n_tokens`` cannot be continued by ``max_tokens`` within ``context``, or None."""
    if n_tokens + max_tokens > context:
        return f"with {max_tokens} new tokens it exceeds the model's context of {context}"
    return None


def context_check(tokenizer, context: int, max_tokens: int, *, chat: bool) -> Callable[[str], str | None]:
    """A ``too_long`` check: the prompt plus the tokens to generate must fit the context."""

    def check(prompt: str) -> str | None:
        n = len(encode_prompt(tokenizer, prompt, chat=chat))
        problem = context_problem(n, max_tokens, context)
        return f"prompt is {n} tokens; {problem}" if problem else None

    return check

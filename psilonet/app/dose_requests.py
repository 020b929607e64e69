"""What one request to the dose page may ask: prompts that fit the context, within a work bound.

Larger batches belong to ``python -m jobs.dose`` (which shows progress in the terminal and is
not tied to a browser tab).
"""

from __future__ import annotations

from psilonet.generation.prompts import context_problem, encode_prompt

#: Hard bound on one request from the app: the token rows it may process, counted as
#: sum over prompts of (prompt tokens + new tokens) x intensities.
MAX_REQUEST_WORK = 150_000


def request_work(prompt_lengths: list[int], n_intensities: int, max_tokens: int) -> int:
    """Token rows one request processes: every prompt is prefilled and continued per intensity."""
    return sum(n + max_tokens for n in prompt_lengths) * n_intensities


def check_request(prompt_lengths: list[int], n_intensities: int, max_tokens: int,
                  limit: int | None = None) -> None:
    """Raise ValueError (saying what to reduce) when a request exceeds ``limit`` token rows
    (default :data:`MAX_REQUEST_WORK`)."""
    limit = MAX_REQUEST_WORK if limit is None else limit
    work = request_work(prompt_lengths, n_intensities, max_tokens)
    if work > limit:
        raise ValueError(
            f"this request would process {work:,} token rows ({len(prompt_lengths)} prompt(s) x "
            f"{n_intensities} intensities, prompt + {max_tokens} new tokens each); the app's limit is {limit:,}. "
            "Use fewer prompts, intensities or tokens, or run `python -m jobs.dose --prompts-file FILE`.")


def plan_prompts(tokenizer, prompts: list[tuple[int, str]], *, max_tokens: int, chat: bool, context: int,
                 n_intensities: int, limit: int | None = None) -> tuple[list[tuple[int, str]], list[str]]:
    """Split (line, prompt) pairs into those to run and a reason per skipped one, before any work.

    A prompt whose tokens plus ``max_tokens`` exceed ``context`` is skipped, named by its line.
    Raises ValueError (:func:`check_request`) if the prompts that remain exceed ``limit``."""
    runnable, lengths, skipped = [], [], []
    for line, text in prompts:
        n = len(encode_prompt(tokenizer, text, chat=chat))
        problem = context_problem(n, max_tokens, context)
        if problem:
            skipped.append(f"line {line}: {n} tokens; {problem}")
        else:
            runnable.append((line, text))
            lengths.append(n)
    check_request(lengths, n_intensities, max_tokens, limit)
    return runnable, skipped

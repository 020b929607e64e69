"""Prompt files: every bad input gets a clear message, good prompts in the same file still run."""

from __future__ import annotations

import pytest

from psilonet.generation.prompts import MAX_BYTES, MAX_PROMPTS, PromptFileError, parse_prompts


def test_txt_one_prompt_per_line():
    pf = parse_prompts(b"First prompt\n\n  Second prompt  \n", "p.txt")
    assert pf.prompts == [(1, "First prompt"), (3, "Second prompt")] and not pf.skipped


def test_jsonl_skips_bad_lines_and_keeps_good_ones():
    data = b'{"prompt": "good one"}\n{not json}\n{"text": "no prompt"}\n{"prompt": "  "}\n{"prompt": "two"}\n'
    pf = parse_prompts(data, "p.jsonl")
    assert pf.prompts == [(1, "good one"), (5, "two")]
    assert [n for n, _ in pf.skipped] == [2, 3, 4]
    assert "not valid JSON" in pf.skipped[0][1] and "empty" in pf.skipped[2][1]
    assert "line 2: not valid JSON" in pf.report()


def test_csv_needs_a_prompt_column():
    pf = parse_prompts(b'prompt,tag\n"Hello, world",a\nBye,b\n', "p.csv")
    assert [p for _, p in pf.prompts] == ["Hello, world", "Bye"]
    with pytest.raises(PromptFileError, match="no 'prompt' column"):
        parse_prompts(b"text\nhello\n", "p.csv")


@pytest.mark.parametrize("data, name, message", [
    (b"", "p.txt", "is empty"),
    (b"   \n\n", "p.txt", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "p.txt", "looks binary"),
    (b"caf\xe9 au lait\n", "p.txt", r"not UTF-8 \(invalid byte at line 1\)"),
    (b"x" * (MAX_BYTES + 1), "p.txt", "the limit is 1,000,000"),
    (b"hello", "p.pdf", "unsupported format .pdf"),
    (("\n".join(f"p{i}" for i in range(MAX_PROMPTS + 1))).encode(), "p.txt", "the limit is 1,000"),
    (b'{"x": 1}\n', "p.jsonl", "no usable prompt"),
])
def test_whole_file_problems(data, name, message):
    with pytest.raises(PromptFileError, match=message):
        parse_prompts(data, name)


def test_too_long_prompts_are_skipped_by_line():
    pf = parse_prompts(b"short\n" + b"long " * 50 + b"\nok\n", "p.txt",
                       too_long=lambda p: "too long" if len(p) > 100 else None)
    assert [n for n, _ in pf.prompts] == [1, 3] and pf.skipped == [(2, "too long")]

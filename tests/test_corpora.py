"""Corpora: offline defaults, local files of every format, seeded disjoint windows, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from psilonet import corpora


class CharTokenizer:
    """A real (if trivial) tokenizer: one id per byte, 0 as end of text."""

    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [b + 1 for b in text.encode()]


def test_python_docs_is_offline_and_large():
    texts = corpora.load_texts("python-docs")
    assert len(texts) > 500
    assert any("assert" in t for t in texts)


def test_windows_are_seeded_disjoint_and_sized():
    texts = corpora.load_texts("python-docs")[:200]
    tok = CharTokenizer()
    a = corpora.make_windows(tok, texts, seq_len=32, n_train=50, n_val=10, seed=3)
    b = corpora.make_windows(tok, texts, seq_len=32, n_train=50, n_val=10, seed=3)
    c = corpora.make_windows(tok, texts, seq_len=32, n_train=50, n_val=10, seed=4)
    assert a.train.shape == (50, 32) and a.val.shape == (10, 32)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    assert not np.array_equal(a.train, c.train)
    rows = {r.tobytes() for r in a.train}
    assert not any(r.tobytes() in rows for r in a.val)


def test_too_small_corpus_names_the_numbers():
    with pytest.raises(corpora.CorpusError, match=r"val_samples: corpus 'corpus' yields 3 windows of 4 tokens, fewer than the 3 train \+ 1 val"):
        corpora.make_windows(CharTokenizer(), ["abcdefghijk"], seq_len=4, n_train=3, n_val=1, seed=0)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_local_files(tmp_path, suffix):
    docs = ["First document, about owls.", "Second one, about 'quotes', and commas.", "Third."]
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".txt":
        path.write_text("\n\n".join(docs) + "\n")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    elif suffix == ".csv":
        pd.DataFrame({"text": docs}).to_csv(path, index=False)
    else:
        pd.DataFrame({"text": docs}).to_parquet(path)
    assert [t.strip() for t in corpora.load_texts(str(path))] == docs


def test_missing_column_and_missing_file(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"body": ["x"]}).to_csv(path, index=False)
    with pytest.raises(corpora.CorpusError, match="no 'text' column"):
        corpora.load_texts(str(path))
    with pytest.raises(corpora.CorpusError, match="does not exist"):
        corpora.load_texts(str(tmp_path / "nope.jsonl"))


def test_unknown_name_lists_choices():
    with pytest.raises(corpora.CorpusError, match="dataset: unknown corpus 'shakespeare'.*python-docs"):
        corpora.load_texts("shakespeare")


def test_story_corpus_is_committed_with_provenance():
    path = corpora.corpora_dir() / corpora.STORIES_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= 90
    assert {"text", "prompt", "seed", "model"} <= set(rows[0])
    assert len(corpora.load_texts("smol-stories")) == len([r for r in rows if r["text"].strip()])

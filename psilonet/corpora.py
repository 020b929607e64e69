"""Text corpora through the ``datasets`` library, and fixed-length token windows.

A corpus is named by one of:

* an offline default that works on a fresh machine without a network:
  ``python-docs`` (factual/technical: the Python language reference topics shipped with the
  standard library in ``pydoc_data.topics``) and ``smol-stories`` (narrative: short stories
  generated once by the default model with a fixed seed, committed in ``data/corpora/`` with
  their provenance, see ``jobs/make_story_corpus.py``);
* a hub alias or name, used when a network is there: ``wikitext`` (``wikitext-2-raw-v1``),
  ``tinystories`` (``roneneldan/TinyStories``), or any ``owner/name[:config]``;
* a local ``.txt`` (one document per blank-line separated paragraph), ``.jsonl``, ``.csv``
  or ``.parquet`` file with a ``text`` column.

Windows: documents are tokenised, joined with the end-of-text token into one stream and cut
into non-overlapping windows of ``seq_len`` tokens. The windows are shuffled with the seed
and the first ``n_train`` become training windows, the next ``n_val`` validation windows, so
a given (corpus, tokenizer, seq_len, seed) always yields the same split.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psilonet import runtime
from psilonet.files import path_problem

STORIES_FILE = "smol_stories.jsonl"
OFFLINE_CORPORA = ("python-docs", "smol-stories")
HUB_ALIASES = {
    "wikitext": ("wikitext", "wikitext-2-raw-v1"),
    "tinystories": ("roneneldan/TinyStories", None),
}
LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class CorpusError(ValueError):
    """A corpus cannot be loaded or is too small; the message names it and what to do."""


SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "corpora"


def corpora_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return Path(data_dir or runtime.data_dir()) / "corpora"


def stories_path(data_dir: str | os.PathLike | None = None) -> Path:
    """The story corpus of the data folder, else the one committed with the repository."""
    local = corpora_dir(data_dir) / STORIES_FILE
    return local if local.is_file() else SHIPPED_DIR / STORIES_FILE


def check_name(name: str) -> None:
    """Reject a corpus name that can never load, without loading anything."""
    path = Path(name)
    if name in OFFLINE_CORPORA or name in HUB_ALIASES:
        return
    if path.suffix.lower() in LOCAL_BUILDERS:
        problem = path_problem(path)
        if problem:
            raise CorpusError(f"dataset: corpus file {path} {problem}")
        if LOCAL_BUILDERS[path.suffix.lower()] != "parquet":
            check_text_file(path)
        return
    if os.path.lexists(path) or name.startswith((".", "/", "~")):  # a local path, never a hub name
        problem = path_problem(path) or "is not a .txt, .jsonl, .csv or .parquet file"
        raise CorpusError(f"dataset: {path} {problem}; give a .txt/.jsonl/.csv/.parquet file or a corpus name")
    if "/" not in name.split(":")[0]:
        raise CorpusError(
            f"dataset: unknown corpus {name!r}: use one of {', '.join(OFFLINE_CORPORA)}, "
            f"{', '.join(HUB_ALIASES)}, a hub name owner/name[:config], or a .txt/.jsonl/.csv/.parquet file"
        )


def _python_docs() -> list[str]:
    from pydoc_data.topics import topics

    docs = []
    for topic in sorted(topics):
        docs.extend(p.strip() for p in topics[topic].split("\n\n") if len(p.strip()) > 40)
    return docs


def _texts(dataset, source: str) -> list[str]:
    if "text" not in dataset.column_names:
        raise CorpusError(f"dataset: {source} has no 'text' column (columns: {', '.join(dataset.column_names)})")
    texts = [t for t in dataset["text"] if isinstance(t, str) and t.strip()]
    if not texts:
        raise CorpusError(f"dataset: {source} has no non-empty text")
    return texts


CHECKED_BYTES = 1 << 20  # how much of a text corpus is checked before any model loads


def check_available(name: str, data_dir: str | os.PathLike | None = None) -> None:
    """:func:`check_name` plus the local story corpus's file, before any model loads."""
    check_name(name)
    if name == "smol-stories":
        path = stories_path(data_dir)
        if not path.is_file():
            raise CorpusError(f"dataset: {path} is missing; run: python -m jobs.make_story_corpus")
        check_text_file(path)


def check_text_file(path: Path, what: str = "dataset") -> None:
    """Refuse an empty, binary or non-UTF-8 text corpus file with a message naming it.

    Reads at most the first MiB, so it is cheap enough to run before any model loads.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(CHECKED_BYTES)
    except OSError as exc:
        raise CorpusError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if not data.strip():
        raise CorpusError(f"{what}: corpus file {path} is empty")
    if b"\x00" in data[:8192]:
        raise CorpusError(f"{what}: corpus file {path} looks binary, not text")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) < CHECKED_BYTES)
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{what}: corpus file {path} is not UTF-8 (byte {data[exc.start]:#04x} at offset "
                          f"{exc.start}); convert it, e.g. iconv -f latin1 -t utf-8") from exc


def load_texts(name: str, split: str = "train", data_dir: str | os.PathLike | None = None) -> list[str]:
    """Documents of a corpus, as a list of non-empty strings."""
    import datasets

    datasets.disable_progress_bars()
    if name == "python-docs":
        return _python_docs()
    if name == "smol-stories":
        path = stories_path(data_dir)
        if not path.is_file():
            raise CorpusError(f"dataset: {path} is missing; run: python -m jobs.make_story_corpus")
        check_text_file(path)
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as exc:
            raise CorpusError(f"dataset: cannot read {path}: {type(exc).__name__}; "
                              "regenerate it: python -m jobs.make_story_corpus") from exc
        return _texts(ds, str(path))

    path = Path(name)
    if path.suffix.lower() in LOCAL_BUILDERS:
        check_name(name)
        builder = LOCAL_BUILDERS[path.suffix.lower()]
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        except Exception as exc:
            cause = str(exc.__cause__ or exc).splitlines()[0][:200]
            raise CorpusError(f"dataset: cannot read corpus file {path}: {cause}") from exc
        return _texts(ds, str(path))

    check_name(name)
    repo, config = HUB_ALIASES.get(name, (name.split(":")[0], name.split(":")[1] if ":" in name else None))
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:
        raise CorpusError(
            f"cannot load corpus {name!r} from the hub ({type(exc).__name__}); without a network "
            f"use {' or '.join(OFFLINE_CORPORA)} or a local file"
        ) from exc
    return _texts(ds, name)


@dataclass(frozen=True)
class Windows:
    """Seeded train/validation token windows of one corpus."""

    train: np.ndarray  # (n_train, seq_len) int32
    val: np.ndarray  # (n_val, seq_len) int32
    total: int  # windows the corpus yielded before sampling


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """All documents' token ids, each followed by the end-of-text id."""
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
        if sep is not None:
            ids.append(sep)
    return np.asarray(ids, dtype=np.int32)


def make_windows(
    tokenizer, texts: list[str], *, seq_len: int, n_train: int, n_val: int, seed: int, name: str = "corpus",
    counts: str = "train_samples/val_samples",
) -> Windows:
    """Cut the corpus into ``seq_len`` windows and draw a seeded, disjoint train/val split.

    ``counts`` names the options that set ``n_train``/``n_val`` in the caller's job (for its message).
    """
    if seq_len < 2:
        raise CorpusError(f"seq_len must be at least 2, got {seq_len}")
    stream = token_stream(tokenizer, texts)
    total = len(stream) // seq_len
    if n_train + n_val > total:
        raise CorpusError(
            f"{counts}: corpus {name!r} yields {total} windows of {seq_len} tokens, fewer than the "
            + (f"{n_train} train + {n_val} val requested" if n_train else f"{n_val} requested")
        )
    windows = stream[: total * seq_len].reshape(total, seq_len)
    order = np.random.default_rng(seed).permutation(total)
    return Windows(windows[order[:n_train]], windows[order[n_train : n_train + n_val]], total)


def load_windows(
    tokenizer, name: str, *, seq_len: int, n_train: int, n_val: int, seed: int,
    data_dir: str | os.PathLike | None = None, counts: str = "train_samples/val_samples",
) -> Windows:
    return make_windows(
        tokenizer, load_texts(name, data_dir=data_dir),
        seq_len=seq_len, n_train=n_train, n_val=n_val, seed=seed, name=name, counts=counts,
    )

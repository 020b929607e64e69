"""Bad input and faults, as a new user meets them: every job case ends with its exit code and a
one-line message naming the flag, key or file, no traceback, and a consistent data folder.

Almost every case fails before any model loads (the data folder has no model at all, so a case
that got as far as loading one would fail with a different message); the few that need a model
use the tiny one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs import (analyze, bio_eval, capture, check_model, dose, fetch_model, lens, make_story_corpus, patch, steer, sweep,
                  train, tuned_lens)
from psilonet.store import Store

JOBS = {"train": train, "sweep": sweep, "dose": dose, "capture": capture, "analyze": analyze,
        "make_story_corpus": make_story_corpus, "check_model": check_model, "fetch_model": fetch_model,
        "bio_eval": bio_eval, "patch": patch, "lens": lens, "tuned_lens": tuned_lens, "steer": steer}


def run_job(name: str, argv: list[str], capsys) -> tuple[int, str]:
    code = JOBS[name].main(argv)
    err = capsys.readouterr().err
    return code, err


def assert_one_line(err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def assert_consistent(data: Path) -> None:
    """A run is complete iff its folder is published; nothing is left running."""
    store = Store(data)
    runs = store.list_runs()
    for run in runs.itertuples():
        published = (data / "runs" / run.run_id / "run.duckdb").is_file()
        assert (run.state == "complete") == published, (run.run_id, run.state, published)
        assert run.state != "running", run.run_id


def files(tmp: Path) -> dict[str, str]:
    """Input files the cases name (created fresh in each case's folder)."""
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.txt").write_bytes(b"\x00\x01\x02\x03 binary")
    (tmp / "latin1.txt").write_bytes("caf\xe9 au lait, d\xe9j\xe0 vu\n\nsecond paragraph".encode("latin-1"))
    (tmp / "afile").write_text("not a folder")
    (tmp / "bad.toml").write_text("alpha = [1, 2\n")
    (tmp / "str_seed.toml").write_text('seed = "3"\n')
    (tmp / "unknown.toml").write_text("learning_rate = 0.1\n")
    (tmp / "skip_alpha.toml").write_text('[skip]\nalpha = "x"\n')
    (tmp / "list.json").write_text(json.dumps([1, 2]))
    (tmp / "neg.json").write_text(json.dumps({"batch_size": -4}))
    return {k: str(tmp / v) for k, v in [("empty", "empty.txt"), ("binary", "binary.txt"), ("latin1", "latin1.txt"),
                                          ("file", "afile"), ("bad_toml", "bad.toml"), ("str_seed", "str_seed.toml"),
                                          ("unknown", "unknown.toml"), ("skip_alpha", "skip_alpha.toml"),
                                          ("list_json", "list.json"), ("neg_json", "neg.json")]}


# (job, argv, message): exit code 2, no run written. {name} is replaced by a file from files().
CASES = [
    ("train", ["--lr", "inf"], "--lr: must be a finite number, got inf"),
    ("train", ["--lr", "nan"], "--lr: must be a finite number"),
    ("train", ["--lr", "0"], "--lr: must be > 0"),
    ("train", ["--lr", "-1"], "--lr: must be > 0"),
    ("train", ["--split-seed", "-1"], "--split-seed: must be in [0, 4294967295], got -1"),
    ("train", ["--seed", "-1"], "--seed: must be in [0, 4294967295], got -1"),
    ("train", ["--seed", "18446744073709551616"], "--seed: must be in [0, 4294967295], got 18446744073709551616"),
    ("train", ["--split-seed", "4294967296"], "--split-seed: must be in [0, 4294967295]"),
    ("train", ["--seed", "x"], "--seed: invalid int value: 'x'"),
    ("train", ["--seq-len", "1"], "--seq-len: must be at least 2"),
    ("train", ["--train-samples", "0"], "--train-samples: must be at least 1"),
    ("train", ["--val-samples", "0"], "--val-samples: must be at least 1"),
    ("train", ["--epochs", "0"], "--epochs: must be at least 1"),
    ("train", ["--batch-size", "0"], "--batch-size: must be at least 1"),
    ("train", ["--weight-decay", "-0.1"], "--weight-decay: must be >= 0"),
    ("train", ["--grad-clip", "0"], "--grad-clip: must be > 0"),
    ("train", ["--eval-every", "-1"], "--eval-every: must be at least 0"),
    ("train", ["--checkpoint-every", "0"], "--checkpoint-every: must be at least 1"),
    ("train", ["--alpha", "1.5"], "--alpha: must be in [0, 1], got 1.5"),
    ("train", ["--alpha", "nan"], "--alpha: must be a finite number"),
    ("train", ["--distances", "0"], "--distances: each must be at least 1, got 0"),
    ("train", ["--distances", "2", "2"], "--distances: repeated values"),
    ("train", ["--skip-start", "-1"], "--skip-start: must be at least 0"),
    ("train", ["--blend", "mix"], "--blend: invalid choice: 'mix'"),
    ("train", ["--sparsity", "none"], "--sparsity: invalid choice: 'none'"),
    ("train", ["--sparsity-weight", "-1"], "--sparsity-weight: must be >= 0"),
    ("train", ["--dial", "-5"], "--dial: must be >= 0"),
    ("train", ["--gates", "--alpha", "0"], "--alpha: gated models need 0 < alpha < 1"),
    ("train", ["--dataset", "nope"], "--dataset: unknown corpus 'nope'"),
    ("train", ["--dataset", "missing.txt"], "--dataset: corpus file missing.txt does not exist"),
    ("train", ["--config", "missing.toml"], "--config: missing.toml does not exist"),
    ("train", ["--config", "{bad_toml}"], "is not valid TOML"),
    ("train", ["--config", "{str_seed}"], "--seed: expected an integer, got '3'"),
    ("train", ["--config", "{unknown}"], "--learning-rate: unknown option"),
    ("train", ["--config", "{skip_alpha}"], "--alpha: expected a number, got 'x'"),
    ("train", ["--config", "{list_json}"], "must hold a table of options"),
    ("train", ["--config", "{neg_json}"], "--batch-size: must be at least 1, got -4"),
    ("train", ["--resume", "nope"], "--resume: unknown run id 'nope'"),
    ("train", ["--resume", "train-20260101-000000-abcdef", "--lr", "1"], "--resume: continues"),
    ("train", ["--model", "/no/such/dir"], "--model: '/no/such/dir' is neither an existing folder nor a hub name"),
    ("train", ["--model", "{file}"], "is a file; give the model's folder"),
    ("train", ["--bogus"], "unrecognized arguments: --bogus"),
    ("train", ["--data-dir", "{file}"], "--data-dir: "),
    ("train", ["--data-dir", ""], "--data-dir: empty path"),
    ("sweep", ["--tap-sets", ","], "--tap-sets: a tap set needs at least one distance"),
    ("sweep", ["--tap-sets", "3,x"], "--tap-sets: expected comma-separated distances"),
    ("sweep", ["--alphas", "2"], "--alphas: each must be in [0, 1], got 2.0"),
    ("sweep", ["--seeds", "0", "0"], "--seeds: repeated values"),
    ("sweep", ["--seeds", "-1"], "--seeds: each must be in [0, 4294967295]"),
    ("sweep", ["--seeds", "0", "4294967296"], "--seeds: each must be in [0, 4294967295], got 4294967296"),
    ("patch", ["--prompt", "Hi", "--intensity", "0.2", "--seed", "18446744073709551616"], "--seed: must be in [0, 4294967295], got 18446744073709551616"),
    ("lens", ["--prompt", "Hi", "--seed", "18446744073709551616"], "--seed: must be in [0, 4294967295], got 18446744073709551616"),
    ("tuned_lens", ["--seed", "18446744073709551616"], "--seed: must be in [0, 4294967295], got 18446744073709551616"),
    ("steer", ["--prompt", "Hi", "--a", "x", "--b", "y", "--layer", "3", "--seed", "18446744073709551616"], "--seed: must be in [0, 4294967295], got 18446744073709551616"),
    ("sweep", ["--variants", "odd"], "--variants: invalid choice: 'odd'"),
    ("sweep", ["--cpus-per-trial", "0"], "--cpus-per-trial: must be at least 1"),
    ("sweep", ["--distances", "0"], "--distances: each must be at least 1"),
    ("sweep", ["--lr", "inf"], "--lr: must be a finite number"),
    ("dose", ["--prompt", "Hi", "--seeds", "-5"], "--seeds: each must be in [0, 4294967295], got -5"),
    ("dose", ["--prompt", "Hi", "--intensities", "1.5"], "--intensities: each must be in [0, 1]"),
    ("dose", ["--prompt", "Hi", "--intensities", "nan"], "--intensities: each must be a finite number"),
    ("dose", ["--prompt", "Hi", "--max-tokens", "0"], "--max-tokens: must be in [1, 512]"),
    ("dose", ["--prompt", "Hi", "--max-tokens", "100000"], "--max-tokens: must be in [1, 512]"),
    ("dose", ["--prompt", "Hi", "--temperature", "-1"], "--temperature: must be in [0, 100]"),
    ("dose", ["--prompt", "Hi", "--top-p", "0"], "--top-p: must be > 0"),
    ("dose", ["--prompt", "Hi", "--top-p", "1.5"], "--top-p: must be at most 1"),
    ("dose", ["--prompt", "Hi", "--dial", "-5"], "--dial: must be >= 0"),
    ("dose", ["--prompt", "Hi", "--mechanisms", "nope"], "--mechanisms: invalid choice: 'nope'"),
    ("dose", ["--prompts-file", "missing.txt"], "--prompts-file: missing.txt does not exist"),
    ("dose", ["--prompt", "Hi", "--model", "/no/such/dir"], "--model: '/no/such/dir' is neither"),
    ("dose", ["--prompt", "Hi", "--run", "nope"], "--run: unknown run id 'nope'"),
    ("capture", ["--max-tokens", "100000"], "--max-tokens: 100000 is more than the 3072 tokens"),
    ("capture", ["--max-tokens", "3"], "--max-tokens: must be at least 4"),
    ("capture", ["--seq-len", "1"], "--seq-len: must be at least 2"),
    ("capture", ["--samples", "0"], "--samples: must be at least 1"),
    ("capture", ["--batch-size", "0"], "--batch-size: must be at least 1"),
    ("capture", ["--seed", "-1"], "--seed: must be in [0, 4294967295]"),
    ("capture", ["--dataset", "nope"], "--dataset: unknown corpus 'nope'"),
    ("capture", ["--run", "nope"], "--run: unknown run id 'nope'"),
    ("capture", ["--model", "nope"], "--model: 'nope' is neither"),
    ("analyze", ["--captures", "a", "a"], "--captures: a is given twice"),
    ("analyze", ["--captures", "nope"], "--captures: unknown run id 'nope'"),
    ("analyze", ["--captures", "x", "--seed", "-1"], "--seed: must be in [0, 4294967295]"),
    ("analyze", ["--captures", "x", "--seed", "99999999999999999999"], "--seed: must be in [0, 4294967295]"),
    ("analyze", [], "the following arguments are required: --captures"),
    ("make_story_corpus", ["--per-prompt", "0"], "--per-prompt: must be in [1, 64]"),
    ("make_story_corpus", ["--temperature", "-1"], "--temperature: must be > 0"),
    ("make_story_corpus", ["--max-tokens", "0"], "--max-tokens: must be in [8, 2048]"),
    ("make_story_corpus", ["--prompts", "0"], "--prompts: must be in [1, 96]"),
    ("make_story_corpus", ["--top-p", "2"], "--top-p: must be at most 1"),
    ("make_story_corpus", ["--seed", "-3"], "--seed: must be in [0, 4294967295]"),
    ("check_model", ["--max-tokens", "0"], "--max-tokens: must be in [1, 512]"),
    ("check_model", ["--model", "/no/such/dir"], "--model: '/no/such/dir' is neither"),
    ("fetch_model", ["--data-dir", "{file}"], "is a file, not a folder"),
    ("bio_eval", ["--windows", "-3"], "--windows: must be in [2,"),
    ("bio_eval", ["--strengths", "9"], "--strengths: each must be at most 2"),
    ("bio_eval", ["--data-dir", "{file}"], "is a file, not a folder"),
]


@pytest.mark.parametrize("job, argv, message", CASES, ids=[f"{j}:{' '.join(a)}" for j, a, _ in CASES])
def test_bad_job_input_fails_in_one_line(job, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative file names in the cases resolve here
    named = files(tmp_path)
    data = tmp_path / "data"
    argv = [a.format(**named) for a in argv]
    if "--data-dir" not in argv:
        argv += ["--data-dir", str(data)]
    code, err = run_job(job, argv, capsys)
    assert code == 2, err
    assert_one_line(err, message.format(**named))
    assert not (data / "runs").exists() and Store(data).list_runs().empty


@pytest.mark.parametrize("value, message", [("", "PSILONET_DATA: is set but empty"),
                                            ("{file}", "PSILONET_DATA: ")])
@pytest.mark.parametrize("job", ["train", "dose", "capture", "fetch_model"])
def test_bad_data_folder_setting(job, value, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", value.format(**files(tmp_path)))
    code, err = run_job(job, ["--prompt", "Hi"] if job == "dose" else [], capsys)
    assert code == 2
    assert_one_line(err, message)


@pytest.mark.parametrize("name, message", [("empty", "is empty"), ("binary", "looks binary"),
                                           ("latin1", "is not UTF-8 (byte 0xe9")])
@pytest.mark.parametrize("job", ["train", "capture"])
def test_unreadable_corpus_files_are_named(job, name, message, tmp_path, capsys):
    path = files(tmp_path)[name]  # refused before any model loads (there is none in this folder)
    code, err = run_job(job, ["--dataset", path, "--data-dir", str(tmp_path / "data")], capsys)
    assert code == 2
    assert_one_line(err, f"--dataset: corpus file {path} {message}")
    assert Store(tmp_path / "data").list_runs().empty


@pytest.mark.parametrize("job", ["train", "capture"])
def test_empty_story_corpus_is_refused(job, tmp_path, capsys):
    corpus = tmp_path / "corpora" / "smol_stories.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("")
    code, err = run_job(job, ["--dataset", "smol-stories", "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, f"--dataset: corpus file {corpus} is empty")


def test_story_corpus_is_never_replaced_by_an_incomplete_one(tmp_path):
    out = tmp_path / "smol_stories.jsonl"
    out.write_text('{"text": "shipped"}\n')
    row = {"text": "a story", "prompt": "p"}
    for rows in ([], [row, {**row, "text": ""}], [row]):
        with pytest.raises(make_story_corpus.cli.JobFault, match="the existing corpus is kept"):
            make_story_corpus.write_corpus(out, rows, expected=2)
        assert out.read_text() == '{"text": "shipped"}\n'
    make_story_corpus.write_corpus(out, [row, row], expected=2)
    assert len(out.read_text().splitlines()) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["smol_stories.jsonl"]  # no temporary file left


# ---------------------------------------------------------------------- faults on a tiny model

STORY = ("The little fox ran across the snowy field to find her friends. They played by the river until "
         "the sun went down, and then everyone walked home together, tired and happy.")


def tiny_train(tiny_model_dir, data, *extra):
    corpus = Path(data).parent / f"{Path(data).name}-corpus.txt"
    corpus.write_text("\n\n".join(f"{i}. {STORY}" for i in range(40)))  # small: tokenised in milliseconds
    return ["--model", str(tiny_model_dir), "--dataset", str(corpus), "--seq-len", "16", "--train-samples", "8",
            "--val-samples", "4",
            "--skip-start", "1", "--distances", "1", "--checkpoint-every", "1", "--quiet",
            "--data-dir", str(data), *extra]


def test_diverged_training_is_a_recorded_fault(tiny_model_dir, tmp_path, capsys):
    code, err = run_job("train", tiny_train(tiny_model_dir, tmp_path, "--lr", "1e30"), capsys)
    assert code == 1
    assert_one_line(err, "TrainingDiverged: loss is")
    run = Store(tmp_path).list_runs().iloc[0]
    assert run.state == "failed" and "TrainingDiverged" in run.error
    assert_consistent(tmp_path)


def test_full_disk_during_training_is_a_recorded_fault(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import errno

    from psilonet.training import loop

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoint")

    monkeypatch.setattr(loop, "save_checkpoint", no_space)
    code, err = run_job("train", tiny_train(tiny_model_dir, tmp_path), capsys)
    assert code == 1
    assert_one_line(err, "the disk is full (checkpoint)")
    run = Store(tmp_path).list_runs().iloc[0]
    assert run.state == "failed" and "No space left" in run.error
    assert_consistent(tmp_path)


def test_truncated_skip_weights_are_named(tiny_model_dir, tmp_path, capsys):
    assert run_job("train", tiny_train(tiny_model_dir, tmp_path), capsys)[0] == 0
    store = Store(tmp_path)
    run_id = store.list_runs().run_id.iloc[0]
    weights = store.run_dir(run_id) / "skip_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = run_job("dose", ["--run", run_id, "--prompt", "Hi", "--max-tokens", "2", "--data-dir", str(tmp_path)],
                        capsys)
    assert code == 2
    assert_one_line(err, f"run {run_id}: its skip weights {weights} is truncated")
    assert len(store.list_runs()) == 1
    assert_consistent(tmp_path)


def test_ctrl_c_marks_the_run_interrupted_and_resumable(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from psilonet.training import loop

    saved = loop.save_checkpoint
    calls = []

    def save_then_ctrl_c(*args, **kwargs):
        saved(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_ctrl_c)
    code, err = run_job("train", tiny_train(tiny_model_dir, tmp_path, "--train-samples", "16"), capsys)
    assert code == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("interrupted (Ctrl-C):")
    store = Store(tmp_path)
    run = store.list_runs().iloc[0]
    assert run.state == "interrupted" and run.error == "interrupted (Ctrl-C)"
    monkeypatch.setattr(loop, "save_checkpoint", saved)
    code, err = run_job("train", ["--resume", run.run_id, "--quiet", "--data-dir", str(tmp_path)], capsys)
    assert code == 0, err
    resumed = store.get_run(run.run_id)
    assert resumed["state"] == "complete" and resumed["summary"]["steps"] == 4
    assert_consistent(tmp_path)


def fake_captures(store: Store, models: list[str]) -> list[str]:
    """Complete capture runs as the catalog sees them (analysis refuses them before reading data)."""
    ids = []
    for model in models:
        with store.begin_run("capture", config={}, model=model, dataset="python-docs") as w:
            w.finish({"sides": ["baseline", "trained"], "layers": 31, "heads": 9, "tokens": 64})
        ids.append(w.run_id)
    return ids


@pytest.mark.parametrize("models, extra, message", [
    (["m1", "m2"], [], "--captures: they come from different models (m1, m2)"),
    (["m1"], ["--layers", "20-10"], "--layers: 20-10 is reversed; write the lower layer first (10-20)"),
    (["m1"], ["--layers", "10-40"], "--layers: 10-40 is outside the model's layers 0-30"),
    (["m1"], ["--layers", "ten"], "--layers: expected a range like 10-20, got 'ten'"),
    (["m1"], ["--layers", ""], "--layers: is empty"),
    (["m1"], ["--layers", " "], "--layers: is empty"),
])
def test_analyze_refuses_before_reading_any_capture(models, extra, message, tmp_path, capsys):
    store = Store(tmp_path)
    ids = fake_captures(store, models)
    code, err = run_job("analyze", ["--captures", *ids, *extra, "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, message)
    assert len(store.list_runs()) == len(models)
    assert_consistent(tmp_path)

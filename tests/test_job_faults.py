"""Faults and refusals one class at a time: exit codes with one meaning each (2 refused before any
run row, 1 a fault during the work, 130/143 interrupted or terminated), the file behind every
fault named in our own words, a catalog that never says complete for what is not there, and
the checks that need a model's config.json or two options at once.

Most cases fail before any model loads; the rest run on the tiny model in a second or two.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from jobs import analyze, bio_eval, capture, choose_blas, dose, fetch_model, make_story_corpus, sweep, train
from psilonet import config
from psilonet.store import Store
from tests.test_bad_input import STORY, assert_consistent, assert_one_line, tiny_train

REPO = Path(__file__).resolve().parents[1]
JOBS = {"train": train, "sweep": sweep, "dose": dose, "capture": capture, "analyze": analyze,
        "bio_eval": bio_eval, "fetch_model": fetch_model, "make_story_corpus": make_story_corpus}


def run_job(name: str, argv: list[str], capsys) -> tuple[int, str]:
    code = JOBS[name].main(argv)
    return code, capsys.readouterr().err


def lines_of(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


# ---------------------------------------------------------------------- one seed range

def test_every_seed_field_has_the_one_declared_range():
    from jobs.make_story_corpus import StoryOptions
    from psilonet.analysis.capture import CaptureConfig
    from psilonet.generation.bio_eval import BioEvalConfig
    from psilonet.generation.dose_config import DoseConfig
    from psilonet.training.loop import TrainConfig

    seeds = [(cls, f) for cls in (TrainConfig, CaptureConfig, BioEvalConfig, DoseConfig, StoryOptions)
             for f in dataclasses.fields(cls) if "seed" in f.name]
    assert len(seeds) == 6
    for cls, f in seeds:
        assert (f.metadata["min"], f.metadata["max"]) == (0, 2**32 - 1), (cls.__name__, f.name)
    with pytest.raises(config.ConfigError, match=r"seed: must be in \[0, 4294967295\], got 4294967296"):
        config.check_seed("seed", 2**32)


# ---------------------------------------------------------------------- refusals: exit 2, nothing written

@pytest.fixture
def odd_paths(tmp_path):
    """A folder, a FIFO and a symlink loop, each where a file is expected."""
    (tmp_path / "afolder.txt").mkdir()
    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    (tmp_path / "both.toml").write_text("alpha = 0.3\n[skip]\nalpha = 0.5\n")
    return {"dir": str(tmp_path / "afolder.txt"), "fifo": str(tmp_path / "fifo.txt"),
            "loop": str(tmp_path / "loop.txt"), "both": str(tmp_path / "both.toml"), "plain_dir": str(tmp_path)}


REFUSED = [
    ("train", ["--dataset", "{dir}"], "--dataset: corpus file {dir} is a folder, not a file"),
    ("train", ["--dataset", "{fifo}"], "--dataset: corpus file {fifo} is a FIFO (named pipe), not a regular file"),
    ("train", ["--dataset", "{loop}"], "--dataset: corpus file {loop} is a symlink loop"),
    ("train", ["--dataset", "{plain_dir}"], "--dataset: {plain_dir} is a folder, not a file; give a .txt"),
    ("train", ["--config", "{loop}"], "--config: {loop} is a symlink loop"),
    ("train", ["--model", "{loop}"], "--model: {loop} is a symlink loop"),
    ("train", ["--config", "{dir}"], "--config: {dir} is a folder, not a file"),
    ("train", ["--config", "{both}"], "--config: alpha is set both at the top and under [skip]; keep one"),
    ("train", ["--batch-size", "64", "--train-samples", "8"],
     "--batch-size: 64 is more than the 8 windows of --train-samples"),
    ("dose", ["--prompts-file", "{fifo}"], "--prompts-file: {fifo} is a FIFO"),
    ("dose", ["--prompts-file", "{dir}"], "--prompts-file: {dir} is a folder, not a file"),
    ("dose", ["--prompt", "Hi", "--dial", "0.5"], "--dial: needs --run"),
    ("dose", ["--prompt", "Hi", "--run", "nope", "--model", "m"], "--model: --run nope generates with the run's"),
    ("dose", ["--prompt", "Hi", "--intensities", "0.1", "0.1"], "--intensities: repeated values (0.1"),
    ("dose", ["--prompt", "Hi", "--seeds", "1", "1"], "--seeds: repeated values (1"),
    ("capture", ["--run", "nope", "--model", "m"], "--model: --run nope captures the run's own base model"),
    ("capture", ["--batch-size", "64", "--samples", "8", "--max-tokens", "8"],
     "--batch-size: 64 is more than the 8 windows of --samples"),
    ("capture", ["--dataset", "{fifo}"], "--dataset: corpus file {fifo} is a FIFO"),
    ("bio_eval", ["--corpora", "python-docs", "python-docs"], "--corpora: repeated values ('python-docs'"),
    ("bio_eval", ["--seed", "4294967296"], "--seed: must be in [0, 4294967295]"),
    ("make_story_corpus", ["--seed", "4294967296"], "--seed: must be in [0, 4294967295]"),
    ("sweep", ["--tap-sets", "3,3"], "--distances: repeated values"),
    ("train", ["--dataset", ""], "--dataset: is empty; give a value or leave the flag out"),
    ("train", ["--model", " "], "--model: is empty"),
    ("capture", ["--run", ""], "--run: is empty"),
    ("dose", ["--prompt", ""], "--prompt: is empty"),
    ("analyze", ["--captures", "x", ""], "--captures: is empty"),
]


@pytest.mark.parametrize("job, argv, message", REFUSED, ids=[f"{j}:{' '.join(a)}" for j, a, _ in REFUSED])
def test_refused_in_one_line_before_any_row(job, argv, message, odd_paths, tmp_path, capsys):
    data = tmp_path / "data"
    argv = [a.format(**odd_paths) for a in argv] + ["--data-dir", str(data)]
    code, err = run_job(job, argv, capsys)
    assert code == 2, err
    assert_one_line(err, message.format(**odd_paths))
    assert not data.exists() or Store(data).list_runs().empty


@pytest.mark.parametrize("job, argv, warning", [
    ("train", ["--sparsity-weight", "0.1"], "--sparsity-weight: has no effect without --sparsity"),
    ("train", ["--sparsity", "l1", "--sparsity-weight", "0.1", "--distances", "3"],
     "--sparsity: has no effect with one distance"),
    ("train", ["--sparsity", "l1", "--distances", "3", "4"], "--sparsity: has no effect with --sparsity-weight 0"),
    ("train", ["--dial", "0.5"], "--dial: has no effect without --gates"),
    ("sweep", ["--distances", "1", "--tap-sets", "1,", "--seeds", "0"],
     "--distances/--tap-sets: d=1 alpha=0.65 is given more than once; it is trained and counted once"),
])
def test_flags_without_effect_warn_in_one_line(job, argv, warning, tmp_path, capsys):
    # The data folder has no model, so the job stops right after its checks: the warning came first.
    code, err = run_job(job, [*argv, "--data-dir", str(tmp_path)], capsys)
    lines = lines_of(err)
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("warning: ") and warning in lines[0], lines[0]
    assert "the default model is not converted yet" in lines[1]


@pytest.mark.parametrize("job, argv, message", [
    ("train", ["--seq-len", "600"], "--seq-len: 600 is longer than the model's context of 512 tokens"),
    ("bio_eval", ["--seq-len", "1024"],
     "--seq-len: 1025 tokens per window (--seq-len + 1) is longer than the model's context of 512 tokens"),
    ("capture", ["--seq-len", "600", "--samples", "1", "--max-tokens", "8"],
     "--seq-len: 600 is longer than the model's context of 512"),
])
def test_lengths_are_checked_against_the_context_without_loading_weights(job, argv, message, tiny_model_dir,
                                                                          tmp_path, capsys, monkeypatch):
    from psilonet.model import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, err = run_job(job, [*argv, "--model", str(tiny_model_dir), "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, message)


# ---------------------------------------------------------------------- sweeps count a config once

def test_sweep_statistics_count_a_duplicated_config_once():
    from psilonet.training import stats
    from psilonet.training.loop import TrainConfig
    from psilonet.training.sweep import SweepSpec

    rows = [("a", "d=1", 0, 1.0), ("a", "d=1", 0, 1.0), ("a", "d=1", 1, 3.0), ("b", "d=2", 0, 0.5), ("b", "d=2", 1, 0.7)]
    table = stats.summarize(pd.DataFrame(rows, columns=["config_key", "label", "seed", "improvement_pct"]))
    a = table.set_index("config_key").loc["a"]
    assert a.n == 2 and a["mean"] == pytest.approx(2.0) and a["std"] > 0

    spec = SweepSpec(TrainConfig(), distance_sets=[[1], [1], [2]], seeds=[0, 1]).validate()
    labels = [label for _, label, _ in spec.configs()]
    assert labels == ["d=1 alpha=0.65"] * 2 + ["d=2 alpha=0.65"] * 2
    assert spec.repeated() == ["d=1 alpha=0.65"]


# ---------------------------------------------------------------------- environment variables

def python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, **env})


PROBE = "import psilonet; from psilonet import runtime; print(runtime.active_blas().name)"


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS variables matter on Linux")
def test_blas_variables_are_named_in_one_line_warnings(tmp_path):
    corrupt = tmp_path / "choice.json"
    corrupt.write_text("{not json")
    cases = [
        ({"PSILONET_BLAS": "nonsense"}, "warning: PSILONET_BLAS: 'nonsense' is not a known name"),
        ({"PSILONET_WORKLOAD": "trainig"}, "warning: PSILONET_WORKLOAD: 'trainig' is not decode or training"),
        ({"PSILONET_BLAS_CHOICE": str(tmp_path / "nope" / "c.json")}, "PSILONET_BLAS_CHOICE: "
                                                                      f"{tmp_path / 'nope' / 'c.json'} does not exist"),
        ({"PSILONET_BLAS_CHOICE": str(corrupt)}, f"BLAS choice file {corrupt} is corrupt"),
    ]
    for env, message in cases:
        out = python(PROBE, **env)
        lines = lines_of(out.stderr)
        assert out.returncode == 0 and len(lines) == 1 and message in lines[0], (env, out.stderr)
        assert out.stdout.strip() != "reference", env  # a bad value falls back to auto, not to the slow BLAS
    out = python(PROBE, PSILONET_BLAS="OpenBLAS")
    assert out.stderr == "" and out.stdout.strip() in ("openblas", "reference")


def test_choose_blas_refuses_a_record_in_a_missing_folder_before_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PSILONET_BLAS_CHOICE", str(tmp_path / "nope" / "choice.json"))
    monkeypatch.setattr(choose_blas, "measure", lambda *a: pytest.fail("measured"))
    assert choose_blas.main([]) == 2
    assert_one_line(capsys.readouterr().err, f"PSILONET_BLAS_CHOICE: its folder {tmp_path / 'nope'} does not exist")


@pytest.mark.parametrize("value, traceback", [("0", False), ("false", False), ("no", False), ("1", True)])
def test_debug_variable_reads_zero_false_no_as_off(value, traceback, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PSILONET_DEBUG", value)
    argv = ["--captures", "capture-20260101-000000-abcdef", "--data-dir", str(tmp_path)]
    if traceback:
        with pytest.raises(Exception, match="unknown run id"):
            analyze.main(argv)
    else:
        code, err = run_job("analyze", argv, capsys)
        assert code == 2
        assert_one_line(err, "--captures: unknown run id")


# ---------------------------------------------------------------------- models and checkpoints

def test_truncated_model_files_are_not_reused(tmp_path):
    from psilonet.model import loading

    folder = tmp_path / "model"
    folder.mkdir()
    src = REPO / "data" / "models" / loading.DEFAULT_MODEL_DIRNAME
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    with open(src / "model.safetensors", "rb") as f:
        (folder / "model.safetensors").write_bytes(f.read(1 << 20))  # the header and the first MiB
    assert not loading.is_complete(folder)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    assert loading.gguf_problem(gguf) == f"is truncated (1004 of {loading.GGUF_SIZE} bytes)"
    assert loading.gguf_problem(tmp_path / "none.gguf") == "does not exist"


def interrupted_run(tiny_model_dir, data: Path, capsys, monkeypatch, sig: int | None = None) -> tuple[str, str]:
    """A training run stopped after its first checkpoint by Ctrl-C (or by the signal ``sig``)."""
    from psilonet.training import loop

    saved = loop.save_checkpoint

    def save_then_stop(*args, **kwargs):
        saved(*args, **kwargs)
        if sig is None:
            raise KeyboardInterrupt
        os.kill(os.getpid(), sig)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    code, err = run_job("train", tiny_train(tiny_model_dir, data, "--train-samples", "16"), capsys)
    monkeypatch.setattr(loop, "save_checkpoint", saved)
    assert code == (130 if sig is None else 128 + sig), err
    run = Store(data).list_runs().iloc[0]
    assert run.state == "interrupted"
    return run.run_id, err


def test_sigterm_marks_the_run_and_names_how_to_resume(tiny_model_dir, tmp_path, capsys, monkeypatch):
    run_id, err = interrupted_run(tiny_model_dir, tmp_path, capsys, monkeypatch, sig=signal.SIGTERM)
    assert lines_of(err) == [f"terminated (SIGTERM): run {run_id} is marked interrupted; continue it with: "
                             f"python -m jobs.train --resume {run_id}"]
    assert Store(tmp_path).get_run(run_id)["error"] == "terminated (SIGTERM)"


def test_resume_names_a_damaged_checkpoint_and_says_when_it_starts_over(tiny_model_dir, tmp_path, capsys,
                                                                       monkeypatch):
    run_id, err = interrupted_run(tiny_model_dir, tmp_path, capsys, monkeypatch)
    assert f"run {run_id} is marked interrupted; continue it with: python -m jobs.train --resume {run_id}" in err
    store = Store(tmp_path)
    ckpt = store.staging_dir / run_id / "checkpoint"
    resume = ["--resume", run_id, "--quiet", "--data-dir", str(tmp_path)]

    state = (ckpt / "state.json").read_text()
    (ckpt / "state.json").write_text("{oops")
    code, err = run_job("train", resume, capsys)
    assert code == 2
    assert_one_line(err, f"--resume: checkpoint file {ckpt / 'state.json'} is corrupt (not valid JSON); delete")
    (ckpt / "state.json").write_text(state)

    weights = ckpt / "skip_weights.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-10])
    code, err = run_job("train", resume, capsys)
    assert code == 2
    assert_one_line(err, f"--resume: checkpoint file {weights} is truncated ({len(whole) - 10} of {len(whole)} bytes)")
    assert store.get_run(run_id)["state"] == "interrupted"  # a refusal changes nothing

    import shutil

    shutil.rmtree(ckpt)
    code, err = run_job("train", resume, capsys)
    assert code == 0, err
    assert f"warning: --resume: run {run_id} has no checkpoint in {ckpt}; it starts over from step 0" in err
    assert store.get_run(run_id)["state"] == "complete"
    assert_consistent(tmp_path)


# ---------------------------------------------------------------------- the catalog and faults during work

def tiny_capture(tiny_model_dir, data: Path, *extra) -> list[str]:
    return ["--model", str(tiny_model_dir), "--seq-len", "16", "--samples", "4", "--max-tokens", "32",
            "--batch-size", "4", "--quiet", "--data-dir", str(data), *extra]


def test_a_deleted_capture_reads_missing_and_analyze_refuses_without_a_row(tiny_model_dir, tmp_path, capsys):
    import shutil

    assert run_job("capture", tiny_capture(tiny_model_dir, tmp_path), capsys)[0] == 0
    store = Store(tmp_path)
    capture_id = store.list_runs().run_id.iloc[0]
    folder = store.runs_dir / capture_id
    shutil.copytree(folder, tmp_path / "kept")
    shutil.rmtree(folder)
    run = store.get_run(capture_id)
    assert run["state"] == "missing" and str(folder) in run["error"]
    assert store.list_runs(status="complete").empty
    code, err = run_job("analyze", ["--captures", capture_id, "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, f"--captures: {capture_id} is missing, not complete (its folder {folder} is gone")
    assert len(store.list_runs()) == 1

    shutil.copytree(tmp_path / "kept", folder)  # put back: complete again
    assert store.get_run(capture_id)["state"] == "complete"
    parquet = folder / "activations.parquet"
    parquet.write_bytes(parquet.read_bytes()[:-100])
    code, err = run_job("analyze", ["--captures", capture_id, "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, f"--captures: {parquet} is truncated or corrupt (its Parquet footer does not read); "
                         f"capture run {capture_id} again")
    assert len(store.list_runs()) == 1


def test_ctrl_c_during_a_capture_removes_its_partial_files(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from psilonet.analysis import capture as capturing

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(capturing, "token_rows", stop)
    code, err = run_job("capture", tiny_capture(tiny_model_dir, tmp_path), capsys)
    run = Store(tmp_path).list_runs().iloc[0]
    assert code == 130
    assert lines_of(err) == [f"interrupted (Ctrl-C): run {run.run_id} is marked interrupted; its partial files "
                             "were removed; run the job again"]
    assert run.state == "interrupted" and not any((tmp_path / "runs" / ".staging").iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: room for the catalog and a run, not for a capture's activations."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({out.stderr.strip() or out.returncode}); "
                    "the disk-full case needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_capture_is_a_fault_that_leaves_nothing(tiny_model_dir, small_disk, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"{i}. {STORY}" for i in range(400)))
    argv = tiny_capture(tiny_model_dir, small_disk, "--dataset", str(corpus), "--samples", "200",
                        "--max-tokens", "3200", "--batch-size", "50")
    code, err = run_job("capture", argv, capsys)
    lines = lines_of(err)
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: the disk is full") and "run the job again" in lines[0], err
    assert "No space left" not in err and "IO Error" not in err
    store = Store(small_disk)
    assert not any(store.staging_dir.iterdir())  # the partial capture gave its space back
    assert (store.list_runs().state != "complete").all()


def test_capture_names_its_own_flag_when_the_corpus_is_too_small(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text(STORY)
    code, err = run_job("capture", tiny_capture(tiny_model_dir, tmp_path, "--dataset", str(corpus),
                                                "--samples", "50"), capsys)
    assert code == 2
    assert_one_line(err, f"--samples: corpus '{corpus}' yields")
    assert "fewer than the 50 requested" in err and "train" not in err
    assert Store(tmp_path).list_runs().empty


@pytest.mark.parametrize("job, target", [
    ("analyze", "psilonet.analysis.compare.analyse_source"),
    ("dose", "psilonet.generation.dosing.generate_doses"),
    ("bio_eval", "psilonet.generation.bio_eval.evaluate"),
    ("check_model", "psilonet.training.evaluation.mean_token_loss"),
])
def test_a_fault_during_the_work_is_exit_1_with_the_run_failed_and_cleaned(job, target, tiny_model_dir, tmp_path,
                                                                           capsys, monkeypatch):
    import errno
    import importlib

    from jobs import check_model

    JOBS["check_model"] = check_model
    model = ["--model", str(tiny_model_dir), "--data-dir", str(tmp_path)]
    argv = {"dose": ["--prompt", "Hi", "--max-tokens", "2", "--no-chat", *model],
            "bio_eval": ["--corpora", "python-docs", "--windows", "2", "--seq-len", "8", *model],
            "check_model": ["--max-tokens", "2", *model]}.get(job)
    if job == "analyze":
        assert run_job("capture", tiny_capture(tiny_model_dir, tmp_path), capsys)[0] == 0
        argv = ["--captures", Store(tmp_path).list_runs().run_id.iloc[0], "--data-dir", str(tmp_path)]
    module, name = target.rsplit(".", 1)

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/dev/broken")

    monkeypatch.setattr(importlib.import_module(module), name, broken)
    code, err = run_job(job, argv, capsys)
    store = Store(tmp_path)
    failed = store.list_runs().iloc[0]
    assert code == 1, err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert lines_of(err)[-1] == (f"error: Input/output error (/dev/broken); run {failed.run_id} failed and its "
                                 "partial files were removed"), err  # on its own line, after any progress bar
    assert failed.state == "failed" and "Input/output error" in failed.error
    assert not (store.staging_dir / failed.run_id).exists()
    assert_consistent(tmp_path)


def test_a_published_run_the_catalog_was_not_told_of_is_complete_and_said_so(tmp_path, capsys, monkeypatch):
    from jobs import cli
    from psilonet.store import StoreError

    store = Store(tmp_path)

    def catalog_full(*args, **kwargs):
        raise StoreError("catalog operation failed: IO Error: No space left on device")

    @cli.job
    def job(argv):
        with store.begin_run("capture", config={}) as writer:
            monkeypatch.setattr(store, "_mark_complete", catalog_full)
            writer.finish({})
        return 0

    assert job([]) == 1
    run_id = store.list_runs().run_id.iloc[0]
    assert_one_line(capsys.readouterr().err, f"run {run_id} is published and complete, but the catalog could not be "
                                             "told (the disk is full); it reads complete on the next look")
    monkeypatch.undo()
    assert store.get_run(run_id)["state"] == "complete"
    assert_consistent(tmp_path)


def test_a_damaged_catalog_is_named_in_our_words(tmp_path, capsys):
    (tmp_path / "catalog.duckdb").write_bytes(b"not a database" * 500)
    code, err = run_job("analyze", ["--captures", "capture-20260101-000000-abcdef", "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, f"cannot open {tmp_path / 'catalog.duckdb'}: it is not a DuckDB database (damaged")
    assert "IO Error" not in err

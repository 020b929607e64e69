"""The dose job end to end on a tiny model, and the default model's sober output."""

from __future__ import annotations

import pytest

from jobs import dose as dose_job
from psilonet.generation import decoding as generation
from psilonet.generation.decoding import SamplingConfig
from psilonet.generation.dosing import generate_doses
from psilonet.store import Store


def test_prompts_file_x_intensities_x_seeds_into_the_store(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n{broken\n{"prompt": "The sea is"}\n')
    code = dose_job.main(["--model", str(tiny_model_dir), "--prompts-file", str(prompts), "--prompt", "Hello",
                          "--intensities", "0", "0.3", "--seeds", "1", "2", "--max-tokens", "6", "--no-chat",
                          "--data-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "line 2: not valid JSON" in out.err
    store = Store(tmp_path)
    run = store.list_runs(kind="dose").iloc[0]
    assert run.state == "complete" and run.summary["generations"] == 12 and run.summary["skipped_prompts"] == 1
    with store.open_run(run.run_id) as reader:
        gens, tokens, layers = reader.generations(), reader.token_entropy(), reader.layer_entropy()
    assert len(gens) == 12 and set(gens.intensity) == {0.0, 0.3} and set(gens.seed) == {1, 2}
    assert set(gens.prompt) == {"Once upon a time", "The sea is", "Hello"}
    assert (gens.n_tokens == tokens.groupby("gen_id").size().reindex(gens.gen_id).values).all()
    assert layers.layer.nunique() == 7  # h[0..6] of the tiny model
    assert (tokens.groupby("gen_id").entropy.mean().values == pytest.approx(gens.sort_values("gen_id").mean_entropy.values))


@pytest.mark.parametrize("args, message", [
    (["--intensities", "1.5"], "--intensities: each must be in [0, 1]"),
    (["--max-tokens", "100000"], "--max-tokens: must be in [1, 512]"),
    ([], "no prompt to run"),
])
def test_bad_options(tiny_model_dir, tmp_path, capsys, args, message):
    assert dose_job.main(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert Store(tmp_path).list_runs().empty


def test_binary_prompts_file_is_refused(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"\x00\x01\x02binary")
    assert dose_job.main(["--model", str(tiny_model_dir), "--prompts-file", str(bad), "--data-dir", str(tmp_path)]) == 2
    assert "looks binary" in capsys.readouterr().err


@pytest.mark.integration
def test_default_model_sober_dose_equals_plain_greedy(default_model):
    model, tokenizer = default_model
    prompt = "What is the capital of France?"
    cfg = SamplingConfig(max_tokens=16)
    plain = generation.generate(model, tokenizer, prompt, cfg)[0]
    results = generate_doses(model, tokenizer, prompt, [0.0, 0.3], sampling=cfg)
    assert results[0].text == plain and "Paris" in plain
    assert results[1].mean_entropy > results[0].mean_entropy


# ------------------------------------------------------------------ steering rows (--steer-*)

STEER = ["--steer-a", "a happy sunny day", "--steer-a", "joy and light", "--steer-b", "a sad dark night",
         "--steer-layer", "2"]


def test_steering_rows_beside_the_doses_and_strength_zero_is_the_plain_row(tiny_model_dir, tmp_path, capsys):
    from psilonet.generation import steering
    from psilonet.model import loading
    from psilonet.store import tables as T

    common = ["--model", str(tiny_model_dir), "--prompt", "Once upon a time", "--intensities", "0", "0.3",
              "--max-tokens", "6", "--no-chat"]
    steered_dir, plain_dir = tmp_path / "steered", tmp_path / "plain"
    assert dose_job.main([*common, *STEER, "--steer-add-layers", "2", "3", "--steer-strengths", "0", "6",
                          "--data-dir", str(steered_dir)]) == 0
    assert "intensity 0.3 + steering 6 |" in capsys.readouterr().out
    # the plain run holds the steered run's rows 0 and 2 in a batch of the same size: with OpenBLAS
    # or MKL a product's rounding depends on its row count, so bit for bit holds within one size
    assert dose_job.main([*common[:5], "0", "0.1", "0.3", "0.5", *common[7:], "--data-dir", str(plain_dir)]) == 0
    store = Store(steered_dir)
    run = store.list_runs(kind="dose").iloc[0]
    with store.open_run(run.run_id) as reader:
        gens, tokens = reader.generations(), reader.token_entropy()
        rows, vector = reader.rows(T.STEERING_ROWS), reader.rows(T.STEERING_VECTOR)
    plain = Store(plain_dir)
    with plain.open_run(plain.list_runs(kind="dose").run_id.iloc[0]) as reader:
        plain_tokens = reader.token_entropy()
    # every dose row at every strength, strengths fastest: (0, 0), (0, 6), (0.3, 0), (0.3, 6)
    assert list(gens.sort_values("gen_id").intensity) == [0.0, 0.0, 0.3, 0.3]
    assert list(rows.strength) == [0.0, 6.0, 0.0, 6.0]
    for steered_gen, plain_gen in ((0, 0), (2, 2)):  # strength 0: the plain row, bit for bit
        a = tokens[tokens.gen_id == steered_gen].reset_index(drop=True)
        b = plain_tokens[plain_tokens.gen_id == plain_gen].reset_index(drop=True)
        assert list(a.token_id) == list(b.token_id) and list(a.entropy) == list(b.entropy)
    assert list(tokens[tokens.gen_id == 1].entropy) != list(tokens[tokens.gen_id == 0].entropy)
    model, tokenizer = loading.load_model(str(tiny_model_dir), tmp_path)
    want = steering.steering_vector(model, tokenizer, ["a happy sunny day", "joy and light"], ["a sad dark night"], 2)
    assert set(vector.layer) == {2} and vector.value.to_numpy() == pytest.approx(want, abs=1e-6)
    assert run.summary["generations"] == 4 and "mean_entropy@0.3+steer6" in run.summary
    assert run.config["steering"]["add_layers"] == [2, 3]


@pytest.mark.parametrize("argv, message, loads", [
    (["--steer-a", "x", "--steer-layer", "1"], "--steer-b: give set B once", False),
    (["--steer-a-file", "blank.txt", "--steer-b", "y", "--steer-layer", "1"], "--steer-a-file: blank.txt is empty", False),
    (["--steer-a", "x", "--steer-b-file", "nope.txt", "--steer-layer", "1"], "nope.txt does not exist",
     False),
    (["--steer-a", "x", "--steer-b", "y"], "--steer-layer: give the block", False),
    (["--steer-layer", "1"], "--steer-layer: needs the two prompt sets", False),
    (["--steer-a", "x", "--steer-b", "y", "--steer-layer", "-1"], "--steer-layer: -1 is out of range", False),
    (["--steer-a", "x", "--steer-b", "y", "--steer-layer", "1", "--steer-strengths", "1000"],
     "--steer-strengths: each must be in [-64, 64], got 1000", False),
    (["--steer-a", "x", "--steer-b", "y", "--steer-layer", "9"], "--steer-layer: 9 is out of range", True),
    (["--steer-a", "x", "--steer-b", "y", "--steer-layer", "1", "--steer-add-layers", "7"],
     "--steer-layers: 7 is out of range", True),
])
def test_steering_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, argv, message, loads):
    # Checks that need no model run with a model folder that does not exist: they come first.
    model = str(tiny_model_dir) if loads else str(tmp_path / "no-such-model")
    (tmp_path / "blank.txt").write_text("\n  \n")
    argv = [str(tmp_path / a) if a.endswith(".txt") else a for a in argv]
    assert dose_job.main(["--model", model, "--prompt", "Hi", "--no-chat", "--data-dir", str(tmp_path), *argv]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert Store(tmp_path).list_runs().empty


@pytest.fixture(scope="module")
def skip_run(tiny_model_dir, tmp_path_factory):
    """A tiny trained skip run (two taps, gates) in its own data folder."""
    from jobs import train as train_job

    data = tmp_path_factory.mktemp("steer-skip")
    assert train_job.main(["--model", str(tiny_model_dir), "--seq-len", "12", "--val-samples", "2",
                           "--train-samples", "4", "--skip-start", "2", "--distances", "1", "2", "--gates",
                           "--alpha", "0.5", "--data-dir", str(data), "--quiet"]) == 0
    return data, Store(data).list_runs(kind="train").run_id.iloc[0]


def _tokens(store: Store, run_id: str):
    with store.open_run(run_id) as reader:
        return reader.token_entropy(), reader.steering_rows(), reader.steering_vector()


def test_steering_rows_on_a_trained_skip_run_and_a_stored_vector_reused(skip_run, capsys):
    from psilonet.generation import steering
    from psilonet.training import loop as training

    data, train_id = skip_run
    store = Store(data)
    common = ["--run", train_id, "--prompt", "Once upon a time", "--intensities", "0", "0.3", "--max-tokens", "5",
              "--no-chat", "--steer-strengths", "0", "5", "--data-dir", str(data)]
    assert dose_job.main([*common, *STEER]) == 0
    first = store.list_runs(kind="dose").iloc[0]
    assert first.parent == train_id and first.config["steering"]["layer"] == 2
    tokens, rows, vector = _tokens(store, first.run_id)
    # The vector is read from the skip model (its skip pathway in the residual stream), not the base.
    model, tokenizer, _ = training.load_trained(store, train_id, data_dir=store.data_dir)
    want = steering.steering_vector(model, tokenizer, ["a happy sunny day", "joy and light"], ["a sad dark night"], 2)
    assert vector.value.to_numpy() == pytest.approx(want, abs=1e-6)
    assert list(rows.strength) == [0.0, 5.0, 0.0, 5.0]

    # --steer-run: the same vector from the stored run, the same rows token for token.
    assert dose_job.main([*common, "--steer-run", first.run_id]) == 0
    second = store.list_runs(kind="dose").query("run_id != @first.run_id").iloc[0]
    assert second.config["steering"]["run"] == first.run_id and "a" not in second.config["steering"]
    again, rows2, vector2 = _tokens(store, second.run_id)
    assert list(vector2.value) == list(vector.value) and list(rows2.strength) == list(rows.strength)
    assert list(again.token_id) == list(tokens.token_id) and list(again.entropy) == list(tokens.entropy)
    assert steering.stored_vector(store, second.run_id)[0] == 2


@pytest.mark.parametrize("extra, message", [
    (["--steer-run", "dose-19990101-000000-abcdef"], "--steer-run: "),
    (["--steer-run", "TRAIN"], "is a train run; a steering vector comes from"),
    (["--steer-run", "TRAIN", *STEER], "--steer-run: give either a stored vector"),
    (["--steer-run", "TRAIN", "--steer-layer", "2"], "--steer-layer: --steer-run brings the layer"),
])
def test_steer_run_bad_input_is_one_line_and_writes_nothing(skip_run, capsys, extra, message):
    data, train_id = skip_run
    before = len(Store(data).list_runs())
    extra = [train_id if a == "TRAIN" else a for a in extra]
    # A model folder that does not exist: each check comes before anything loads.
    assert dose_job.main(["--model", str(data / "no-such-model"), "--prompt", "Hi", "--no-chat",
                          "--data-dir", str(data), *extra]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert len(Store(data).list_runs()) == before


# ------------------------------------------------------------------ steering on the Dosed generation page

def _dose_page(monkeypatch, data, params: dict):
    from tests.conftest import open_app_page

    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_app_page("dose", params)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _click(at, label: str):
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_dose_page_steers_beside_the_doses_saves_the_vector_and_reuses_it(skip_run, monkeypatch):
    from psilonet.generation import steering
    from psilonet.training import loop as training

    data, train_id = skip_run
    page = {"run": train_id, "doses": "0.0,0.3", "max": "4", "chat": "0", "prompt": "Once upon a time"}
    at = _dose_page(monkeypatch, data, {**page, "steer": "prompts", "sa": "a happy sunny day\njoy and light",
                                        "sb": "a sad dark night", "slayer": "2", "sstr": "0,5"})
    assert at.text_area(key="steer_a").value == "a happy sunny day\njoy and light"
    _click(at, "Generate")
    assert not at.error, [e.value for e in at.error]
    items = at.session_state["dose_results"]["items"]
    # One batch of intensities x strengths, strengths fastest, as jobs.dose makes it.
    assert [(r.intensity, r.steering) for r in items[0].results] == [(0.0, 0.0), (0.0, 5.0), (0.3, 0.0), (0.3, 5.0)]
    labels = list(at.dataframe[0].value.label)
    assert "intensity 0.3 + steering 5" in labels
    assert at.query_params["steer"] == "prompts" and at.query_params["slayer"] == "2" and at.query_params["sstr"] == "0.0,5.0"
    _click(at, "Save to the store")
    store = Store(data)
    saved = store.list_runs(kind="dose").iloc[0]
    model, tokenizer, _ = training.load_trained(store, train_id, data_dir=store.data_dir)
    want = steering.steering_vector(model, tokenizer, ["a happy sunny day", "joy and light"], ["a sad dark night"], 2)
    layer, vector = steering.stored_vector(store, saved.run_id)
    assert layer == 2 and vector == pytest.approx(want, abs=1e-6)
    assert saved.config["steering"]["a"] == ["a happy sunny day", "joy and light"]
    with store.open_run(saved.run_id) as reader:
        assert list(reader.steering_rows().strength) == [0.0, 5.0, 0.0, 5.0]
    stored = _dose_page(monkeypatch, data, {"view": "stored", "dose_run": saved.run_id})
    assert "intensity 0.3 + steering 5" in list(stored.dataframe[0].value.label)

    # The same vector from the stored run: the same continuations.
    at = _dose_page(monkeypatch, data, {**page, "steer": "run", "srun": saved.run_id, "sstr": "0,5"})
    _click(at, "Generate")
    again = at.session_state["dose_results"]["items"][0].results
    assert [r.token_ids for r in again] == [r.token_ids for r in items[0].results]


@pytest.mark.parametrize("params, where, message", [
    ({"steer": "prompts", "sa": "x", "sb": "y", "slayer": "9"}, "error", "Steering layer: 9 is out of range"),
    ({"steer": "prompts", "sa": "x", "sb": "y", "slayer": "1", "sadd": "1,8"}, "error", "Steering layers: 8 is out of range"),
    ({"steer": "corpora", "sca": "python-docs", "scb": "python-docs"}, "info", "choose two different corpora"),
    ({"steer": "prompts", "sa": "x", "sb": "y", "sstr": "0,100"}, "warning", "`sstr=0,100`: outside [-64, 64]"),
    ({"steer": "files"}, "info", "Upload set a's prompt file"),
])
def test_dose_page_bad_steering_is_one_line_and_generates_nothing(skip_run, monkeypatch, params, where, message):
    data, train_id = skip_run
    at = _dose_page(monkeypatch, data, {"run": train_id, "doses": "0.0", "max": "2", "chat": "0", **params})
    if where == "error":
        _click(at, "Generate")
    shown = [e.value for e in getattr(at, where)]
    assert sum(message.lower() in m.lower() for m in shown) == 1, shown
    assert not (at.session_state["dose_results"]["items"] if "dose_results" in at.session_state else [])


@pytest.mark.parametrize("widget, key, value, message", [
    ("text_area", "steer_b", "   ", "Steering: prompt set B is empty"),
    ("text_input", "steer_strengths", "0, 100", "Steering strengths: each must be in [-64, 64], got 100"),
    ("text_input", "steer_add", "two", "Steering: the blocks and strengths must be numbers"),
])
def test_dose_page_bad_steering_widgets_block_generate(skip_run, monkeypatch, widget, key, value, message):
    data, train_id = skip_run
    at = _dose_page(monkeypatch, data, {"run": train_id, "steer": "prompts", "slayer": "1"})
    getattr(at, widget)(key=key).set_value(value).run()
    shown = [i.value for i in at.info if "Steering" in i.value]
    assert len(shown) == 1 and shown[0].startswith(message), shown
    assert not any(b.label == "Generate" for b in at.button)

"""Every page of the Streamlit app, headless with AppTest: on an empty store and on a store
filled by real jobs on a tiny model; query parameters round-trip; no exception ever."""

from __future__ import annotations


import pytest
from streamlit.testing.v1 import AppTest

from psilonet.generation import prompts
from psilonet.store import Store

from conftest import open_app_page

PAGES = ["runs", "training", "similarity", "trajectories", "taps", "dose"]


def open_page(page: str, params: dict | None = None) -> AppTest:
    at = open_app_page(page, params)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_an_empty_store(tmp_path, monkeypatch, page):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_page(page)
    if page != "dose":
        assert any("No " in i.value for i in at.info), [i.value for i in at.info]


def test_runs_page_lists_every_run_with_its_state(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("runs")
    table = at.dataframe[0].value
    assert {"train", "sweep", "capture", "analysis", "dose"} <= set(table.kind)
    assert set(table.state) == {"complete"}
    at = open_page("runs", {"kinds": "sweep"})
    assert set(at.dataframe[0].value.kind) == {"sweep"}


def test_training_page_for_a_run_and_a_sweep(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("training", {"run": train_id})
    assert at.selectbox[0].value == train_id
    assert len(charts(at)) == 2 and len(at.metric) == 4
    assert at.query_params["run"] == train_id
    sweep_id = Store(data).list_runs(kind="sweep").run_id.iloc[0]
    at = open_page("training", {"run": sweep_id})
    assert len(at.dataframe[0].value) == 4  # 2 distances x 2 alphas
    assert len(charts(at)) == 1
    assert at.get("download_button")


def test_similarity_page_and_its_permalink(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("similarity", {"metric": "svcca", "layers": "1,4"})
    assert at.radio[1].value == "svcca"
    assert at.slider[0].value == (1, 4)
    assert len(charts(at)) == 4  # layer curve, head heatmaps, cross-layer matrix, token norms
    assert at.query_params["metric"] == "svcca" and at.query_params["layers"] == "1,4"
    at.radio[1].set_value("pwcca").run()
    assert at.query_params["metric"] == "pwcca"


def test_malformed_query_parameters_warn_instead_of_failing(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("similarity", {"metric": "nonsense", "layers": "x,y", "run": "analysis-19990101-000000-abcdef"})
    assert len(at.warning) >= 2
    assert at.radio[1].value == "cka"
    at = open_page("dose", {"seed": "-5x", "doses": "a,b"})
    assert at.warning


def test_trajectories_and_taps_pages(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("trajectories", {"unit": "sequence"})
    assert at.radio[1].value == "sequence" and len(charts(at)) == 1
    at = open_page("taps", {"run": train_id})
    assert len(charts(at)) == 4  # evolution (one panel per distance: 2), final heatmap, gate alphas


def test_dose_page_generates_with_a_trained_run_and_saves(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("dose", {"run": train_id, "doses": "0.0,0.3", "max": "4", "chat": "0"})
    assert at.selectbox[0].value == train_id
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    results = at.dataframe[0].value
    assert list(results.intensity) == [0.0, 0.3] and (results.tokens > 0).all()
    assert len(charts(at)) == 2
    before = len(Store(data).list_runs(kind="dose"))
    next(b for b in at.button if b.label == "Save to the store").click().run()
    assert len(Store(data).list_runs(kind="dose")) == before + 1
    assert any("Saved as run" in s.value for s in at.success)


def test_dose_page_generates_on_q4_weights(filled, monkeypatch):
    # The weights choice of the dose page: a trained skip run on the default model's q4 base.
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("dose", {"run": train_id, "weights": "q4", "doses": "0.0,0.3", "max": "4", "chat": "0"})
    assert at.radio(key="weights").value == "q4"
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert list(at.dataframe[0].value.intensity) == [0.0, 0.3]


BAD_DOSE_LINKS = [
    ("seed", str(2**32), "Seed"), ("seed", "-1", "Seed"), ("max", "-5", "Max tokens"), ("temp", "-1", "Temperature"),
    ("temp", "inf", "Temperature"), ("temp", "nan", "Temperature"), ("custom", "5", None), ("mech", "garbage", None),
    ("doses", "-0.5,abc", None), ("chat", "maybe", None), ("prompt", "x" * 5000, None), ("view", "nowhere", None),
]


@pytest.mark.parametrize("name,value,number", BAD_DOSE_LINKS, ids=[f"{n}={v[:12]}" for n, v, _ in BAD_DOSE_LINKS])
def test_each_bad_dose_link_value_warns_once_and_keeps_the_form(tmp_path, monkeypatch, name, value, number):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_page("dose", {name: value})
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and f"`{name}=" in warnings[0], warnings
    assert at.button and at.button[0].label == "Generate"  # the whole form is still there
    defaults = {"Seed": 0, "Max tokens": 48, "Temperature": 0.0}
    if number:
        assert next(n for n in at.number_input if n.label == number).value == defaults[number]
    if name == "custom":
        assert at.slider[0].value == 0.0
    if name == "mech":
        assert at.multiselect[1].value == ["noise", "phase", "shuffle", "bleed"]
    if name == "prompt":
        assert at.text_area[0].value == "The nature of consciousness is"


def test_good_dose_link_values_are_used_without_warnings(tmp_path, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_page("dose", {"seed": str(2**32 - 1), "max": "512", "temp": "2", "custom": "0.45",
                            "mech": "noise,bleed", "doses": "0.1,0.3", "prompt": "y" * 4000})
    assert not at.warning, [w.value for w in at.warning]
    assert [n.value for n in at.number_input][:3] == [2**32 - 1, 512, 2.0]  # then the patching view's
    assert at.slider[0].value == 0.45 and at.multiselect[1].value == ["noise", "bleed"]
    assert at.multiselect[0].value == ["micro-dose", "double dose"]
    at = open_page("dose", {"src": "file"})
    uploader = at.get("file_uploader")[0].proto
    assert "1 MB and 1,000 prompts" in uploader.label  # the real limits
    # The browser lets a file over the limit through, so that the page can refuse it inline.
    assert uploader.max_upload_size_mb * 1_000_000 > prompts.MAX_BYTES


def test_runs_page_shows_the_selected_run_and_opens_a_dose_run(filled, monkeypatch):
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("runs", {"run": train_id})
    assert any(train_id in s.value for s in at.subheader)
    assert len(at.json) == 2  # summary and configuration in full
    dose_id = Store(data).list_runs(kind="dose").run_id.iloc[-1]
    at = open_page("runs", {"run": dose_id})
    links = at.get("page_link")
    assert links and links[0].proto.query_string == f"view=stored&dose_run={dose_id}"
    at = open_page("runs", {"run": "no-such-run"})
    assert len(at.warning) == 1 and "`run=no-such-run`" in at.warning[0].value


def test_a_stored_dose_run_opens_with_its_texts_and_charts(filled, monkeypatch):
    data, _ = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    dose_id = Store(data).list_runs(kind="dose").run_id.iloc[-1]
    at = open_page("dose", {"view": "stored", "dose_run": dose_id})
    assert at.selectbox[0].value == dose_id
    stored = Store(data).open_run(dose_id).generations()
    assert [c.value for c in at.code][1:] == list(stored.text)  # the prompt, then every text verbatim
    assert len(charts(at)) == 2 and at.get("download_button")


def test_run_all_prompts_of_a_file_skips_over_context_ones_and_saves_one_run(filled, monkeypatch):
    """A .jsonl of 3 prompts, one longer than the tiny model's 512-token context: the long one is
    named and skipped before any work, the other two run at both intensities and are saved as
    one run; generated text is shown literally (no Markdown)."""
    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    at = open_page("dose", {"run": train_id, "doses": "0.0,0.3", "max": "3", "chat": "0", "src": "file"})
    lines = ['{"prompt": "Hello **there**"}', '{"prompt": "' + "word " * 900 + '"}', '{"prompt": "Once upon"}']
    at.get("file_uploader")[0].set_value(("prompts.jsonl", "\n".join(lines).encode(), "application/json")).run()
    assert not at.exception and not at.error
    run_all = next(b for b in at.button if b.label.startswith("Run all"))
    assert run_all.label == "Run all 3 prompts"
    run_all.click().run()
    assert not at.exception, [e.value for e in at.exception]
    skipped = [w.value for w in at.warning if "skipped before generating" in w.value]
    assert len(skipped) == 1 and "line 2:" in skipped[0] and "context of 512" in skipped[0]
    assert len(charts(at)) == 3  # overview (prompt x intensity), token heatmap, layer profile
    assert at.code[0].value == "Hello **there**"  # the prompt verbatim, in a literal block
    before = len(Store(data).list_runs(kind="dose"))
    next(b for b in at.button if b.label == "Save to the store").click().run()
    runs = Store(data).list_runs(kind="dose")
    assert len(runs) == before + 1
    with Store(data).open_run(runs.run_id.iloc[0]) as reader:
        gens = reader.generations()
    assert sorted(gens.prompt.unique()) == ["Hello **there**", "Once upon"] and len(gens) == 4
    assert "line 2" in runs.config.iloc[0]["skipped"][0]


def test_a_request_over_the_work_bound_is_refused_before_any_work(filled, monkeypatch):
    from psilonet.app import dose_requests

    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    monkeypatch.setattr(dose_requests, "MAX_REQUEST_WORK", 10)
    at = open_page("dose", {"run": train_id, "max": "8", "chat": "0"})
    at.button[0].click().run()
    assert any("limit is 10" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not at.get("vega_lite_chart")


def test_a_refused_upload_blocks_generation_and_skipped_lines_are_listed(tmp_path, monkeypatch):
    """With the file as the source nothing runs until a usable file has arrived: not after a refused
    file, and not while none has arrived (a file over the server's limit never reaches the page,
    the browser refuses it), so the typed prompt never runs in a file's place."""
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    at = open_page("dose")
    def generate_buttons():
        return [b for b in at.button if b.label in ("Generate",) or b.label.startswith("Run all")]

    assert generate_buttons() and not at.get("file_uploader")  # the typed default prompt can run
    at.radio(key="prompt_source").set_value("file").run()
    assert at.query_params["src"] == "file" and at.get("file_uploader")
    assert not generate_buttons()
    assert any("refused by the browser before it is sent" in i.value and "10 MB" in i.value for i in at.info)
    refusals = [("bad.txt", b"\x00\x01binary", "binary"), ("empty.txt", b"", "empty"),
                ("latin.txt", "caf\u00e9\n".encode("latin-1"), "not UTF-8"),
                ("big.txt", b"a prompt\n" * (prompts.MAX_BYTES // 9 + 1), "the limit is 1,000,000")]
    for name, data, why in refusals:
        at.get("file_uploader")[0].set_value((name, data, "text/plain")).run()
        assert at.error and why in at.error[0].value and name in at.error[0].value, (name, at.error)
        assert not generate_buttons(), name  # the typed prompt does not run instead
        assert any("Remove or fix the prompts file" in i.value for i in at.info)
    at.get("file_uploader")[0].set_value(None).run()  # removed: still nothing runs from the file source
    assert not at.error and not generate_buttons()
    at.get("file_uploader")[0].set_value(("p.jsonl", b'{"prompt": "a"}\nnot json\n{"x": 1}\n', "application/json")).run()
    warning = at.warning[0].value
    assert "- line 2:" in warning and "\n- line 3:" in warning  # one list item per skipped line
    assert [b.label for b in at.button if b.label.startswith("Run all")] == ["Run all 1 prompt"]
    at.radio(key="prompt_source").set_value("text").run()  # back to the typed prompt: it can run again
    assert generate_buttons() and "src" not in at.query_params


def test_runs_page_bad_kinds_link_warns_once(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("runs", {"kinds": "garbage,sweep"})
    assert len(at.warning) == 1 and "`kinds=garbage,sweep`" in at.warning[0].value
    assert len(set(at.dataframe[0].value.kind)) > 1  # every kind shown


def test_the_page_ends_a_generation_whose_session_is_gone(filled, monkeypatch):
    """When the tab closes mid-generation the streaming callback stops the script: no further
    tokens are decoded and nothing is kept."""
    from psilonet.app import helpers as app

    data, train_id = filled
    monkeypatch.setenv("PSILONET_DATA", str(data))
    calls = []

    def gone_after_three():
        calls.append(1)
        return len(calls) > 3

    monkeypatch.setattr(app, "session_gone", lambda: gone_after_three)
    at = open_page("dose", {"run": train_id, "doses": "0.0", "max": "40", "chat": "0"})
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(calls) == 4  # asked once per streamed token; the fourth answer ended the script
    assert not at.get("vega_lite_chart")


@pytest.mark.parametrize("page", ["runs", "training", "similarity", "trajectories", "taps"])
def test_every_page_on_the_demo_data_shows_a_chart_and_no_empty_state(filled, monkeypatch, page):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    # The demo makes one training run, multi-tap and gated; here the sweep's runs are newer.
    at = open_page(page, {"run": filled[1]} if page == "taps" else None)
    assert charts(at) or page == "runs", page  # the runs page is a table
    assert not [i.value for i in at.info if i.value.startswith("No ")]


def test_representation_round_trips_through_the_url_and_names_every_chart(filled, monkeypatch):
    monkeypatch.setenv("PSILONET_DATA", str(filled[0]))
    at = open_page("similarity")
    assert at.radio[0].value == "rms" and at.query_params["rep"] == "rms"  # the default
    at = open_page("similarity", {"rep": "raw"})
    assert at.radio[0].value == "raw"
    assert all("raw states" in c.proto.spec for c in charts(at) if "Token norms" not in c.proto.spec)
    at.radio[0].set_value("no-sink").run()
    assert at.query_params["rep"] == "no-sink"
    assert "without the sink tokens" in charts(at)[0].proto.spec
    at = open_page("trajectories", {"rep": "no-sink", "unit": "sequence"})
    assert at.radio[0].value == "no-sink" and "without the sink tokens" in charts(at)[0].proto.spec
    assert all(o.startswith("sequence") for o in at.multiselect[0].options)  # sequences, not token ids
    at = open_page("similarity", {"rep": "centred"})
    assert at.radio[0].value == "rms" and at.warning


def test_empty_states_name_the_command_that_fills_them(tmp_path, monkeypatch):
    import pandas as pd

    from psilonet.app import helpers

    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    runs = pd.DataFrame({"run_id": ["capture-a", "train-b"], "kind": ["capture", "train"],
                         "state": ["complete", "complete"]})
    assert "jobs.analyze --captures capture-a" in helpers.fill_hint(("analysis",), runs)
    assert "No runs" not in helpers.fill_hint(("analysis",), runs)
    assert "jobs.capture --run train-b" in helpers.fill_hint(("analysis",), runs[runs.kind == "train"])
    assert "make demo" in helpers.fill_hint(("analysis",), runs.iloc[0:0])
    assert "jobs.bio_eval --windows" in helpers.fill_hint(("bio_eval",), runs)  # the job itself, not "make demo"
    assert "jobs.dose --prompt" in helpers.fill_hint(("dose",), runs)

    assert "jobs.ablate --run train-b" in helpers.fill_hint(("ablation",), runs)
    only_capture = helpers.fill_hint(("ablation",), runs[runs.kind == "capture"])
    assert "jobs.train" in only_capture and "jobs.ablate" in only_capture and "make demo" in only_capture
    # "make demo" is named only for the kinds it really makes (the steps of jobs.demo.main).
    import inspect
    import re

    from jobs import demo

    assert set(re.findall(r'step\("(\w+)"', inspect.getsource(demo.main))) == set(helpers.DEMO_KINDS)
    assert "make demo makes one too" in helpers.fill_hint(("bio_eval",), runs).replace("`", "")
    assert "every kind" not in " ".join(helpers.fill_hint((k,), runs) for k in ("bio_eval", "dose", "ablation"))

"""Several users at once: real concurrent Streamlit sessions (AppTest instances, each running the
dose page in its own script thread) against one process-wide cached model on a tiny model."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from psilonet.app.model_queue import MODEL_QUEUE

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PROMPTS = ["Once upon a time", "The sea is", "Hello there", "A small robot"]


@pytest.fixture
def served(tiny_model_dir, tmp_path, monkeypatch):
    """A data folder whose default model is the tiny one (the page loads the default model)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "SmolLM2-135M-Instruct").symlink_to(tiny_model_dir)
    monkeypatch.setenv("PSILONET_DATA", str(tmp_path))
    return tmp_path


def open_dose(prompt: str, seed: int, tokens: int = 6) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in {"prompt": prompt, "seed": str(seed), "max": str(tokens), "doses": "0,0.3",
                       "chat": "0", "temp": "0.7"}.items():
        at.query_params[key] = value
    at.switch_page("views/dose.py")
    at.run()
    return at


def generate(at: AppTest) -> list[str]:
    next(b for b in at.button if b.label == "Generate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    (_line, _prompt, _seed, results), = at.session_state["dose_results"]["items"]  # one prompt: one item
    return [r.text for r in results]


def test_four_sessions_generating_at_once_get_what_they_get_alone(served):
    sessions = [open_dose(p, seed) for seed, p in enumerate(PROMPTS)]
    generate(sessions[0])  # loads the model once for the process, so the timings below compare generations
    start = time.perf_counter()
    alone = [generate(at) for at in sessions]
    serial_s = time.perf_counter() - start

    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(sessions))

    def user(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = generate(sessions[i])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    turns_before, waited_before = MODEL_QUEUE.turns, MODEL_QUEUE.waited_s
    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(sessions))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    concurrent_s = time.perf_counter() - start
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert [results[i] for i in range(len(sessions))] == alone
    assert MODEL_QUEUE.turns - turns_before == len(sessions)  # every generation took its turn
    assert all(any(text.strip() for text in texts) for texts in alone)
    print(f"4 sessions: one after another {serial_s:.2f} s, all at once {concurrent_s:.2f} s, "
          f"waits in the queue {MODEL_QUEUE.waited_s - waited_before:.2f} s in total")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_server_memory_stays_bounded_over_twenty_generations(served):
    at = open_dose("Once upon a time", 0, tokens=4)
    generate(at)
    generate(at)
    gc.collect()
    after_two = rss_bytes()
    for _ in range(18):
        generate(at)
    gc.collect()
    after_twenty = rss_bytes()
    print(f"RSS after 2 generations {after_two / 2**20:.0f} MiB, after 20 {after_twenty / 2**20:.0f} MiB")
    assert after_twenty <= 1.2 * after_two

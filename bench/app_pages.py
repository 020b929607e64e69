"""Render time of every page of the explorer on the current data folder ($PSILONET_DATA or
./data), headless through Streamlit's AppTest, with the number of runs in the store.

For each page: the **first render** (Streamlit's data caches cleared, so every query runs, as
for the first visitor after a job published a run) and a **warm rerun** (what a user sees when
changing a widget). AppTest's own per-session setup (a scan of installed packages for
components, which a server does once at start) is excluded by an untimed run first.  Python imports and the model load happen once per server process, so one
untimed render of every page (and, with ``--model``, loading the dose model) comes first.  Pages
are interleaved over ``--rounds`` rounds; the median and the range over rounds are reported.

    python -m bench.app_pages [--rounds 3] [--model]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from psilonet.app import helpers as app_helpers

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGES = {"runs": {}, "training": {}, "similarity": {}, "trajectories": {}, "taps": {}, "dose": {},
         "dose (stored run)": {"view": "stored"}, "bio": {}, "lens": {}, "attention": {}}
FIRST_TARGET, WARM_TARGET = 1.5, 0.3


def render(page: str, params: dict) -> tuple[float, float, str]:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(f"views/{page.split()[0]}.py")
    # AppTest scans every installed package for Streamlit components on its first run (0.3-0.8 s
    # here); a server does that once at start, so a throwaway run comes first.
    at.run()
    st.cache_data.clear()
    start = time.perf_counter()
    at.run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    at.run()
    warm = time.perf_counter() - start
    status = "error" if at.exception or at.error else "ok"
    return first, warm, status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.app_pages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", action="store_true", help="load the dose model first, as a server that has generated")
    args = p.parse_args(argv)
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # AppTest's "no runtime" notices, once per page
    runs = app_helpers.store().list_runs()
    print(f"{len(runs)} runs in {app_helpers.data_dir()}")
    if args.model:
        from psilonet.model import loading as modeling

        app_helpers.generator(modeling.DEFAULT_MODEL, None, str(app_helpers.data_dir()))
    for page, params in PAGES.items():  # imports, once per process
        render(page, params)
    times: dict[str, list[tuple[float, float, str]]] = {page: [] for page in PAGES}
    for _ in range(args.rounds):
        for page, params in PAGES.items():
            times[page].append(render(page, params))
    worst_first = worst_warm = 0.0
    for page, samples in times.items():
        first = [s[0] for s in samples]
        warm = [s[1] for s in samples]
        status = "ok" if all(s[2] == "ok" for s in samples) else "error"
        worst_first, worst_warm = max(worst_first, statistics.median(first)), max(worst_warm, statistics.median(warm))
        print(f"{page:18s} first render {statistics.median(first):5.2f} s ({min(first):.2f}-{max(first):.2f}), "
              f"warm rerun {statistics.median(warm):5.2f} s ({min(warm):.2f}-{max(warm):.2f}) [{status}]")
    print(f"slowest page: first render {worst_first:.2f} s (target < {FIRST_TARGET} s), "
          f"warm rerun {worst_warm:.2f} s (target < {WARM_TARGET} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

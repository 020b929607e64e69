"""Render time of every page of the explorer on the current data folder ($PSILONET_DATA or
./data), headless through Streamlit's AppTest: the first render (cold caches) and a warm rerun
(what a user sees when changing a widget), with the number of runs in the store.

    python -m bench.app_pages
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from psilonet.app import helpers as app_helpers

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGES = ["runs", "training", "similarity", "trajectories", "taps", "dose"]


def main() -> int:
    runs = app_helpers.store().list_runs()
    print(f"{len(runs)} runs in {app_helpers.data_dir()}")
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=120)
        at.switch_page(f"views/{page}.py")
        start = time.perf_counter()
        at.run()
        cold = time.perf_counter() - start
        start = time.perf_counter()
        at.run()
        warm = time.perf_counter() - start
        status = "error" if at.exception else "ok"
        print(f"{page:13s} first render {cold:5.2f} s, warm rerun {warm:5.2f} s ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

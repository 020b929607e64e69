"""Several visitors browsing one explorer server at once: page render times and server memory.

Each visitor is a real Streamlit session over the server's WebSocket (the same messages a
browser sends: a rerun request per page, with the page name and query string; the password
form filled in when the server asks for one). A render is timed from the request to the
server's "script finished" message: the server-side part of a page view, which is what
concurrent visitors compete for (drawing the page is each visitor's own browser's work).

    python -m bench.app_sessions --url http://127.0.0.1:8501 [--sessions 10] [--rounds 3]

The server must already run (``make app`` or ``make share``); the password, if any, comes from
$PSILONET_PASSWORD. Round 1 warms the caches; the figures are over the later rounds. With --pid (the server's process
id) it also reports the server's CPU seconds per render and its memory before and after.
Only loopback addresses are accepted: this is a load generator, not a way to probe others.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PAGES = {"": "Runs", "training": "Training", "similarity": "Similarity", "trajectories": "Trajectories",
         "taps": "Tap weights", "dose": "Dosed generation", "bio": "Bio interventions"}
MAX_SESSIONS = 32


@dataclass
class Render:
    seconds: float
    elements: list = field(default_factory=list)  # Element protos, in arrival order

    def of(self, kind: str) -> list:
        return [e for e in self.elements if e.WhichOneof("type") == kind]

    @property
    def headings(self) -> list[str]:
        return [e.heading.body for e in self.of("heading")]

    @property
    def errors(self) -> list[str]:
        alerts = [e.alert.body for e in self.of("alert") if e.alert.format == e.alert.ERROR]
        return alerts + [e.exception.message for e in self.of("exception")]

    def text(self) -> str:
        return "\n".join(str(e) for e in self.elements)


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise ValueError(f"--url: cannot resolve {host!r}") from None
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"--url: {host!r} is not a loopback address; this load generator only targets this machine")


class Session:
    """One visitor: a Streamlit session over the server's WebSocket."""

    def __init__(self, url: str, password: str | None = None, timeout: float = 60.0, cookie: str | None = None):
        """``cookie``: a Cookie header for the handshake, as a browser sends (a remembered login)."""
        from websockets.sync.client import connect

        check_loopback(url)
        parts = urlsplit(url)
        ws_url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path.rstrip('/')}/_stcore/stream"
        self.timeout = timeout
        self.password = password
        self.ws = connect(ws_url, subprotocols=["streamlit"], open_timeout=timeout, max_size=None, proxy=None,
                          legacy=True, additional_headers={"Cookie": cookie} if cookie else None)

    def close(self) -> None:
        self.ws.close()

    def run(self, page: str = "", query: str = "", widgets: list | None = None) -> Render:
        """Ask for one page run; collect its elements until the script finishes (after reruns)."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        msg.rerun_script.query_string = query
        msg.rerun_script.page_name = page
        msg.rerun_script.widget_states.widgets.extend(widgets or [])
        start = time.perf_counter()
        self.ws.send(msg.SerializeToString())
        render = Render(0.0)
        deadline = start + self.timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"page {page or 'runs'!r} did not finish within {self.timeout} s")
            reply = ForwardMsg()
            reply.ParseFromString(self.ws.recv(timeout=left))
            kind = reply.WhichOneof("type")
            if kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                render.elements.append(reply.delta.new_element)
            elif kind == "script_finished":
                if reply.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    render.elements.clear()  # the rerun draws the page again
                    continue
                render.seconds = time.perf_counter() - start
                return render

    def open(self, page: str = "", query: str = "") -> Render:
        """A page as a visitor sees it, giving the password first if the server asks for it."""
        render = self.run(page, query)
        fields = [e for e in render.of("text_input") if e.text_input.type == e.text_input.PASSWORD]
        if not fields or self.password is None:
            return render
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        submit = next(e for e in render.of("button") if e.button.is_form_submitter)
        typed = WidgetState(id=fields[0].text_input.id, string_value=self.password)
        clicked = WidgetState(id=submit.button.id, trigger_value=True)
        return self.run(page, query, [typed, clicked])


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def browse(url: str, sessions: int, rounds: int, password: str | None = None, timeout: float = 60.0,
           pages: dict[str, str] = PAGES) -> list[list[tuple[int, str, Render]]]:
    """``sessions`` visitors at once, each opening every page ``rounds`` times; renders per round.

    Every visitor opens its session first, then all start each round together (a barrier), so
    the renders of a round overlap as much as they can.
    """
    if not 1 <= sessions <= MAX_SESSIONS:
        raise ValueError(f"--sessions: 1 to {MAX_SESSIONS}, got {sessions}")
    clients = [Session(url, password, timeout) for _ in range(sessions)]
    results: list[list[tuple[int, str, Render]]] = [[] for _ in range(rounds)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(sessions)
    lock = threading.Lock()

    def visitor(i: int) -> None:
        try:
            clients[i].open("", "")
            for r in range(rounds):
                barrier.wait(timeout)
                for page in pages:
                    render = clients[i].open(page)
                    with lock:
                        results[r].append((i, page, render))
        except BaseException as exc:  # reported below; a broken barrier frees the others
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=visitor, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * (rounds * len(pages) + 2))
    for c in clients:
        c.close()
    if failures:
        raise failures[0]
    return results


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, as the nearest rank below (no interpolation)."""
    return ordered[int(q * (len(ordered) - 1))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8501", help="the running server (loopback only)")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pid", type=int, help="the server's process id, to report its memory")
    args = ap.parse_args(argv)
    try:
        check_loopback(args.url)
        before = rss_mb(args.pid) if args.pid else None
        cpu_before = cpu_s(args.pid) if args.pid else None
        rounds = browse(args.url, args.sessions, args.rounds, os.environ.get("PSILONET_PASSWORD"))
        cpu = cpu_s(args.pid) - cpu_before if args.pid else None
    except (ValueError, OSError, TimeoutError) as exc:
        print(f"app_sessions: {exc}", file=sys.stderr)
        return 2
    for r, renders in enumerate(rounds, 1):
        print(f"round {r}{' (warm-up)' if r == 1 else ''}: {len(renders)} renders by {args.sessions} sessions")
        for page, title in PAGES.items():
            times = sorted(x.seconds for _, p, x in renders if p == page)
            print(f"  {title:17s} median {statistics.median(times):5.2f} s, max {times[-1]:5.2f} s")
    warm = sorted(x.seconds for renders in rounds[1:] for _, _, x in renders)
    if warm:
        print(f"warm rounds, per page ({args.sessions * (args.rounds - 1)} renders each):")
        for page, title in PAGES.items():
            times = sorted(x.seconds for renders in rounds[1:] for _, p, x in renders if p == page)
            print(f"  {title:17s} median {statistics.median(times):5.2f} s, "
                  f"95th percentile {percentile(times, 0.95):5.2f} s, max {times[-1]:5.2f} s")
        print(f"warm renders: {len(warm)}, median {statistics.median(warm):.2f} s, "
              f"95th percentile {percentile(warm, 0.95):.2f} s, max {warm[-1]:.2f} s")
    if args.pid:
        renders = sum(len(r) for r in rounds)
        print(f"server: {cpu / renders:.2f} CPU s per render over all rounds (one process: concurrent renders "
              f"share about one core); memory {before:.0f} MB before, {rss_mb(args.pid):.0f} MB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())

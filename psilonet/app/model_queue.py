"""Server-wide turns on the shared model: one generation at a time, first come, first served.

Every browser session of one Streamlit server runs its page script in its own thread, and
they all share one model object (loaded once with ``st.cache_resource``). A generation keeps
per-call state next to that model (the KV cache it builds, the dose noise it draws), and MLX
gives no guarantee for several threads evaluating one model's graph at once; on two CPU cores
it would not be faster either, since one generation already uses every core for its matmuls.
So generations queue: a session that has to wait is told how many are ahead of it, and each
gets the same output as it would alone.

The queue is a plain module-level object (modules are imported once per server process; page
scripts re-run, modules do not), so any code path that uses the model can take a turn.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator


class QueueTimeout(RuntimeError):
    """The wait for a turn was longer than the caller allowed."""


class ModelQueue:
    """A FIFO ticket lock with a count of who is waiting (for "2 ahead of you" messages)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self.turns = 0  # completed turns, for tests and monitoring
        self.waited_s = 0.0  # total seconds sessions spent waiting for a turn
        self._abandoned: set[int] = set()

    def ahead(self) -> int:
        """Generations running or queued right now."""
        with self._cond:
            return self._next_ticket - self._serving

    @contextmanager
    def turn(self, on_wait: Callable[[int], None] | None = None, timeout: float | None = None) -> Iterator[float]:
        """Hold the model for the body; yields the seconds waited.

        ``on_wait(n)`` is called once, before waiting, when ``n`` generations are ahead.
        ``timeout`` (seconds) raises :class:`QueueTimeout` and gives up the place in the queue.
        """
        start = time.monotonic()
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            ahead = ticket - self._serving
        if ahead and on_wait is not None:
            on_wait(ahead)
        with self._cond:
            deadline = None if timeout is None else start + timeout
            while self._serving != ticket:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._abandon(ticket)
                    if self._serving == ticket:
                        self._advance()
                    raise QueueTimeout(f"the model stayed busy for {timeout:g} s; try again")
                self._cond.wait(remaining)
            waited = time.monotonic() - start
            self.waited_s += waited
        try:
            yield waited
        finally:
            with self._cond:
                self.turns += 1
                self._advance()

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def _abandon(self, ticket: int) -> None:
        # A ticket that gave up is skipped when its number comes up.
        self._abandoned.add(ticket)



MODEL_QUEUE = ModelQueue()

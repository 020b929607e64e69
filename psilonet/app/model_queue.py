"""Server-wide serialisation of model use: one generation at a time, first come first served.

Every Streamlit session of a server runs its script in its own thread of one process, and they
share the cached model. Two generations at once would halve each other's speed on a small CPU
(and MLX arrays are not meant to be driven from several threads at once), so the app runs them
one after the other: :meth:`ModelQueue.slot` waits for its turn in a FIFO, reporting the place
in the queue while it waits.

Two bounds keep one visitor from taking the server: a session (``owner``) holds at most one
place at a time (a second request is refused, not queued), and at most ``max_waiting`` requests
wait behind the running one (more are refused with a message to try again later).
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator


class QueueRefused(RuntimeError):
    """The request was not queued; the message says why and what to do."""


class ModelQueue:
    def __init__(self, max_waiting: int | None = None, poll_s: float = 0.5):
        self.max_waiting = max_waiting
        self.poll_s = poll_s
        self._cond = threading.Condition()
        self._tickets: deque[object] = deque()
        self._owners: set[str] = set()

    def __len__(self) -> int:
        with self._cond:
            return len(self._tickets)

    @contextmanager
    def slot(self, owner: str, on_wait: Callable[[int], None] | None = None,
             max_waiting: int | None = None) -> Iterator[None]:
        """Hold the model for the ``with`` body once every earlier request has finished.

        ``on_wait(ahead)`` is called (outside the lock) about every ``poll_s`` seconds while
        ``ahead`` requests are in front of this one; an exception it raises (Streamlit's stop on
        a rerun or a closed tab) gives the place up. ``max_waiting`` overrides the queue's bound.
        """
        limit = self.max_waiting if max_waiting is None else max_waiting
        ticket = object()
        with self._cond:
            if owner in self._owners:
                raise QueueRefused("This session already has a generation running or waiting; "
                                   "wait for it to finish (or press Stop) before starting another.")
            waiting = max(len(self._tickets) - 1, 0)
            if limit is not None and self._tickets and waiting >= limit:
                raise QueueRefused(f"The server is busy: {waiting + 1} generations are running or waiting "
                                   "(the limit for this server). Try again in a minute.")
            self._tickets.append(ticket)
            self._owners.add(owner)
        try:
            while True:
                with self._cond:
                    ahead = self._tickets.index(ticket)
                    if ahead == 0:
                        break
                if on_wait is not None:
                    on_wait(ahead)
                with self._cond:
                    if self._tickets.index(ticket) != 0:
                        self._cond.wait(self.poll_s)
            yield
        finally:
            with self._cond:
                self._tickets.remove(ticket)
                self._owners.discard(owner)
                self._cond.notify_all()


#: The one queue of this server process (Streamlit runs every session in this process).
MODEL = ModelQueue()

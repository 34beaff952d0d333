"""Events recorded without waiting: the control plane says what happened and goes on.

A database commit can take milliseconds (or, for a remote database, far longer); the event
loop that answers scoring must not wait for one. `record` queues the event, a thread of its
own writes it, in order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from modelhost.control.store import StateStore

log = logging.getLogger("modelhost.controller")

_STOP = object()


class EventLog:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="modelhost-events", daemon=True)
        self._writer.start()

    def record(self, name: str, message: str, version: str | None = None) -> None:
        """An event of registered model `name` (of `version`), stamped now, written soon."""
        self._queue.put((time.time(), name, message, version))

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(_STOP)
        self._writer.join(timeout=10)

    def _write(self) -> None:
        while (event := self._queue.get()) is not _STOP:
            stamped, name, message, version = event
            try:
                self.store.record(name, message, version, at=stamped)
            except Exception:  # the database away: the event is logged at least
                log.exception("Could not record the event %r of %s", message, name)

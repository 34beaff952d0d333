"""A job's progress: a bar on a terminal, a line every few seconds otherwise, and a file.

The progress file (`--progress-file`) is how `modelhost up` follows a job it started: it is
rewritten whole (a temporary file renamed over it) at the start, at least once a second while
the job runs, and at the end:

    {"state": "RUNNING" | "SUCCEEDED" | "FAILED", "rows_done": 123, "rows_total": 1000 | null,
     "rows_failed": 0, "rows_per_s": 456.7, "message": null | "what went wrong",
     "errors_file": null | "/abs/OUTPUT/_errors.jsonl", "updated": <unix time>}
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from modelhost.batch.output import write_atomically

log = logging.getLogger("modelhost.batch")

LOG_EVERY_S = 5.0
FILE_EVERY_S = 1.0
_RATE_WINDOW_S = 10.0  # rows/s over the last seconds, so skipped parts do not inflate it


class Progress:
    """Counts a job's rows and shows them; thread-safe, drawn from a thread of its own."""

    def __init__(
        self,
        progress_file: str | None = None,
        stream: TextIO | None = None,
        errors_file: str | None = None,
    ) -> None:
        self.file = Path(progress_file) if progress_file else None
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty()
        self.errors_file = errors_file
        self.rows_done = 0
        self.rows_failed = 0
        self.rows_total: int | None = None
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._scoring = False  # rows are counted: show them
        self._file_lock = threading.Lock()  # the ticker and the job both rewrite the file

    def start(self, total_rows: int | None) -> None:
        """The scoring starts; `total_rows` None when the input does not say it."""
        with self._lock:
            self.rows_total = total_rows
            self._started = time.monotonic()
            self._samples.append((self._started, 0))
            self._scoring = True
        self.begin()

    def begin(self) -> None:
        """The job runs (fetching the model, building its environment): keep the file fresh."""
        self.write_file("RUNNING")
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    def advance(self, rows: int, failed: int = 0) -> None:
        """`rows` more rows are done, `failed` of them failed."""
        with self._lock:
            self.rows_done += rows
            self.rows_failed += failed
            self._samples.append((time.monotonic(), self.rows_done))

    def finish(self, ok: bool, message: str | None = None) -> None:
        """The job ended: the last line, and the progress file's final state."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if ok and self._scoring:
            self.rows_total = self.rows_done  # a text input's count was an estimate
        if self.terminal and self._scoring:
            self._draw(final=True)
        self.write_file("SUCCEEDED" if ok else "FAILED", message)

    def rows_per_s(self) -> float:
        with self._lock:
            now = time.monotonic()
            while len(self._samples) > 2 and now - self._samples[1][0] > _RATE_WINDOW_S:
                self._samples.popleft()
            if not self._samples:
                return 0.0
            since, rows = self._samples[0]
            elapsed = now - since
            return (self.rows_done - rows) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """Rows done (of the total), rows/s and the time left, as the person waiting reads it."""
        rate = self.rows_per_s()
        done, total, failed = self.rows_done, self.rows_total, self.rows_failed
        parts = [f"{done:,} rows" if total is None else f"{done:,}/{total:,} rows"]
        if total:
            parts[0] = f"{100 * done / total:3.0f}% {parts[0]}"
        parts.append(f"{rate:,.0f} rows/s")
        if total is not None and rate > 0 and done < total:
            parts.append(f"{_duration((total - done) / rate)} left")
        if failed:
            parts.append(f"{failed:,} failed")
        return "  ".join(parts)

    def write_file(self, state: str, message: str | None = None) -> None:
        """Rewrite the progress file whole: a reader never sees half of it."""
        if self.file is None:
            return
        with self._lock:
            done, total, failed = self.rows_done, self.rows_total, self.rows_failed
        status = {
            "state": state,
            "rows_done": done,
            "rows_total": total,
            "rows_failed": failed,
            "rows_per_s": round(self.rows_per_s(), 1),
            "message": message,
            "errors_file": errors
            if (errors := self.errors_file) and os.path.exists(errors)
            else None,
            "updated": time.time(),
        }
        with self._file_lock:
            write_atomically(self.file, json.dumps(status))

    def _tick(self) -> None:
        last_log = time.monotonic()
        interval = min(FILE_EVERY_S, 0.25 if self.terminal else LOG_EVERY_S)
        while not self._stop.wait(interval):
            self.write_file("RUNNING")
            if not self._scoring:
                continue
            if self.terminal:
                self._draw()
            elif time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                log.info("Scored %s", self.line())

    def _draw(self, final: bool = False) -> None:
        # Redraw one line in place: back to its start, the line, then clear what is left of it.
        self.stream.write(f"\r{self.line()}\x1b[K" + ("\n" if final else ""))
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"

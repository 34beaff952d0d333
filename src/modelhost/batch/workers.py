"""Scoring processes forked from the job's process once the model is loaded.

Forking after the load shares the imported MLflow and the model's memory copy-on-write, so a
worker costs no start-up. Each worker takes chunks from one queue as it is free, scores them and
writes their parts itself; only counts and failed chunks come back.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import queue
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost.batch.formats import Chunk, write_part
from modelhost.batch.job import BatchFailed
from modelhost.batch.output import part_name
from modelhost.batch.scoring import ChunkFailed, score
from modelhost.worker.model import ServedModel

log = logging.getLogger("modelhost.batch")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Task:
    """What workers need besides the chunks: the model, the formats, where parts go."""

    model: ServedModel
    input_format: str
    output_format: str
    output: Path
    files: list[str]


@dataclass
class Result:
    """A chunk done: its rows, and its errors file line if it failed."""

    file: int
    chunk: int
    rows: int
    failure: dict[str, Any] | None = None
    crash: str | None = None  # a worker's unexpected error, with its traceback


class Workers:
    """N forked scoring processes, a queue of chunks to them and one of results back."""

    def __init__(self, count: int, task: Task) -> None:
        _keep_large_blocks()
        context = multiprocessing.get_context("fork")
        self._chunks = context.Queue()
        self._results = context.Queue()
        # What was made before the fork (MLflow's modules, the model) lives as long as the job:
        # keep the collector off it, so it neither spends time on it in every process nor
        # writes to (and copies) the pages the workers share with this process.
        gc.freeze()
        self._processes = [
            context.Process(
                target=_work,
                args=(task, self._chunks, self._results),
                name=f"modelhost-batch-{n}",
                daemon=True,
            )
            for n in range(count)
        ]
        for process in self._processes:
            process.start()

    def put(self, chunk: Chunk) -> None:
        self._chunks.put(chunk)

    def result(self) -> Result:
        """The next chunk done; fails if a worker died."""
        while True:
            try:
                result = self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    raise BatchFailed(
                        f"A scoring process ended unexpectedly (exit code {dead[0].exitcode}); "
                        "if the machine ran out of memory, pass a smaller --chunk-rows."
                    ) from None
                continue
            if result.crash:
                raise BatchFailed(f"A scoring process failed:\n{result.crash}")
            return result

    def close(self) -> None:
        """Let the workers finish and end (after the last result was read)."""
        for _ in self._processes:
            self._chunks.put(None)
        for process in self._processes:
            process.join(timeout=30)
        self.stop()

    def stop(self) -> None:
        """End the workers now: a part being written stays under its temporary name."""
        for process in self._processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        for process in self._processes:
            process.join(timeout=10)
        # The queues' feeder threads must not wait for readers that are gone.
        for channel in (self._chunks, self._results):
            channel.cancel_join_thread()
            channel.close()


def _keep_large_blocks() -> None:
    """Serve chunk-sized blocks (and up to 32 MB) from the heap, and keep 64 MB of it freed.

    By default the C library maps each block over 128 kB afresh and unmaps it when freed, so
    every chunk passed between processes faulted its pages in again: a third of the reading
    process's time. Set before the fork, it holds in the workers too.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)
    except (OSError, AttributeError):  # not glibc: its defaults stand
        pass


def _work(task: Task, chunks: Any, results: Any) -> None:
    # The job's process decides when to stop: Ctrl-C and SIGTERM are its to handle, and it
    # ends the workers; if it dies, so do they.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    while (chunk := chunks.get()) is not None:
        file = task.files[chunk.file]
        try:
            frame = score(task.model, chunk, task.input_format, task.output_format, file)
        except ChunkFailed as e:
            results.put(Result(chunk.file, chunk.index, chunk.rows, failure=e.entry))
            continue
        except BaseException:
            results.put(Result(chunk.file, chunk.index, chunk.rows, crash=traceback.format_exc()))
            return
        try:
            name = part_name(chunk.file, chunk.index, task.output_format)
            write_part(frame, task.output / name, task.output_format)
        except BaseException:
            results.put(Result(chunk.file, chunk.index, chunk.rows, crash=traceback.format_exc()))
            return
        results.put(Result(chunk.file, chunk.index, chunk.rows))

"""Adaptive batching: concurrent requests for the model become one `predict` call.

When the model is free, the batcher takes every waiting request that can share a call with the
oldest one (same columns and types, same params, up to the row limit). It waits for more, up to
the delay limit, only while requests that have arrived are still being read, or while fewer wait
than the last batch held (those clients are likely on their way back), or, once as many wait,
while more keep arriving within a few of their average gaps (through a proxy, a crowd's
requests can arrive one by one, not together; the gateway sends those that reach it together
as one pack), so a lone client never waits for company. The limit counts from when the last
batch's answers are out. A batch whose output is not one row per input row, or that fails, is
scored again one request at a time, so a bad request only ever fails itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelhost.errors import ModelFailed, ModelhostError, NotReady
from modelhost.logs import VERSION
from modelhost.worker.model import ServedModel
from modelhost.worker.protocol import ModelInput, Table, render

log = logging.getLogger("modelhost.worker")

# Calls quicker than this (on average) run on the event loop; slower ones on the thread.
INLINE_PREDICT_S = 0.02
# How many average gaps between arrivals a batch waits for one more, once it holds as many
# requests as the last: enough to ride out a sender's or a proxy's hiccups.
STRAGGLER_GAPS = 4


@dataclass(slots=True)
class _Job:
    model_input: ModelInput
    answer: asyncio.Future[bytes]


async def _passes() -> None:
    """Two passes of the event loop: one reads what sockets hold, the next runs its handlers."""
    for _ in range(2):
        await asyncio.sleep(0)


class Batcher:
    """Owns the calls to the model; `score()` is the only way to make one."""

    def __init__(
        self,
        model: ServedModel,
        max_batch_size: int,
        max_batch_delay: float,
        on_predict: Callable[[int, float], None] = lambda rows, seconds: None,
        version: str | None = None,
    ) -> None:
        self._version = version  # tags what is logged while predicting for it
        self._model = model
        self._max_rows = max_batch_size
        self._max_delay = max_batch_delay
        self._on_predict = on_predict
        self._waiting: deque[_Job] = deque()
        self._arriving = 0  # requests being read and parsed, soon to be waiting
        self._expected = 1  # requests in the last batch: as many clients are likely coming back
        self._wakeup = asyncio.Event()
        # Requests waiting that wake the batcher: while it waits for a count, every arrival
        # before it would cost a pass of the loop (requests through a proxy come one by one).
        self._wake_at = 1
        self._rows_waiting = 0
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix="predict", initializer=VERSION.set, initargs=(version,)
        )
        self._row_aligned = True  # until the model answers a batch otherwise
        self._typical_call_s = INLINE_PREDICT_S  # a moving average; unknown at first
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        context = contextvars.copy_context()
        context.run(VERSION.set, self._version)
        self._task = asyncio.create_task(self._run(), name="batcher", context=context)

    async def stop(self) -> None:
        """Stop calling the model; requests still waiting are told the version is gone."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=False, cancel_futures=True)
        while self._waiting:
            job = self._waiting.popleft()
            if not job.answer.done():
                job.answer.set_exception(NotReady("The model version was unloaded; send again."))

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way, so a batch being formed waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def score(self, model_input: ModelInput) -> bytes:
        """The rendered predictions for one request; raises ModelhostError."""
        return await self.submit(model_input)

    def submit(self, model_input: ModelInput) -> asyncio.Future[bytes]:
        """Queue one request; its future holds the rendered predictions or a ModelhostError.
        Cancel the future to take the request back."""
        job = _Job(model_input, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._rows_waiting += model_input.rows or 0
        if len(self._waiting) >= self._wake_at or self._rows_waiting >= self._max_rows:
            self._wakeup.set()
        return job.answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_arrivals(loop)
            batch = self._take()
            self._expected = len(batch)
            if self._typical_call_s < INLINE_PREDICT_S:
                results = self._score(batch)
            else:
                results = await loop.run_in_executor(self._thread, self._score, batch)
            for job, result in zip(batch, results, strict=True):
                if job.answer.done():  # its request timed out or its client left
                    continue
                if isinstance(result, ModelhostError):
                    job.answer.set_exception(result)
                else:
                    job.answer.set_result(result)
            # Hand the answers out and read what came in meanwhile before the next batch's
            # wait starts: the delay limit bounds waiting for company, not answering.
            await _passes()

    async def _gather_arrivals(self, loop: asyncio.AbstractEventLoop) -> None:
        started = loop.time()
        deadline = started + self._max_delay
        before = len(self._waiting)
        while self._waiting_rows() < self._max_rows:
            waiting = len(self._waiting)
            await _passes()
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                return
            if len(self._waiting) > waiting:
                continue  # a burst is coming in: keep taking it
            arrived = len(self._waiting) - before
            if len(self._waiting) < self._expected:
                wait, self._wake_at = remaining, self._expected
            elif self._arriving:
                wait = remaining
            elif arrived > 0:
                # As many wait as the last batch held, but requests are still trickling in
                # (through a proxy, a crowd's requests arrive one by one): wait a few of their
                # gaps for one more, so a batch can grow to the whole crowd.
                wait = min(remaining, STRAGGLER_GAPS * (now - started) / arrived)
            else:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
            except TimeoutError:
                return
            finally:
                self._wake_at = 1

    def _waiting_rows(self) -> int:
        return self._rows_waiting

    def _take(self) -> list[_Job]:
        """The oldest waiting job and every later one that can share its predict call."""
        first = self._waiting.popleft()
        key, rows = first.model_input.batch_key, first.model_input.rows
        self._rows_waiting -= rows or 0
        if key is None or not self._row_aligned:
            return [first]
        batch, kept = [first], deque()
        while self._waiting:
            job = self._waiting.popleft()
            job_rows = job.model_input.rows or 0
            if job.model_input.batch_key == key and rows + job_rows <= self._max_rows:
                batch.append(job)
                rows += job_rows
                self._rows_waiting -= job_rows
            else:
                kept.append(job)
        self._waiting = kept
        return batch

    # Below here runs on the prediction thread.

    def _score(self, batch: list[_Job]) -> list[bytes | ModelhostError]:
        if len(batch) > 1:
            try:
                return self._score_together(batch)
            except Exception:
                pass  # score them one by one below, so only the culprit fails
        return [self._score_one(job.model_input) for job in batch]

    def _score_one(self, model_input: ModelInput) -> bytes | ModelhostError:
        try:
            predictions = self._predict(model_input.data, model_input.rows, model_input.params)
            return render(predictions, model_input.wrapped)
        except ModelhostError as e:
            return e
        except Exception as e:  # e.g. predictions JSON cannot express: fail this request only
            log.exception("Could not answer a request to %s", self._model.uri)
            return ModelFailed(f"Could not answer with the predictions: {type(e).__name__}: {e}")

    def _score_together(self, batch: list[_Job]) -> list[bytes | ModelhostError]:
        inputs = [job.model_input for job in batch]
        total = sum(i.rows or 0 for i in inputs)
        predictions = self._predict(_concat([i.data for i in inputs]), total, inputs[0].params)
        if _length(predictions) != total:
            log.warning(
                "Model %s answered %s rows for %s input rows, so its requests are no longer "
                "batched.",
                self._model.uri,
                _length(predictions),
                total,
            )
            self._row_aligned = False
            raise ModelhostError("not row-aligned")
        answers: list[bytes | ModelhostError] = []
        start = 0
        for model_input in inputs:
            end = start + (model_input.rows or 0)
            answers.append(render(_slice(predictions, start, end), model_input.wrapped))
            start = end
        return answers

    def _predict(self, data: Any, rows: int | None, params: dict[str, Any] | None) -> Any:
        started = time.perf_counter()
        predictions = self._model.predict(data, params)
        seconds = time.perf_counter() - started
        self._typical_call_s = 0.8 * self._typical_call_s + 0.2 * seconds
        self._on_predict(rows or 1, seconds)
        return predictions

    def ended(self) -> tuple[str, BaseException | None] | None:
        """None while its loop runs; once it has ended (or never started), why, in words, and
        the exception that ended it, if one did: what the person on call needs."""
        task = self._task
        if task is None:
            return "it was never started.", None
        if not task.done():
            return None
        if task.cancelled():
            return "it was cancelled.", None
        error = task.exception()
        if error is None:
            return "its loop returned.", None
        return f"{type(error).__name__}: {error}", error


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Table):
        return Table(first.columns, [row for part in parts for row in part.data], first.types)
    if isinstance(first, pd.DataFrame):
        return pd.concat(parts, ignore_index=True)
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    return {key: np.concatenate([part[key] for part in parts]) for key in first}


def _length(predictions: Any) -> int | None:
    if isinstance(predictions, (np.ndarray, pd.DataFrame, pd.Series, list)):
        return len(predictions)
    if isinstance(predictions, dict) and predictions:
        lengths = {
            len(v) if isinstance(v, (np.ndarray, list)) else -1 for v in predictions.values()
        }
        return lengths.pop() if len(lengths) == 1 else None
    return None


def _slice(predictions: Any, start: int, end: int) -> Any:
    if isinstance(predictions, (pd.DataFrame, pd.Series)):
        return predictions.iloc[start:end]
    if isinstance(predictions, dict):
        return {key: value[start:end] for key, value in predictions.items()}
    return predictions[start:end]

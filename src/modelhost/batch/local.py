"""The local engine: this process reads the input, forked workers score and write the parts."""

from __future__ import annotations

import logging
import time
from typing import Any

from modelhost.batch.formats import count_rows, read_chunks
from modelhost.batch.job import (
    BatchFailed,
    BatchJob,
    Summary,
    input_format,
    output_format,
    resolve_inputs,
)
from modelhost.batch.output import OutputFolder, job_record
from modelhost.batch.progress import Progress
from modelhost.batch.scoring import describe
from modelhost.batch.workers import Result, Task, Workers
from modelhost.worker.model import ServedModel

log = logging.getLogger("modelhost.batch")
# Chunks handed out and not yet done, per worker: one being scored, one waiting. More would
# only hold memory; fewer would leave a worker idle while the next chunk is read.
IN_FLIGHT_PER_WORKER = 2


def run_local(job: BatchJob, progress: Progress, local_path: str | None = None) -> Summary:
    """Score the job's input with `job.workers` processes; `local_path`: the model, downloaded."""
    started = time.monotonic()
    files = resolve_inputs(job)
    in_fmt, out_fmt = input_format(job, files), output_format(job)
    output = OutputFolder(job.output)
    output.check(job_record(job, files, in_fmt, out_fmt, model=None))  # before the slow load
    log.info("Loading the model %s", job.model_uri)
    model = ServedModel.load(job.model_uri, local_path)
    output.claim(job_record(job, files, in_fmt, out_fmt, model_identity(model)))
    output.trim_errors()
    done, failed_before = output.done_parts(), output.failed_chunks()
    if done or failed_before:
        log.info("Resuming: %d part(s) of %s are written already", len(done), output.path)
    progress.errors_file = str(output.errors_file)
    # Fork before this process reads any input: pyarrow's thread pools start with the reading.
    workers = Workers(job.workers, Task(model, in_fmt, out_fmt, output.path, list(map(str, files))))
    tally = _Tally(job, output, progress)
    try:
        progress.start(count_rows(files, in_fmt))
        in_flight = 0
        for number, file in enumerate(files):
            for chunk in read_chunks(file, number, in_fmt, job.chunk_rows):
                key = (chunk.file, chunk.index)
                if key in done:
                    tally.skipped(chunk.rows)
                elif key in failed_before:
                    tally.skipped(chunk.rows, failed_before[key])
                else:
                    while in_flight >= IN_FLIGHT_PER_WORKER * job.workers:
                        tally.add(workers.result())
                        in_flight -= 1
                    workers.put(chunk)
                    in_flight += 1
        for _ in range(in_flight):
            tally.add(workers.result())
        workers.close()
    except BaseException:
        workers.stop()
        raise
    summary = Summary(
        rows=tally.rows,
        rows_failed=tally.failed,
        seconds=time.monotonic() - started,
        output=str(output.path),
        errors_file=str(output.errors_file) if output.errors_file.exists() else None,
    )
    output.finish(summary)
    return summary


def model_identity(model: ServedModel) -> dict[str, Any]:
    """What the model URI resolved to: the same URI may name another model later (an alias)."""
    metadata = model.metadata
    return {
        "run_id": metadata.run_id,
        "model_uuid": metadata.model_uuid,
        "model_id": getattr(metadata, "model_id", None),
    }


class _Tally:
    """Rows done and failed; the errors file; the error threshold."""

    def __init__(self, job: BatchJob, output: OutputFolder, progress: Progress) -> None:
        self.job, self.output, self.progress = job, output, progress
        self.rows = self.failed = 0

    def skipped(self, rows: int, failure: dict[str, Any] | None = None) -> None:
        """A chunk a run before this one did, or failed (`failure`: its errors file entry)."""
        self.rows += rows
        if failure is None:
            self.progress.advance(rows)
            return
        self.failed += rows
        self.progress.advance(rows, rows)
        self._check(failure)

    def add(self, result: Result) -> None:
        self.rows += result.rows
        if result.failure is None:
            self.progress.advance(result.rows)
            return
        self.output.add_errors(result.failure)
        self.failed += result.rows
        self.progress.advance(result.rows, result.rows)
        log.warning("%d rows failed: %s", result.rows, describe(result.failure))
        self._check(result.failure)

    def _check(self, failure: dict[str, Any]) -> None:
        """Stop the job once more rows failed than the threshold lets."""
        if not self.job.too_many_failed(self.failed):
            return
        what = describe(failure)
        errors = self.output.errors_file
        if self.job.error_threshold == 0:
            raise BatchFailed(
                f"Bad data in {what}\nThe failed rows are in {errors}. Fix them, or pass "
                "--error-threshold N to let up to N rows fail (-1: any number)."
            )
        raise BatchFailed(
            f"More than {self.job.error_threshold} rows failed ({self.failed} so far); the last "
            f"in {what}\nThe failed rows are in {errors}."
        )

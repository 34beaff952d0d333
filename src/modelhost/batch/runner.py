"""Run a batch job: in the model's own environment, with the engine the job names.

As `modelhost serve` does, the job's process starts itself again (`python -m
modelhost.batch.runner`, the job in MODELHOST_BATCH_JOB) in the environment built for the model
when the current one does not satisfy it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from types import FrameType

from mlflow.exceptions import MlflowException

from modelhost.batch.job import (
    JOB_ENV,
    BatchFailed,
    BatchJob,
    Summary,
    input_format,
    output_format,
    resolve_inputs,
)
from modelhost.batch.output import OutputFolder, job_record
from modelhost.batch.progress import Progress
from modelhost.config import EnvManager
from modelhost.errors import ModelhostError

log = logging.getLogger("modelhost.batch")
LOCAL_PATH_ENV = "MODELHOST_BATCH_LOCAL_PATH"  # the model's artifacts, fetched before a re-exec
STOPPED_EXIT_CODE = 128 + signal.SIGTERM


class Stopped(BaseException):
    """SIGTERM: stop now, leaving no part half-written."""


def run(job: BatchJob, local_path: str | None = None) -> Summary:
    """Run the job to its end; raises BatchFailed with what went wrong, Stopped on SIGTERM."""
    progress = Progress(job.progress_file)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    progress.begin()
    try:
        summary = _run(job, progress, local_path)
    except Stopped:
        progress.finish(False, "Stopped (SIGTERM) before the end; start it again to resume.")
        raise
    except KeyboardInterrupt:
        progress.finish(False, "Interrupted before the end; start it again to resume.")
        raise
    except (ModelhostError, MlflowException) as e:
        progress.finish(False, e.message)
        raise BatchFailed(e.message) from None
    except Exception as e:
        log.exception("The batch job failed")
        message = f"The batch job failed: {type(e).__name__}: {e}"
        progress.finish(False, message)
        raise BatchFailed(message) from None
    progress.finish(True)
    return summary


def _run(job: BatchJob, progress: Progress, local_path: str | None) -> Summary:
    from modelhost.worker.model import download

    if job.engine == "local":
        # The input, the formats and the output are checked before the model is fetched.
        files = resolve_inputs(job)
        record = job_record(job, files, input_format(job, files), output_format(job), None)
        OutputFolder(job.output).check(record)
    if local_path is None:
        log.info("Fetching the artifacts of %s", job.model_uri)
        try:
            local_path = download(job.model_uri)
        except MlflowException as e:
            raise BatchFailed(f"Cannot fetch the model {job.model_uri}: {e.message}") from None
    if job.engine == "spark":
        # The driver stays here, where PySpark is; spark_udf restores the model's environment
        # on the executors itself.
        try:
            from modelhost.batch.spark import run_spark
        except ImportError as e:
            raise BatchFailed(
                f"The spark engine needs PySpark ({e}): pip install 'modelhost[spark]'."
            ) from None
        return run_spark(job, progress, local_path)
    if job.env_manager != EnvManager.LOCAL:
        _enter_model_environment(job, local_path)  # returns only if this environment is the one
    from modelhost.batch.local import run_local

    try:
        return run_local(job, progress, local_path)
    except BaseException:
        OutputFolder(job.output).remove_leftovers()
        raise


def _enter_model_environment(job: BatchJob, local_path: str) -> None:
    """Run this job again in the model's own environment, unless it is the current one."""
    from modelhost.control.environments import enter

    # The same job, `local` so the new process stays put; its progress file goes along.
    env = {
        **os.environ,
        JOB_ENV: dataclasses.replace(job, env_manager=EnvManager.LOCAL).to_json(),
        LOCAL_PATH_ENV: local_path,
    }
    enter(local_path, job.env_manager, "modelhost.batch.runner", env, "the job")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped()


def main() -> None:
    """`python -m modelhost.batch.runner`: the job in MODELHOST_BATCH_JOB, as `batch run` would."""
    from modelhost.logs import configure_logging

    configure_logging()
    try:
        job = BatchJob.from_json(os.environ[JOB_ENV])
    except KeyError:
        sys.exit(f"{JOB_ENV} is not set: start a job with `modelhost batch run`.")
    try:
        summary = run(job, os.environ.get(LOCAL_PATH_ENV))
    except BatchFailed as e:
        sys.stderr.write(f"Error: {e.message}\n")
        sys.exit(1)
    except Stopped:
        sys.exit(STOPPED_EXIT_CODE)
    print(report(summary))


def report(summary: Summary) -> str:
    """The line a job ends with."""
    failed = ""
    if summary.rows_failed:
        failed = f" ({summary.rows_failed:,} failed, see {summary.errors_file})"
    return f"Scored {summary.rows:,} rows{failed} in {summary.seconds:.1f} s into {summary.output}"


if __name__ == "__main__":
    main()

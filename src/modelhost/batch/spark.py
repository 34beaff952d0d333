"""`modelhost batch --engine spark`: a job scored by `mlflow.pyfunc.spark_udf` on a Spark session.

Spark reads the input files and writes the output's parts; the model scores in Spark's Python
workers, in the model's own environment when the current one does not satisfy it (spark_udf
builds it with uv where each executor runs). Input order is kept by reading each file on its own
and chaining the reads: a union keeps its inputs' partitions in order, where one read of all the
files would pack them by size. Spark names part files in partition order, so the output's parts,
read in name order, hold the rows in input order.

`--env-manager`: `auto` scores in this Python when it satisfies the model's requirements (as
`serve` decides), else spark_udf builds the model's environment with uv (no conda, no pyenv);
`local` always scores in this Python, `uv` always builds. Local mode (the default, `local[N]`
with N = workers) keeps everything on this machine and on loopback. With `--spark-master`, the
input and output folders must be at the same path on the driver and every executor (a shared
filesystem), and executors need `uv` on their PATH for a model that needs its own environment.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modelhost.batch.job import (
    BatchFailed,
    BatchJob,
    Summary,
    input_format,
    output_format,
    resolve_inputs,
)
from modelhost.batch.output import OutputFolder, write_atomically
from modelhost.config import EnvManager

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["BatchFailed", "BatchJob", "Summary", "run_spark", "spark_session", "udf_env_manager"]

# spark_udf's environment managers: the current Python, or one it builds for the model. Of the
# builders MLflow offers, "uv" needs neither conda nor pyenv ("virtualenv" needs pyenv).
UDF_LOCAL = "local"
UDF_BUILT = "uv"
# pyspark warns on every import in each Python worker that it is not yet tested with pandas 3;
# what modelhost uses of it (Arrow batches to and from pandas) works, and the warning is noise.
_PANDAS_NOTE = "PySpark does not yet fully support pandas"
_PANDAS_WARNING = f"ignore:{_PANDAS_NOTE}:FutureWarning"  # as PYTHONWARNINGS says it
log = logging.getLogger("modelhost.batch")
_WRITERS = {"parquet": "parquet", "csv": "csv", "jsonl": "json"}


class Progress(Protocol):
    """What the spark engine reports to (batch/progress.py renders it)."""

    def start(self, total_rows: int | None) -> None: ...

    def advance(self, rows: int, failed: int = 0) -> None: ...


@dataclass(frozen=True)
class _Plan:
    """What the job reads and scores with, settled before Spark does any work."""

    files: list[Path]
    input_format: str
    output_format: str
    model_dir: str
    udf_env_manager: str
    total_rows: int | None


def run_spark(
    job: BatchJob,
    progress: Progress,
    local_path: str | None = None,
    spark: SparkSession | None = None,
) -> Summary:
    """Score the job on `spark`, or on a session of its own started for it and stopped after.

    `local_path` is the model's folder when it was fetched already.
    """
    started = time.monotonic()
    if job.error_threshold != 0:
        raise BatchFailed(
            "--error-threshold works with the local engine only: with --engine spark the first "
            "row that fails stops the job. Leave it at 0, or use --engine local."
        )
    files = resolve_inputs(job)
    formats = input_format(job, files), output_format(job)
    output = Path(job.output).expanduser().resolve()
    done = _claim(output, job, files, *formats)
    if done is not None:  # the same job finished here before: nothing left to do
        progress.start(done.rows)
        progress.advance(done.rows, done.rows_failed)
        return done
    with _quiet():
        if spark is not None:
            plan = _plan(job, files, *formats, local_path)
            return _score(spark, job, plan, output, progress, started)
        # The JVM takes seconds to start: start it while the model is fetched and its needs read.
        with ThreadPoolExecutor(1, thread_name_prefix="spark-start") as pool:
            starting = pool.submit(_start_session, master_url(job))
            try:
                plan = _plan(job, files, *formats, local_path)
            except BaseException:
                _stop_when_started(starting)
                raise
            session = starting.result()
        try:
            return _score(session, job, plan, output, progress, started)
        finally:
            session.stop()


@contextmanager
def spark_session(master: str) -> Iterator[SparkSession]:
    """A Spark session set up as the spark engine runs jobs, stopped on leaving."""
    with _quiet():
        session = _start_session(master)
    try:
        yield session
    finally:
        session.stop()


def master_url(job: BatchJob) -> str:
    """Where the job runs: the given master, else local mode with one core per worker."""
    return job.spark_master or f"local[{job.workers}]"


def udf_env_manager(manager: EnvManager | str, model_dir: str | Path) -> str:
    """spark_udf's `env_manager` for modelhost's: "local" where the current Python serves."""
    from modelhost.control.requirements import read_requirements, unmet_here

    manager = EnvManager(manager)
    if manager is EnvManager.LOCAL:
        return UDF_LOCAL
    if manager is EnvManager.AUTO and unmet_here(read_requirements(model_dir)) is None:
        return UDF_LOCAL
    return UDF_BUILT


# --- the session


def _start_session(master: str) -> SparkSession:
    from pyspark.sql import SparkSession

    log_settings = Path(__file__).with_name("spark-log4j2.properties")
    builder = (
        SparkSession.builder.master(master)
        .appName("modelhost batch")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log_settings}")
        .config("spark.ui.enabled", "false")  # no port for a web page nobody opens
        .config("spark.ui.showConsoleProgress", "false")  # modelhost shows its own progress
        .config("spark.executorEnv.PYTHONWARNINGS", _PANDAS_WARNING)
    )
    if master.startswith("local"):
        # Everything stays on this machine: listen on loopback only, and run the Python workers
        # with this very interpreter, whose environment was checked against the model's needs.
        os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
        os.environ["PYSPARK_PYTHON"] = sys.executable
        _add_to(os.environ, "PYTHONWARNINGS", _PANDAS_WARNING, ",")  # local workers inherit it
        # spark_udf builds a model's environment by running `uv`: the one modelhost installs.
        _add_to(os.environ, "PATH", _uv_folder(), os.pathsep)
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    return builder.getOrCreate()


def _add_to(environ: MutableMapping[str, str], name: str, item: str, separator: str) -> None:
    """Put `item` first in the list variable `name`, once."""
    items = [i for i in environ.get(name, "").split(separator) if i and i != item]
    environ[name] = separator.join([item, *items])


def _stop_when_started(starting: Future) -> None:
    with contextlib.suppress(Exception):  # a start that failed too leaves nothing to stop
        starting.result().stop()


def _uv_folder() -> str:
    from uv import find_uv_bin

    return str(Path(find_uv_bin()).parent)


class _NoEnvAdvice(logging.Filter):
    """Drops spark_udf's advice to restore the model's environment: modelhost checked it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'with `env_manager="local"` does not recreate' not in record.getMessage()


@contextmanager
def _quiet() -> Iterator[None]:
    """Without the warnings pyspark and MLflow give on every job that are no user's to act on."""
    advice = _NoEnvAdvice()
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(advice)
    backends = logging.getLogger("mlflow.models.flavor_backend_registry")  # "Selected backend"
    level = backends.level
    backends.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _PANDAS_NOTE, FutureWarning)
            yield
    finally:
        logger.removeFilter(advice)
        backends.setLevel(level)


# --- before scoring


def _plan(
    job: BatchJob, files: list[Path], in_format: str, out_format: str, local_path: str | None
) -> _Plan:
    model_dir = local_path or _local_model(job.model_uri)
    return _Plan(
        files=files,
        input_format=in_format,
        output_format=out_format,
        model_dir=model_dir,
        udf_env_manager=udf_env_manager(job.env_manager, model_dir),
        total_rows=_count_rows(files, in_format),
    )


def _local_model(model_uri: str) -> str:
    """The model's folder: as given when local, else fetched once, for every executor."""
    if Path(model_uri).is_dir():
        return str(Path(model_uri).resolve())
    from mlflow.exceptions import MlflowException

    from modelhost.worker.model import download

    try:
        return download(model_uri)
    except MlflowException as error:
        raise BatchFailed(f"Could not fetch the model {model_uri}: {error.message}") from None


def _count_rows(files: list[Path], in_format: str) -> int | None:
    """The rows to score when the files say so without being read (Parquet's footers)."""
    if in_format != "parquet":
        return None
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(file).num_rows for file in files)


# --- scoring


def _score(
    spark: SparkSession,
    job: BatchJob,
    plan: _Plan,
    output: Path,
    progress: Progress,
    started: float,
) -> Summary:
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    progress.start(plan.total_rows)
    # spark_udf hands the model Arrow batches of this many rows: the job's chunk.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(job.chunk_rows))
    staging = output / f".spark-{uuid.uuid4().hex[:12]}"
    try:
        frame = _read(spark, plan.files, plan.input_format)
        scored = _with_predictions(spark, frame, plan)
        observed = Observation("modelhost")
        scored = scored.observe(observed, F.count(F.lit(1)).alias("rows"))
        # The writing job's own group, so its tasks are told apart from any other's.
        group = f"modelhost-batch-{staging.name}"
        spark.sparkContext.setJobGroup(group, f"modelhost batch {job.model_uri}")
        try:
            with _progress_of_tasks(spark, group, plan.total_rows, progress) as reported:
                _write(scored, plan.output_format, staging)
        finally:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        rows = int(observed.get["rows"])
        progress.advance(max(rows - reported(), 0))
        _publish(staging, output)
    except Exception as error:
        message = _failure(error)
        if message is None:
            raise
        raise BatchFailed(message) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = Summary(rows, 0, round(time.monotonic() - started, 3), str(output), None)
    OutputFolder(output).finish(summary)
    return summary


def _read(spark: SparkSession, files: list[Path], in_format: str) -> DataFrame:
    """All the files as one frame, file after file, each in its own row order."""
    paths = [str(file) for file in files]
    schema = _reader(spark, in_format)(*paths).schema  # one schema for all, as one file has
    frame = functools.reduce(
        lambda before, path: before.union(_reader(spark, in_format, schema)(path)),
        paths[1:],
        _reader(spark, in_format, schema)(paths[0]),
    )
    if in_format == "jsonl":
        # Spark sorts a JSON object's keys; the columns keep the order the records have.
        frame = frame.select(*[_column(name) for name in _json_key_order(files[0], frame.columns)])
    return frame


def _reader(spark: SparkSession, in_format: str, schema: Any = None) -> Any:
    """Spark's reader of the format, taking paths: strict, and with `schema` when given."""
    reader = spark.read.option("mode", "FAILFAST")  # a malformed line fails, never turns null
    if in_format == "csv":
        reader = reader.options(header="true", inferSchema="true", preferDate="false")
    if schema is not None:
        reader = reader.schema(schema)
    return {"parquet": reader.parquet, "csv": reader.csv, "jsonl": reader.json}[in_format]


def _json_key_order(first: Path, columns: list[str]) -> list[str]:
    """`columns` in the order of the first record's keys, any others after them."""
    with first.open() as lines:
        record = next((json.loads(line) for line in lines if line.strip()), {})
    keys = [key for key in record if key in columns]
    return keys + [name for name in columns if name not in keys]


def _with_predictions(spark: SparkSession, frame: DataFrame, plan: _Plan) -> DataFrame:
    """The input's columns, then `prediction` or, for a frame output, one column per field."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    predict = mlflow.pyfunc.spark_udf(
        spark,
        plan.model_dir,
        result_type=_result_type(spark, frame, plan),
        env_manager=plan.udf_env_manager,
    )
    inputs = [_column(name) for name in frame.columns]
    # A struct of named columns: the model gets a DataFrame with the input's column names.
    predicted = frame.select(*inputs, predict(F.struct(*inputs)).alias("__prediction"))
    returned = predict.returnType  # type: ignore[attr-defined]
    if isinstance(returned, StructType):
        fields = [F.col(f"__prediction.{_quoted(f.name)}").alias(f.name) for f in returned.fields]
        return predicted.select(*inputs, *fields)
    return predicted.withColumnRenamed("__prediction", "prediction")


def _result_type(spark: SparkSession, frame: DataFrame, plan: _Plan) -> Any:
    """What the model returns, as a Spark type: from its output schema, else from a sample.

    None lets spark_udf read the output schema. A model without one is run on the first rows
    here, when it runs in this Python, to see what it returns; in an environment of its own it
    is taken to return numbers, as spark_udf assumes.
    """
    from mlflow.models import Model

    if Model.load(plan.model_dir).get_output_schema() is not None:
        return None
    if plan.udf_env_manager != UDF_LOCAL:
        return "double"
    import mlflow.pyfunc
    import pandas as pd

    # Rows, not toPandas(): its Arrow path trips over pandas 3 in this pyspark.
    rows = frame.limit(10).collect()
    sample = pd.DataFrame([row.asDict() for row in rows], columns=frame.columns)
    return _spark_type_of(mlflow.pyfunc.load_model(plan.model_dir).predict(sample))


def _spark_type_of(predictions: Any) -> Any:
    """The Spark type of a model's predictions: a struct for a frame, else its values' type."""
    import numpy as np
    import pandas as pd
    from pyspark.sql.types import ArrayType, StructField, StructType

    if isinstance(predictions, pd.DataFrame):
        return StructType(
            [StructField(str(name), _scalar_type(predictions[name])) for name in predictions]
        )
    values = np.asarray(predictions)
    if values.ndim > 1:
        return ArrayType(_scalar_type(pd.Series(values.reshape(-1))))
    return _scalar_type(pd.Series(values))


def _scalar_type(values: Any) -> Any:
    from pyspark.sql.types import BooleanType, DoubleType, FloatType, LongType, StringType

    kind = values.dtype.kind
    if kind == "b":
        return BooleanType()
    if kind in "iu":
        return LongType()
    if kind == "f":
        return FloatType() if values.dtype.itemsize == 4 else DoubleType()
    if kind in "OUST" and all(isinstance(v, str) for v in values.dropna()):
        return StringType()
    return DoubleType()


def _write(frame: DataFrame, out_format: str, folder: Path) -> None:
    writer = frame.write.mode("errorifexists")
    if out_format == "csv":
        writer = writer.option("header", "true")
    if out_format == "jsonl":
        writer = writer.option("ignoreNullFields", "false")  # every record has every column
    getattr(writer, _WRITERS[out_format])(str(folder))


@contextmanager
def _progress_of_tasks(
    spark: SparkSession, group: str, total_rows: int | None, progress: Progress
) -> Iterator[Any]:
    """Advance `progress` once a second by the rows the finished tasks stand for.

    Spark counts tasks, not rows: with the total known (Parquet), rows done are taken as the
    total's share of tasks done. Yields a function telling how many rows were reported.
    """
    import threading

    reported = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal reported
        tracker = spark.sparkContext.statusTracker()
        while not stop.wait(1.0):
            done = total = 0
            for job_id in tracker.getJobIdsForGroup(group):
                job = tracker.getJobInfo(job_id)
                for stage_id in job.stageIds if job else []:
                    stage = tracker.getStageInfo(stage_id)
                    if stage is not None:
                        done, total = done + stage.numCompletedTasks, total + stage.numTasks
            if total_rows and total:
                rows = total_rows * done // total
                if rows > reported:
                    progress.advance(rows - reported)
                    reported = rows

    watcher = threading.Thread(target=watch, name="spark-progress", daemon=True)
    watcher.start()
    try:
        yield lambda: reported
    finally:
        stop.set()
        watcher.join()


def _column(name: str) -> Any:
    from pyspark.sql import functions as F

    return F.col(_quoted(name))


def _quoted(name: str) -> str:
    """A column name Spark takes as it is, dots and all."""
    return "`" + name.replace("`", "``") + "`"


# --- the output folder


def _claim(
    output: Path, job: BatchJob, files: list[Path], in_format: str, out_format: str
) -> Summary | None:
    """Make `output` this job's; the summary if the same job already finished there."""
    record = {
        "model_uri": job.model_uri,
        "input_files": [str(file) for file in files],
        "input_format": in_format,
        "output_format": out_format,
        "engine": "spark",
    }
    described = output / "_job.json"
    if described.is_file():
        before = json.loads(described.read_text())
        if before != record:
            raise BatchFailed(
                f"The output folder {output} holds the output of another job (of "
                f"{before.get('model_uri')} on other input or formats): choose another output "
                "folder, or remove this one."
            )
        done = OutputFolder(output).finished()
        if done is not None:
            return done
        _clear_parts(output)  # an interrupted run's parts: Spark scores the input again whole
        return None
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise BatchFailed(
            f"The output {output} exists and is not the output of a batch job: choose a new or "
            "empty folder."
        )
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(described, json.dumps(record, indent=2))
    return None


def _clear_parts(output: Path) -> None:
    for path in output.iterdir():
        if path.name.startswith("part-"):
            path.unlink()
        elif path.name.startswith(".spark-"):
            shutil.rmtree(path, ignore_errors=True)


def _publish(staging: Path, output: Path) -> None:
    """Move Spark's part files into the output; each appears whole, by a rename."""
    for part in sorted(staging.glob("part-*")):
        os.replace(part, output / part.name)


# --- errors

# Where a Python exception's line starts: `package.module.SomeError: what went wrong`.
_RAISED = re.compile(r"^(?:[\w.]+\.)?\w+(?:Error|Exception): ", re.M)
_ERROR_CLASS = re.compile(r"^\[[A-Z_.]+\]\s*")
_MOST = 600  # characters of a cause worth showing; a model's message may quote all its input


def _failure(error: Exception) -> str | None:
    """What went wrong in Spark's or the model's words, without the stacks; None if not Spark's."""
    from mlflow.exceptions import MlflowException
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    if isinstance(error, MlflowException):  # raised here, on the first rows or the model's files
        said = error.message.rsplit(". Error: ", 1)[-1]
        return f"The model could not score the input: {_tidy(said)}"
    if not isinstance(error, PySparkException | Py4JJavaError):
        return None
    log.debug("The Spark job failed", exc_info=error)
    text = str(error)
    if "Traceback (most recent call last)" in text:  # raised in a Python worker: the model's
        return f"The model could not score the input: {_python_says(text)}"
    if isinstance(error, Py4JJavaError):
        return f"Spark could not run the job: {_java_says(error.java_exception)}"
    return f"Spark could not run the job: {_tidy(text)}"


def _python_says(text: str) -> str:
    """The last exception of a Python traceback, up to where Spark's text starts again."""
    raised = list(_RAISED.finditer(text))[-1]
    said = text[raised.start() :].split("\n\tat ")[0].split(" SQLSTATE:")[0]
    kind, _, message = said.partition(": ")
    # MLflow's schema errors quote the whole input before the part that says what is wrong.
    message = message.rsplit(". Error: ", 1)[-1]
    return f"{kind.rsplit('.', 1)[-1]}: {_tidy(message)}"


def _java_says(exception: Any) -> str:
    """A Java exception's message, and its first cause's when it has one."""
    said = _tidy(str(exception.getMessage()))
    cause = exception.getCause()
    while cause is not None and cause.getCause() is not None:
        cause = cause.getCause()
    if cause is not None and cause.getMessage():
        kind = str(cause.getClass().getSimpleName())
        said += f" Caused by {kind}: {_tidy(str(cause.getMessage()))}"
    return said


def _tidy(message: str) -> str:
    """One line: no error class, no SQL state, no Java stack."""
    message = message.split("\n\tat ")[0].split(" SQLSTATE:")[0]
    message = " ".join(_ERROR_CLASS.sub("", message.strip()).split())
    return message if len(message) <= _MOST else message[: _MOST - 3] + "..."

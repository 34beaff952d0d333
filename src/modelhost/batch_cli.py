"""`modelhost batch ...`: score files with a model here, or as jobs on a running modelhost."""

from __future__ import annotations

import sys

import click

from modelhost.batch.jobs_cli import cancel, list_jobs, status, submit
from modelhost.config import EnvManager


class _RunByDefault(click.Group):
    """`modelhost batch MODEL_URI ...` is `modelhost batch run MODEL_URI ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_RunByDefault)
def batch() -> None:
    """Score files with a model: here (`modelhost batch MODEL_URI --input ... --output ...`),
    or as jobs on a running modelhost (`submit`, `list`, `status`, `cancel`)."""


FORMATS = click.Choice(["parquet", "csv", "jsonl"])


@batch.command(
    short_help="Score files with a model on this machine (the default command).",
    epilog="""\b
Examples:
  modelhost batch models:/churn@champion --input 'data/*.parquet' --output scored/
  modelhost batch runs:/<run-id>/model --input in.csv --output out.csv --workers 4
\b
The output is a folder of parts (part-FFFFF-CCCCCC.<format>, in input order) that pandas,
pyarrow and Spark read as one table. Started again with the same output, a job that was
stopped skips the parts it wrote and ends with the same result.""",
)
@click.argument("model_uri")
@click.option(
    "-i", "--input", "input_", required=True, envvar="MODELHOST_BATCH_INPUT",
    help="A file, a folder of files, or a glob (quote it): parquet, csv or jsonl.",
)  # fmt: skip
@click.option(
    "-o", "--output", required=True, envvar="MODELHOST_BATCH_OUTPUT",
    help="The folder to write the input's columns and the predictions to (created).",
)  # fmt: skip
@click.option(
    "--engine", default="local", show_default=True, envvar="MODELHOST_BATCH_ENGINE",
    type=click.Choice(["local", "spark"]),
    help="local: processes on this machine; spark: mlflow.pyfunc.spark_udf on a Spark session.",
)  # fmt: skip
@click.option(
    "-w", "--workers", default=None, type=click.IntRange(min=1), envvar="MODELHOST_BATCH_WORKERS",
    show_default="one per core", help="Processes scoring at once (local engine).",
)  # fmt: skip
@click.option(
    "--chunk-rows", default=50_000, show_default=True, type=click.IntRange(min=1),
    envvar="MODELHOST_BATCH_CHUNK_ROWS",
    help="Rows per predict call and per output part; memory grows with it, not with the input.",
)  # fmt: skip
@click.option(
    "--input-format", default=None, type=FORMATS, envvar="MODELHOST_BATCH_INPUT_FORMAT",
    show_default="from the files' names",
)  # fmt: skip
@click.option(
    "--output-format", default=None, type=FORMATS, envvar="MODELHOST_BATCH_OUTPUT_FORMAT",
    show_default="from the output's name (out.csv/), else parquet",
)  # fmt: skip
@click.option(
    "--env-manager", default=EnvManager.AUTO.value, show_default=True,
    envvar="MODELHOST_BATCH_ENV_MANAGER", type=click.Choice([m.value for m in EnvManager]),
    help="Python environment of the model, as for `modelhost serve`: auto uses the current one "
    "when it satisfies the model's requirements and builds one with uv otherwise; local always "
    "uses the current one; uv always builds (cached under the modelhost home). With --engine "
    "spark the driver stays here and spark_udf builds the model's environment on the executors "
    "with uv when this one does not satisfy it.",
)  # fmt: skip
@click.option(
    "--error-threshold", default=0, show_default=True, type=click.IntRange(min=-1),
    envvar="MODELHOST_BATCH_ERROR_THRESHOLD",
    help="Rows that may fail before the job stops (-1: never stop). Failed rows go to "
    "OUTPUT/_errors.jsonl with the cause.",
)  # fmt: skip
@click.option(
    "--spark-master", default=None, envvar="MODELHOST_BATCH_SPARK_MASTER",
    show_default="local[*]", help="The Spark cluster to run on (spark engine).",
)  # fmt: skip
@click.option("--progress-file", default=None, hidden=True, envvar="MODELHOST_BATCH_PROGRESS_FILE")
def run(model_uri: str, input_: str, **options: object) -> None:
    """Score the input files with MODEL_URI and write them with their predictions.

    MODEL_URI is anything `modelhost serve` takes: a path, runs:/<id>/model, models:/name/3,
    models:/name@alias. Rows are parsed and checked against the model's signature as the model
    server does, and the output holds the input columns then `prediction` (or one column per
    field of a model that returns a frame), in input order.
    """
    from modelhost.batch.job import BatchFailed, BatchJob
    from modelhost.batch.runner import STOPPED_EXIT_CODE, Stopped, report
    from modelhost.batch.runner import run as run_job
    from modelhost.errors import ModelhostError

    if options["workers"] is None:
        del options["workers"]
    try:
        job = BatchJob(model_uri=model_uri, input=input_, **options)  # type: ignore[arg-type]
        summary = run_job(job)
    except (BatchFailed, ModelhostError) as e:
        raise click.ClickException(e.message) from None
    except Stopped:
        sys.exit(STOPPED_EXIT_CODE)
    click.echo(report(summary))


for command in (submit, list_jobs, status, cancel):
    batch.add_command(command)

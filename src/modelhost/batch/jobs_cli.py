"""`modelhost batch submit|list|status|cancel`: batch jobs on a running modelhost."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

import click

from modelhost.api_client import ApiClient, show
from modelhost.config import EnvManager

PREFIX = "/api/2.0/modelhost/batch"
FORMATS = click.Choice(["parquet", "csv", "jsonl"])
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")
POLL_S = 1.0

F = TypeVar("F", bound=Callable[..., object])


def _connection(command: F) -> F:
    """--url and --token, as `modelhost serving` takes them."""
    command = click.option(
        "--token", envvar="MODELHOST_TOKEN", default=None, help="The credential to send."
    )(command)
    return click.option(
        "--url",
        envvar="MODELHOST_URL",
        default="http://127.0.0.1:8080",
        show_default=True,
        help="The modelhost gateway.",
    )(command)


@click.command()
@click.argument("model")
@click.option("--input", "input_path", required=True,
              help="A file, folder or glob under the platform's batch folder (`modelhost up "
              "--batch-root`); relative paths are taken under it.")  # fmt: skip
@click.option("--output", "output_path", required=True,
              help="The folder to write to, under the batch folder; submitting again with the "
              "same output resumes from the parts already written.")  # fmt: skip
@click.option("--version", default=None, help="With a registered model's NAME: the version.")
@click.option("--alias", default=None, help="With NAME: the alias (resolved now).")
@click.option("--stage", default=None, help="With NAME: the stage, or latest (resolved now).")
@click.option("--engine", type=click.Choice(["local", "spark"]), default=None,
              help="How to score.  [default: local]")  # fmt: skip
@click.option("--workers", type=int, default=None,
              help="Local engine: processes scoring at once.  [default: one per core]")  # fmt: skip
@click.option("--chunk-rows", type=int, default=None,
              help="Rows scored (and held in memory) at once.  [default: 50000]")  # fmt: skip
@click.option("--input-format", type=FORMATS, default=None,
              help="[default: from the input's file names]")  # fmt: skip
@click.option("--output-format", type=FORMATS, default=None,
              help="[default: from the output's name, else parquet]")  # fmt: skip
@click.option("--error-threshold", type=int, default=None,
              help="Rows that may fail before the job stops (-1: never).  "
              "[default: 0]")  # fmt: skip
@click.option("--env-manager", type=click.Choice([m.value for m in EnvManager]), default=None,
              help="The model's Python environment, as for `modelhost serve`.  "
              "[default: auto]")  # fmt: skip
@click.option("--wait", is_flag=True, default=False,
              help="Wait until the job ends, showing its progress; exit 1 unless it "
              "succeeded.")  # fmt: skip
@_connection
def submit(
    model: str,
    input_path: str,
    output_path: str,
    version: str | None,
    alias: str | None,
    stage: str | None,
    wait: bool,
    url: str,
    token: str | None,
    **options: object,
) -> None:
    """Score files with MODEL as a job on a running modelhost.

    MODEL is a registered model's NAME (with --version, --alias or --stage), or a URI
    models:/NAME/VERSION, models:/NAME/STAGE or models:/NAME@ALIAS.
    """
    fields: dict[str, object] = {"input": input_path, "output": output_path}
    if model.startswith("models:/"):
        fields["model_uri"] = model
    else:
        fields["registered_model_name"] = model
    for key, value in [("version", version), ("alias", alias), ("stage", stage), *options.items()]:
        if value is not None:
            fields[key] = value
    client = ApiClient(url, token, PREFIX)
    job = client.call("POST", "jobs", **fields)["job"]
    if not wait:
        show(job)
        return
    click.echo(f"Batch job {job['job_id']} submitted; waiting for it to end.", err=True)
    _wait(client, job)


def _wait(client: ApiClient, job: dict) -> None:
    shown = ""
    while job["state"] not in FINISHED:
        time.sleep(POLL_S)
        job = client.call("GET", f"jobs/{job['job_id']}")["job"]
        line = _progress(job)
        if line != shown:
            click.echo(line, err=True)
            shown = line
    show(job)
    if job["state"] != "SUCCEEDED":
        raise click.ClickException(
            f"Batch job {job['job_id']} {job['state']}: {job.get('message') or 'no message'}"
        )


def _progress(job: dict) -> str:
    total = job.get("rows_total")
    rows = f"{job['rows_done']}/{total}" if total is not None else str(job["rows_done"])
    failed = f", {job['rows_failed']} failed" if job.get("rows_failed") else ""
    return f"{job['state']}: {rows} rows, {job.get('rows_per_s', 0):g} rows/s{failed}"


@click.command("list")
@click.option("--model", default=None, help="Only the jobs on this registered model.")
@_connection
def list_jobs(model: str | None, url: str, token: str | None) -> None:
    """List the batch jobs (those on models you may read), newest first."""
    client = ApiClient(url, token, PREFIX)
    show(client.call("GET", "jobs", registered_model_name=model)["jobs"])


@click.command()
@click.argument("job_id")
@_connection
def status(job_id: str, url: str, token: str | None) -> None:
    """Show one batch job: its state, rows done, rows/s and errors."""
    show(ApiClient(url, token, PREFIX).call("GET", f"jobs/{quote(job_id, safe='')}")["job"])


@click.command()
@click.argument("job_id")
@_connection
def cancel(job_id: str, url: str, token: str | None) -> None:
    """Cancel a batch job (yours, or any on a model you may EDIT)."""
    show(ApiClient(url, token, PREFIX).call("POST", f"jobs/{quote(job_id, safe='')}/cancel")["job"])

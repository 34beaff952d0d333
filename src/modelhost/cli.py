"""The `modelhost` command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from modelhost import __version__
from modelhost.auth_cli import permissions, tokens, users
from modelhost.batch_cli import batch
from modelhost.config import (
    EnvManager,
    ServeSettings,
    UpSettings,
    default_home,
)
from modelhost.errors import ModelhostError
from modelhost.logs import configure_logging
from modelhost.serving_cli import serving

F = TypeVar("F", bound=Callable[..., object])


def _max_batch_size() -> Callable[[F], F]:
    return click.option(
        "--max-batch-size",
        default=ServeSettings.max_batch_size,
        show_default=True,
        envvar="MODELHOST_MAX_BATCH_SIZE",
        type=click.IntRange(min=1),
        help="Most input rows one predict call combines; 1 turns batching off.",
    )


def _max_batch_delay_ms(default: float = ServeSettings.max_batch_delay_ms) -> Callable[[F], F]:
    return click.option(
        "--max-batch-delay-ms",
        default=default,
        show_default=True,
        envvar="MODELHOST_MAX_BATCH_DELAY_MS",
        type=click.FloatRange(min=0),
        help="Longest a batch waits for requests that have already arrived.",
    )


def _max_body_mb() -> Callable[[F], F]:
    return click.option(
        "--max-body-mb",
        default=ServeSettings.max_body_mb,
        show_default=True,
        envvar="MODELHOST_MAX_BODY_MB",
        type=click.FloatRange(min=0, min_open=True),
        help="Largest scoring request body accepted; larger ones get 413.",
    )


def _timeout() -> Callable[[F], F]:
    return click.option(
        "--timeout",
        "timeout_s",
        default=ServeSettings.timeout_s,
        show_default=True,
        envvar="MODELHOST_TIMEOUT",
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds a scoring request may wait for its predictions before it gets 504.",
    )


@click.group()
@click.version_option(__version__, prog_name="modelhost")
def main() -> None:
    """Serve MLflow models as REST endpoints."""
    configure_logging()


@main.command()
@click.option(
    "-m",
    "--model-uri",
    required=True,
    envvar="MODELHOST_MODEL_URI",
    help="Any URI the MLflow client resolves: a path, runs:/, models:/name/1, models:/name@alias.",
)
@click.option(
    "-h", "--host", default=ServeSettings.host, envvar="MODELHOST_HOST", show_default=True
)
@click.option(
    "-p",
    "--port",
    default=ServeSettings.port,
    envvar="MODELHOST_PORT",
    show_default=True,
    type=click.IntRange(0, 65535),
)
@click.option(
    "-w",
    "--workers",
    default=ServeSettings.workers,
    envvar="MODELHOST_WORKERS",
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes.",
)
@_max_batch_size()
@_max_batch_delay_ms()
@_max_body_mb()
@_timeout()
@click.option(
    "--env-manager",
    default=ServeSettings.env_manager,
    show_default=True,
    envvar="MODELHOST_ENV_MANAGER",
    type=click.Choice([m.value for m in EnvManager]),
    help="Python environment of the model: auto uses the current one when it satisfies the "
    "model's requirements and builds one with uv otherwise; local always uses the current one; "
    "uv always builds (cached under the modelhost home).",
)
def serve(**options: object) -> None:
    """Serve one model, as `mlflow models serve` does, only faster."""
    from mlflow.exceptions import MlflowException

    from modelhost.worker.server import serve as run

    try:
        run(ServeSettings(**options))  # type: ignore[arg-type]
    except (MlflowException, ModelhostError) as e:
        raise click.ClickException(f"Cannot serve {options['model_uri']}: {e.message}") from None


@main.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_home,
    envvar="MODELHOST_HOME",
    show_default="~/.modelhost",
    help="Where the embedded registry, its artifacts and modelhost's state live.",
)
@click.option("--host", default=UpSettings.host, envvar="MODELHOST_HOST", show_default=True)
@click.option(
    "--port",
    default=UpSettings.port,
    envvar="MODELHOST_PORT",
    show_default=True,
    type=click.IntRange(0, 65535),
)
@click.option(
    "--registry-uri",
    default=None,
    envvar="MODELHOST_REGISTRY_URI",
    help="An existing MLflow registry (http(s):// server or database URI); "
    "default: an embedded one under the home.",
)
@click.option(
    "--state-uri",
    default=None,
    envvar="MODELHOST_STATE_URI",
    show_default="SQLite under the home",
    help="The database of modelhost's state (served models, settings, events, users, tokens, "
    "grants, batch jobs), e.g. postgresql://USER:PASSWORD@HOST/DB: nodes started with the same "
    "one (and the same registry) serve the same models. Set the variable rather than the flag "
    "when it holds a password: others can see flags in the process list.",
)
@click.option(
    "--artifacts-destination",
    default=None,
    envvar="MODELHOST_ARTIFACTS_DESTINATION",
    show_default="<home>/registry/artifacts",
    help="Where the registry modelhost runs keeps model files: a folder every node shares, "
    "s3://BUCKET/PATH, or anything `mlflow server --artifacts-destination` takes.",
)
@click.option(
    "--node-name",
    default=None,
    envvar="MODELHOST_NODE_NAME",
    show_default="<hostname>:<port>",
    help="This node's name among the nodes of one state database, in events and batch jobs.",
)
@click.option(
    "--engine",
    default=UpSettings.engine,
    show_default=True,
    envvar="MODELHOST_ENGINE",
    type=click.Choice(["local", "ray"]),
    help="What runs model servers: local processes, or processes placed on a Ray cluster "
    "(pip install 'modelhost[ray]') by the CPUs and memory each model asks for, with replicas.",
)
@click.option(
    "--ray-address",
    default=None,
    envvar="MODELHOST_RAY_ADDRESS",
    help="With --engine ray: the cluster's head, HOST:PORT (what `ray start --head` printed).",
)
@click.option(
    "--demo",
    is_flag=True,
    default=False,
    envvar="MODELHOST_DEMO",
    help="Register an example model.",
)
@_max_body_mb()
@_timeout()
@click.option(
    "--env-manager",
    default=UpSettings.env_manager,
    show_default=True,
    envvar="MODELHOST_ENV_MANAGER",
    type=click.Choice([m.value for m in EnvManager]),
    help="Python environment of each model version, for models whose serving does not set "
    "its own (`modelhost serving settings NAME --env-manager`): auto, local or uv, as for "
    "`modelhost serve`.",
)
@click.option(
    "--auth",
    is_flag=True,
    default=False,
    envvar="MODELHOST_AUTH",
    help="Require a token of every caller, with permissions on registered models. On by "
    "itself when --host is not a loopback address.",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=False,
    envvar="MODELHOST_INSECURE",
    help="Serve a non-loopback --host with no auth: anyone who reaches it may do anything.",
)
@click.option(
    "--admin-token",
    default=None,
    envvar="MODELHOST_ADMIN_TOKEN",
    help="The first admin's token (32+ characters); set the variable rather than the flag, "
    "which others can see in the process list.  [default: one made and printed at first start]",
)
@click.option(
    "--default-experiment-permission",
    default=UpSettings.default_experiment_permission,
    show_default=True,
    envvar="MODELHOST_DEFAULT_EXPERIMENT_PERMISSION",
    type=click.Choice(["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"], case_sensitive=False),
    help="With auth: what a signed-in caller may do on an experiment (its runs, logged models "
    "and their files) that no grant of theirs names; its creator manages it.",
)
@click.option(
    "--max-artifact-mb",
    default=UpSettings.max_artifact_mb,
    show_default=True,
    envvar="MODELHOST_MAX_ARTIFACT_MB",
    type=click.FloatRange(min=0, min_open=True),
    help="The largest artifact file an upload may write (413 past it).",
)
@click.option(
    "--model-user",
    default=UpSettings.model_user,
    show_default=True,
    envvar="MODELHOST_MODEL_USER",
    help="When modelhost runs as root, model code (model servers, environment builds) runs as "
    "this unprivileged user, created if missing; each model can read only its own files.",
)
@click.option(
    "--header-timeout",
    "header_timeout_s",
    default=UpSettings.header_timeout_s,
    show_default=True,
    envvar="MODELHOST_HEADER_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a client has to send a request's headers; then it gets 408 and is closed.",
)
@click.option(
    "--body-timeout",
    "body_timeout_s",
    default=UpSettings.body_timeout_s,
    show_default=True,
    envvar="MODELHOST_BODY_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a client has to send a request's body after its headers, plus one for each "
    "64 KiB that arrives; then it gets 408 and is closed.",
)
@click.option(
    "--registry-requests-per-client",
    default=UpSettings.registry_requests_per_client,
    show_default=True,
    envvar="MODELHOST_REGISTRY_REQUESTS_PER_CLIENT",
    type=click.IntRange(min=1),
    help="Registry requests one client address may have in flight at once; more get 429.",
)
@click.option(
    "--batch-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="MODELHOST_BATCH_ROOT",
    show_default="<home>/batch",
    help="The folder batch jobs read their input from and write their output to; paths jobs "
    "name are taken under it and may not leave it.",
)
@click.option(
    "--batch-jobs",
    default=UpSettings.batch_jobs,
    show_default=True,
    envvar="MODELHOST_BATCH_JOBS",
    type=click.IntRange(min=1),
    help="Batch jobs that run at once; jobs submitted past it wait, PENDING, in turn.",
)
@click.option(
    "--fork-servers/--no-fork-servers",
    default=UpSettings.fork_servers,
    show_default=True,
    envvar="MODELHOST_FORK_SERVERS",
    help="Fork model servers from a process that has imported what they need (they start in "
    "a fraction of a second and share that memory), or start each as a fresh process.",
)
def up(**options: object) -> None:
    """Run modelhost: the MLflow registry and the gateway in front of it, on one port."""
    from modelhost.preflight import SetupError, preflight

    settings = UpSettings(**options)  # type: ignore[arg-type]
    try:
        checked = preflight(settings)  # before the heavy imports: a wrong setting shows at once
    except SetupError as e:
        raise click.UsageError(e.message) from None

    from modelhost.up import run

    try:
        run(settings, checked)
    except ModelhostError as e:  # model code cannot be isolated, a database does not open...
        raise click.ClickException(e.message) from None


@main.command(hidden=True)
@click.option(
    "--fd",
    type=click.IntRange(min=0),
    required=True,
    help="The bound socket to serve on (Unix, or TCP on a cluster node), handed over open.",
)
@click.option(
    "--workers",
    default=ServeSettings.workers,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes, each holding every version it is told to.",
)
@_max_batch_size()
@_max_batch_delay_ms()
@_max_body_mb()
@_timeout()
def worker(**options: object) -> None:
    """A model server of the platform: holds the versions of one model, as `up` tells it."""
    from modelhost.worker.server import serve_versions

    serve_versions(ServeSettings(model_uri="", **options))  # type: ignore[arg-type]


main.add_command(serving)
main.add_command(batch)


@main.command()
@click.argument("model_uri")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dockerfile",
    is_flag=True,
    default=False,
    envvar="MODELHOST_DOCKERFILE",
    help="Also write a Dockerfile that builds an image of the bundle with no network.",
)
@click.option(
    "--python-version",
    default=None,
    envvar="MODELHOST_PYTHON_VERSION",
    help="The Python the bundle runs on, e.g. 3.12.  [default: this one's]",
)
@click.option(
    "--index-url",
    default=None,
    envvar="MODELHOST_INDEX_URL",
    help="The package index to fetch wheels from (this machine's pip and uv settings are not "
    "used).  [default: PyPI]",
)
@click.option(
    "--modelhost-wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="MODELHOST_WHEEL",
    help="A wheel of modelhost to bundle.  [default: built from the installed modelhost's source]",
)
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Write into OUTDIR even if it is not empty, replacing the bundle's files in it.",
)
def package(**options: object) -> None:
    """Write MODEL_URI, modelhost and every wheel they need into OUTDIR, to serve offline.

    MODEL_URI is anything the MLflow client resolves. OUTDIR/serve then installs from the
    bundle alone and serves the model: OUTDIR/serve --host 0.0.0.0 --port 5000.
    """
    from modelhost.packaging import PackageOptions, PackagingFailed
    from modelhost.packaging import package as run

    try:
        run(PackageOptions(**options))  # type: ignore[arg-type]
    except PackagingFailed as e:
        raise click.ClickException(str(e)) from None


for group in (users, tokens, permissions):
    main.add_command(group)

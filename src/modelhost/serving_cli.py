"""`modelhost serving ...`: the serving control API from the command line."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from modelhost.api_client import ApiClient, show
from modelhost.config import EnvManager, ServeSettings
from modelhost.control.settings import Runtime, Scale

PREFIX = "/api/2.0/preview/mlflow/endpoints"


@click.group()
@click.option(
    "--url",
    envvar="MODELHOST_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The modelhost gateway.",
)
@click.option("--token", envvar="MODELHOST_TOKEN", default=None, help="The credential to send.")
@click.pass_context
def serving(ctx: click.Context, url: str, token: str | None) -> None:
    """Turn serving on and off for registered models, and see how it goes."""
    ctx.obj = ApiClient(url, token, PREFIX)


name_argument = click.argument("name")
ENV_MANAGERS = click.Choice([m.value for m in EnvManager])
ENV_MANAGER_HELP = (
    "Python environment of each version: auto uses modelhost's own when it satisfies the "
    "version's requirements and builds one with uv otherwise; local always uses modelhost's "
    "own; uv always builds one."
)


F = TypeVar("F", bound=Callable[..., object])
OFF = "off"


class SecondsOrOff(click.ParamType):
    """A number of seconds, or `off`; the gateway checks the bounds."""

    name = "SECONDS|off"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float | str:
        if isinstance(value, float) or value == OFF:
            return value
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number of seconds nor {OFF!r}.", param, ctx)


def settings_options(command: F) -> F:
    """The settings flags of `enable` and `settings`; the gateway checks their values."""
    for option in reversed(
        [
            click.option(
                "--env-manager", type=ENV_MANAGERS, default=None,
                help=f"{ENV_MANAGER_HELP}  [default: the one `modelhost up` was started with]",
            ),
            click.option(
                "--workers", type=int, default=None,
                help="Worker processes of each model server, each holding every version "
                "(1 to 16).  [default: 1]",
            ),
            click.option(
                "--max-batch-size", type=int, default=None,
                help="Most input rows one predict call combines; 1 turns batching off.  "
                f"[default: {ServeSettings.max_batch_size}]",
            ),
            click.option(
                "--max-batch-delay-ms", type=float, default=None,
                help="Longest a batch waits for requests that have already arrived.  "
                f"[default: {ServeSettings.max_batch_delay_ms:g}]",
            ),
            click.option(
                "--timeout", "timeout_s", type=float, default=None,
                help="Seconds a scoring request may take before it gets 504.  "
                "[default: `modelhost up --timeout`]",
            ),
            click.option(
                "--cpus", type=float, default=None,
                help="Logical CPUs each replica of its model server reserves on a cluster node "
                f"(0.1 to 256; `modelhost up --engine ray`).  [default: {Runtime.cpus:g}]",
            ),
            click.option(
                "--memory-mb", type=int, default=None,
                help="Memory in MB each replica reserves on a cluster node; 0 reserves none "
                f"(`--engine ray`).  [default: {Runtime.memory_mb}]",
            ),
            click.option(
                "--min-replicas", type=int, default=None,
                help="Fewest replicas of its model server on the cluster, each holding every "
                f"version (1 to 64; `--engine ray`).  [default: {Scale.min_replicas}]",
            ),
            click.option(
                "--max-replicas", type=int, default=None,
                help="Most replicas of its model server on the cluster, at least "
                f"--min-replicas (1 to 64; `--engine ray`).  [default: {Scale.max_replicas}]",
            ),
            click.option(
                "--scale-to-zero-after", type=SecondsOrOff(), default=None,
                help="Seconds without requests after which its model servers stop; the next "
                "request wakes it (waiting at most its timeout). `off` keeps it awake.  "
                "[default: off]",
            ),
            click.option(
                "--tag", "tags", multiple=True, metavar="KEY=VALUE",
                help="Set a tag (again for more); a key it has already gets the new value.",
            ),
            click.option(
                "--remove-tag", "removed_tags", multiple=True, metavar="KEY",
                help="Remove a tag (again for more).",
            ),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


@serving.command()
@name_argument
@settings_options
@click.pass_obj
def enable(client: ApiClient, name: str, **options: object) -> None:
    """Serve every non-archived version of registered model NAME."""
    client.call("POST", "enable", registered_model_name=name, **_settings(client, name, options))
    click.echo(f"Serving enabled for {name}.")


@serving.command()
@name_argument
@settings_options
@click.pass_obj
def settings(client: ApiClient, name: str, **options: object) -> None:
    """Change how NAME is served; its versions move once new servers hold them ready.

    With no flags, show its settings.
    """
    changed = _settings(client, name, options)
    if not changed:
        show(client.call("GET", "get-status", registered_model_name=name)["endpoint_status"]
             ["settings"])  # fmt: skip
        return
    client.call("POST", "update-settings", registered_model_name=name, **changed)
    for key, value in changed.items():
        click.echo(_said(name, key, value))


def _said(name: str, key: str, value: object) -> str:
    """A setting as set: "workers of NAME is 2.", "tags of NAME: team=fraud."."""
    if value is None:
        return f"{key} of {name} is {OFF}."
    if isinstance(value, list):
        tags = ", ".join(f"{tag['key']}={tag['value']}" for tag in value)
        return f"{key} of {name}: {tags or 'none'}."
    return (
        f"{key} of {name} is {value:g}."
        if isinstance(value, float)
        else f"{key} of {name} is {value}."
    )


def _settings(client: ApiClient, name: str, options: dict[str, object]) -> dict[str, object]:
    """The settings the flags set, as the serving API takes them."""
    tags: tuple[str, ...] = options.pop("tags")  # type: ignore[assignment]
    removed: tuple[str, ...] = options.pop("removed_tags")  # type: ignore[assignment]
    fields = {key: value for key, value in options.items() if value is not None}
    if fields.get("scale_to_zero_after") == OFF:
        fields["scale_to_zero_after"] = None  # null turns it off
    if tags or removed:
        current = _current_tags(client, name)
        for tag in tags:
            key, equals, value = tag.partition("=")
            if not equals or not key:
                raise click.BadParameter(f"{tag!r} is not KEY=VALUE.", param_hint="--tag")
            current[key] = value
        for key in removed:
            if current.pop(key, None) is None:
                raise click.BadParameter(f"{name} has no tag {key!r}.", param_hint="--remove-tag")
        fields["tags"] = [{"key": k, "value": v} for k, v in current.items()]
    return fields


def _current_tags(client: ApiClient, name: str) -> dict[str, str]:
    """NAME's tags now; none if it is not served yet (`enable` then sets them)."""
    served = {e["registered_model_name"]: e for e in client.call("GET", "list")["endpoints"]}
    tags = served[name]["settings"]["tags"] if name in served else []
    return {tag["key"]: tag["value"] for tag in tags}


@serving.command()
@name_argument
@click.pass_obj
def disable(client: ApiClient, name: str) -> None:
    """Stop serving registered model NAME."""
    client.call("POST", "disable", registered_model_name=name)
    click.echo(f"Serving disabled for {name}.")


@serving.command()
@name_argument
@click.pass_obj
def status(client: ApiClient, name: str) -> None:
    """The state of NAME's serving."""
    show(client.call("GET", "get-status", registered_model_name=name)["endpoint_status"])


@serving.command(name="list")
@click.pass_obj
def list_(client: ApiClient) -> None:
    """Every served model and its state."""
    show(client.call("GET", "list")["endpoints"])


@serving.command()
@name_argument
@click.pass_obj
def versions(client: ApiClient, name: str) -> None:
    """The served versions of NAME and their states."""
    show(client.call("GET", "list-versions", registered_model_name=name)["endpoint_versions"])


@serving.command()
@name_argument
@click.pass_obj
def events(client: ApiClient, name: str) -> None:
    """What happened to NAME's serving, newest first."""
    show(client.call("GET", "events", registered_model_name=name)["events"])


@serving.command()
@name_argument
@click.option("--version", "version", default=None, help="A version of NAME.")
@click.pass_obj
def logs(client: ApiClient, name: str, version: str | None) -> None:
    """The log of NAME's model server."""
    fields = {"registered_model_name": name}
    if version:
        fields["endpoint_version_name"] = version
    click.echo(client.call("GET", "logs", **fields)["logs"], nl=False)

"""`modelhost serving ...`: the serving control API from the command line."""

from __future__ import annotations

import click

from modelhost.api_client import ApiClient, show
from modelhost.config import EnvManager

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


@serving.command()
@name_argument
@click.option(
    "--env-manager",
    type=ENV_MANAGERS,
    default=None,
    help=f"{ENV_MANAGER_HELP}  [default: the one `modelhost up` was started with]",
)
@click.pass_obj
def enable(client: ApiClient, name: str, env_manager: str | None) -> None:
    """Serve every non-archived version of registered model NAME."""
    fields = {"env_manager": env_manager} if env_manager else {}
    client.call("POST", "enable", registered_model_name=name, **fields)
    click.echo(f"Serving enabled for {name}.")


@serving.command()
@name_argument
@click.option("--env-manager", type=ENV_MANAGERS, required=True, help=ENV_MANAGER_HELP)
@click.pass_obj
def settings(client: ApiClient, name: str, env_manager: str) -> None:
    """Change how NAME is served; its versions move once they are ready again."""
    client.call("POST", "update-settings", registered_model_name=name, env_manager=env_manager)
    click.echo(f"env_manager of {name} is {env_manager}.")


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

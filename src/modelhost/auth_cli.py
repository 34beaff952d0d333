"""`modelhost users|tokens|permissions ...`: identities, tokens and grants from the command line."""

from __future__ import annotations

import click

from modelhost.api_client import ApiClient, show

PREFIX = "/api/2.0/modelhost"
LEVELS = click.Choice(["READ", "EDIT", "MANAGE"], case_sensitive=False)


class AuthClient(ApiClient):
    def __init__(self, url: str, token: str | None) -> None:
        super().__init__(url, token, PREFIX)

    def explain(self, status: int, body: dict) -> str:
        # The gateway alone (no auth) knows no such route.
        if status == 404 and str(body.get("message")).startswith(f"No route {PREFIX}"):
            return (
                f"modelhost at {self.base_url} does not sign callers in: start it with "
                "`modelhost up --auth`."
            )
        return super().explain(status, body)


def _connection(group: click.Group) -> click.Group:
    """--url and --token, the same for every group."""
    group = click.option(
        "--token",
        envvar="MODELHOST_TOKEN",
        default=None,
        help="Your token (an admin's, for users).",
    )(group)
    group = click.option(
        "--url", envvar="MODELHOST_URL", default="http://127.0.0.1:8080", show_default=True,
        help="The modelhost gateway.",
    )(group)  # fmt: skip
    return group


def _client(ctx: click.Context, url: str, token: str | None) -> None:
    ctx.obj = AuthClient(url, token)


@click.group()
@_connection
@click.pass_context
def users(ctx: click.Context, url: str, token: str | None) -> None:
    """Users and service principals (admins only)."""
    _client(ctx, url, token)


@users.command(name="create")
@click.argument("name")
@click.option("--service-principal", is_flag=True, help="An identity for a program, not a person.")
@click.option("--admin", is_flag=True, help="May do everything, everywhere.")
@click.pass_obj
def create_user(client: AuthClient, name: str, service_principal: bool, admin: bool) -> None:
    """Create user NAME; then give it a token with `modelhost tokens create --user NAME`."""
    kind = "service_principal" if service_principal else "user"
    client.call("POST", "users/create", name=name, kind=kind, admin=admin)
    click.echo(f"Created {kind.replace('_', ' ')} {name}.")


@users.command(name="list")
@click.pass_obj
def list_users(client: AuthClient) -> None:
    """Every user and service principal."""
    show(client.call("GET", "users/list")["users"])


@users.command(name="revoke")
@click.argument("name")
@click.pass_obj
def revoke_user(client: AuthClient, name: str) -> None:
    """Revoke NAME: its tokens stop working at once."""
    client.call("POST", "users/revoke", name=name)
    click.echo(f"Revoked {name}.")


@click.group()
@_connection
@click.pass_context
def tokens(ctx: click.Context, url: str, token: str | None) -> None:
    """Tokens: yours, or anyone's for admins."""
    _client(ctx, url, token)


@tokens.command(name="create")
@click.option("--user", default=None, help="Whose token.  [default: yours]")
@click.option("--expires-in-days", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--comment", default="", help="What it is for.")
@click.pass_obj
def create_token(
    client: AuthClient, user: str | None, expires_in_days: float | None, comment: str
) -> None:
    """Create a token and print it: it is shown this once."""
    fields: dict[str, object] = {"comment": comment}
    if user:
        fields["user"] = user
    if expires_in_days:
        fields["expires_in_days"] = expires_in_days
    click.echo(client.call("POST", "tokens/create", **fields)["token"])


@tokens.command(name="list")
@click.option("--user", default=None, help="Whose tokens.  [default: yours; an admin's: all]")
@click.pass_obj
def list_tokens(client: AuthClient, user: str | None) -> None:
    """Live tokens (their ids, never the tokens)."""
    show(client.call("GET", "tokens/list", user=user)["tokens"])


@tokens.command(name="revoke")
@click.argument("token_id")
@click.pass_obj
def revoke_token(client: AuthClient, token_id: str) -> None:
    """Revoke the token with id TOKEN_ID (see `modelhost tokens list`)."""
    client.call("POST", "tokens/revoke", id=token_id)
    click.echo(f"Revoked token {token_id}.")


@click.group()
@_connection
@click.pass_context
def permissions(ctx: click.Context, url: str, token: str | None) -> None:
    """Grants on a registered model or a name prefix (`prod.ml_team.*`), at READ, EDIT or MANAGE.

    READ scores every served version and sees status, versions and events; EDIT also registers
    versions and sets tags, aliases and stages; MANAGE also turns serving on and off, reads
    logs and grants.
    """
    _client(ctx, url, token)


target_argument = click.argument("name_or_prefix")


@permissions.command()
@target_argument
@click.option("--user", required=True, help="The user or service principal.")
@click.option("--level", required=True, type=LEVELS)
@click.pass_obj
def grant(client: AuthClient, name_or_prefix: str, user: str, level: str) -> None:
    """Grant USER LEVEL on NAME_OR_PREFIX (needs MANAGE there)."""
    client.call("POST", "permissions/grant", target=name_or_prefix, user=user, level=level.upper())
    click.echo(f"Granted {level.upper()} on {name_or_prefix} to {user}.")


@permissions.command()
@target_argument
@click.option("--user", required=True, help="The user or service principal.")
@click.pass_obj
def revoke(client: AuthClient, name_or_prefix: str, user: str) -> None:
    """Revoke USER's grant on NAME_OR_PREFIX itself (needs MANAGE there)."""
    client.call("POST", "permissions/revoke", target=name_or_prefix, user=user)
    click.echo(f"Revoked the grant of {user} on {name_or_prefix}.")


@permissions.command(name="list")
@click.argument("name_or_prefix", required=False)
@click.option("--user", default=None, help="Only this user's grants.")
@click.pass_obj
def list_grants(client: AuthClient, name_or_prefix: str | None, user: str | None) -> None:
    """The grants that apply to NAME_OR_PREFIX (its own and its prefixes'), or yours."""
    shown = client.call("GET", "permissions/list", target=name_or_prefix, user=user)
    show(shown["permissions"])


@permissions.command()
@target_argument
@click.pass_obj
def audit(client: AuthClient, name_or_prefix: str) -> None:
    """Who granted, revoked, turned serving on and off on NAME_OR_PREFIX, newest first."""
    show(client.call("GET", "permissions/audit", target=name_or_prefix)["events"])

"""Whether `modelhost up` signs callers in, the first admin, and the gateway wrapped in `Auth`."""

from __future__ import annotations

import ipaddress
import logging

from modelhost.auth import tokens
from modelhost.auth.access import Access
from modelhost.auth.limits import FailureLimiter
from modelhost.auth.middleware import Auth
from modelhost.auth.policy import parse_default_permission
from modelhost.auth.store import ADMIN, ADMIN_ENV_TOKEN_ID, AuthStore, Kind
from modelhost.config import UpSettings
from modelhost.control.store import StateStore

log = logging.getLogger("modelhost.auth")


class AuthSetupError(ValueError):
    """Settings that cannot be honoured; the message says which flag to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def auth_required(settings: UpSettings) -> bool:
    """Open only on loopback, or anywhere with --insecure; --auth turns it on anywhere."""
    if settings.auth and settings.insecure:
        raise AuthSetupError("--auth and --insecure contradict each other: pass one.")
    if settings.auth:
        return True
    if is_loopback(settings.host) or settings.insecure:
        if settings.insecure and not is_loopback(settings.host):
            log.warning(
                "Serving %s with no auth (--insecure): anyone who reaches it may score, "
                "register and turn serving on and off.",
                settings.host,
            )
        return False
    log.info("Bound to %s, not loopback: auth is on (--insecure turns it off).", settings.host)
    return True


def check_admin_token(admin_token: str | None) -> None:
    """A chosen admin token must be long enough to be a secret."""
    if admin_token is not None and len(admin_token) < tokens.MIN_CHOSEN_LENGTH:
        raise AuthSetupError(
            f"MODELHOST_ADMIN_TOKEN is shorter than {tokens.MIN_CHOSEN_LENGTH} characters: "
            """make one with python -c 'import secrets; print(secrets.token_urlsafe(32))'."""
        )


def bootstrap_admin(store: AuthStore, admin_token: str | None) -> str | None:
    """The first admin: with MODELHOST_ADMIN_TOKEN's token, or a new one returned to print."""
    check_admin_token(admin_token)
    snapshot = store.snapshot()
    if admin_token is not None:
        if ADMIN not in snapshot.principals:
            store.create_principal(ADMIN, Kind.USER, admin=True)
        store.set_token(ADMIN, ADMIN_ENV_TOKEN_ID, admin_token)
        return None
    if snapshot.principals:
        return None
    store.create_principal(ADMIN, Kind.USER, admin=True)
    secret, _ = store.create_token(ADMIN, comment="created at first start")
    return secret


def protect(app, settings: UpSettings, events: StateStore) -> Auth:
    """`app` behind `Auth`, with the auth tables in the state database and a first admin."""
    store = AuthStore(events.engine)
    created = bootstrap_admin(store, settings.admin_token)
    if created is not None:
        print(
            "\nAuth is on. The first admin is 'admin'; its token, shown this once:\n"
            f"  {created}\n"
            "Keep it: export MODELHOST_TOKEN=<token> for `modelhost` commands, "
            "MLFLOW_TRACKING_TOKEN=<token> for MLflow clients.\n",
            flush=True,
        )
    default = parse_default_permission(settings.default_experiment_permission)
    return Auth(app, Access(store, default), events, FailureLimiter())

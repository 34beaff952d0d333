"""The first admin, and the gateway wrapped in `Auth`."""

from __future__ import annotations

import logging

from modelhost.auth.access import Access
from modelhost.auth.limits import FailureLimiter
from modelhost.auth.middleware import Auth
from modelhost.auth.policy import parse_default_permission
from modelhost.auth.store import ADMIN, ADMIN_ENV_TOKEN_ID, AuthStore, Kind
from modelhost.config import UpSettings
from modelhost.control.store import StateStore
from modelhost.preflight import check_admin_token

log = logging.getLogger("modelhost.auth")


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

"""The embedded registry's own door: MLflow's server app, answering only the gateway's process.

`mlflow server --app-name modelhost` runs `create_app` (our `mlflow.app` entry point) in place
of MLflow's app: every request must carry `Authorization: Bearer <secret>`, the secret the
gateway's process made at this start and handed over in the registry's environment. Without it
anyone on the machine could read, create and delete registered models on the private port,
around the gateway's auth.
"""

from __future__ import annotations

import functools
import hmac
import os
import select
import signal
import threading
from typing import Any

from modelhost.asgi import Receive, Scope, Send, respond
from modelhost.errors import Unauthenticated
from modelhost.gateway.client_limits import ClientLimits, LimitedHttpProtocol

SECRET_ENV = "_MODELHOST_REGISTRY_SECRET"
# The gateway's --body-timeout: an upload the gateway lets through, the registry takes too.
BODY_TIMEOUT_ENV = "_MODELHOST_REGISTRY_BODY_TIMEOUT"
OWNER_ENV = "_MODELHOST_REGISTRY_OWNER"  # the pid of the `modelhost up` that started it
# Reveals nothing, and keeps readiness checks (ours and the gateway's /health) simple.
OPEN_PATHS = frozenset({"/health"})
REFUSED = Unauthenticated(
    "This is modelhost's embedded registry, reached only through modelhost's gateway: "
    "send MLflow calls to the gateway's URL."
)


class SecretRequired:
    """An ASGI app that passes on only requests that carry the registry's secret."""

    def __init__(self, app: Any, secret: str) -> None:
        self.app = app
        self._expected = f"Bearer {secret}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] in ("http", "websocket")
            and scope["path"] not in OPEN_PATHS
            and not self._carries_secret(scope["headers"])
        ):
            if scope["type"] == "http":
                await respond(send, REFUSED.status, REFUSED.body())
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)

    def _carries_secret(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = [value for name, value in headers if name == b"authorization"]
        # Exactly one, compared in constant time: no timing hints about the secret.
        return len(given) == 1 and hmac.compare_digest(given[0], self._expected)


def create_app() -> SecretRequired:
    """MLflow's tracking server app behind `SecretRequired`; uvicorn calls this at start."""
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        # Never serve the registry open: a start without the secret is a bug, say so loudly.
        raise RuntimeError(f"{SECRET_ENV} is not set: the registry is started by `modelhost up`.")
    if owner := os.environ.get(OWNER_ENV):
        _end_with(int(owner))
    from mlflow.server.fastapi_app import app

    return SecretRequired(app, secret)


def _end_with(owner: int) -> None:
    """Stop the registry's process group when `modelhost up` ends, even killed (SIGKILL): a
    registry no node answers for would hold its port, and its database, for good."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os.killpg(os.getpgrp(), signal.SIGTERM)
        return

    def wait() -> None:
        select.select([pidfd], [], [])  # readable once the owner has exited
        os.killpg(os.getpgrp(), signal.SIGTERM)

    threading.Thread(target=wait, name="modelhost-owner", daemon=True).start()


def http_protocol(**kwargs: Any) -> LimitedHttpProtocol:
    """The registry's uvicorn protocol (`--http`): the gateway's limits on slow, bloated heads.

    The port is private but reachable by anyone on the machine; without limits, connections
    that never finish their headers would hold the registry's sockets for good.
    """
    return LimitedHttpProtocol(limits=_limits(), **kwargs)


@functools.cache
def _limits() -> ClientLimits:
    body_timeout_s = os.environ.get(BODY_TIMEOUT_ENV)
    if body_timeout_s is None:
        return ClientLimits()
    return ClientLimits(body_timeout_s=float(body_timeout_s))

"""The gateway's routes. Today: the registry behind it and its health; serving comes next."""

from __future__ import annotations

import logging
from http import HTTPStatus

import httpx
import orjson

from modelhost.asgi import Receive, Scope, Send, respond
from modelhost.errors import NotFound
from modelhost.gateway.proxy import Upstream

log = logging.getLogger("modelhost.gateway")

# What MLflow clients call, all answered by the registry (the tracking server).
REGISTRY_PREFIXES = (
    "/api/2.0/mlflow",
    "/api/2.0/mlflow-artifacts",
    "/api/3.0/mlflow",
    "/ajax-api/",
)


class Gateway:
    """The ASGI app behind modelhost's one port."""

    def __init__(self, registry_url: str) -> None:
        self.registry_url = registry_url
        self._registry: Upstream | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._registry = Upstream(self.registry_url)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._registry:
                    await self._registry.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith(REGISTRY_PREFIXES):
            assert self._registry is not None, "lifespan startup has run"
            await self._registry.forward(scope, receive, send)
        elif path == "/health":
            await self._health(send)
        else:
            error = NotFound(f"No route {path}.")
            await respond(send, error.status, error.body())

    async def _health(self, send: Send) -> None:
        """Ready when the registry answers."""
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                registry_ok = (await client.get(f"{self.registry_url}/health")).is_success
        except httpx.TransportError:
            registry_ok = False
        status = HTTPStatus.OK if registry_ok else HTTPStatus.SERVICE_UNAVAILABLE
        body = {
            "status": "READY" if registry_ok else "REGISTRY_UNREACHABLE",
            "registry": registry_ok,
        }
        await respond(send, status, orjson.dumps(body))

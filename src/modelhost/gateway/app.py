"""The gateway's routes: served models, the serving control API, the registry, health."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import httpx
import orjson

from modelhost.asgi import Receive, Scope, Send, respond
from modelhost.control.controller import Controller
from modelhost.errors import ModelhostError, NotFound, NotReady
from modelhost.gateway.proxy import Upstream
from modelhost.gateway.serving import PREFIXES as SERVING_PREFIXES
from modelhost.gateway.serving import ServingAPI

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

    def __init__(self, registry_url: str, controller: Controller) -> None:
        self.registry_url = registry_url
        self.controller = controller
        self.serving_api = ServingAPI(controller)
        self._registry: Upstream | None = None
        self._model_servers: dict[int, Upstream] = {}
        self._controlling: asyncio.Task[None] | None = None

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
                self._controlling = asyncio.create_task(self.controller.run(), name="controller")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._controlling:
                    self._controlling.cancel()
                await self.controller.stop()
                for upstream in [self._registry, *self._model_servers.values()]:
                    if upstream:
                        await upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/model/") and path.endswith("/invocations"):
            await self._score(scope, receive, send)
        elif path.startswith(SERVING_PREFIXES):
            action = path.split("/")[-1]
            await self.serving_api(scope, receive, send, action)
        elif path.startswith(REGISTRY_PREFIXES):
            assert self._registry is not None, "lifespan startup has run"
            await self._registry.forward(scope, receive, send)
        elif path == "/health":
            await self._health(send)
        else:
            error = NotFound(f"No route {path}.")
            await respond(send, error.status, error.body())

    async def _score(self, scope: Scope, receive: Receive, send: Send) -> None:
        """/model/<name>/<version | stage | alias>/invocations, to the model's server."""
        name, _, ref = scope["path"][len("/model/") : -len("/invocations")].rpartition("/")
        routes = self.controller.routes.get(name)
        version = routes.resolve(ref) if routes else None
        if routes is None or version is None:
            error: ModelhostError = NotFound(
                f"No served model '{name}' with a version, stage or alias '{ref}'."
            )
            await respond(send, error.status, error.body())
            return
        state = routes.versions.get(version, {}).get("state")
        if routes.port is None or state != "VERSION_STATE_READY":
            error = NotReady(f"Version {version} of '{name}' is not ready yet; send again shortly.")
            await respond(send, error.status, error.body(), headers=((b"retry-after", b"1"),))
            return
        upstream = self._model_servers.get(routes.port)
        if upstream is None:
            upstream = self._model_servers[routes.port] = Upstream(
                f"http://127.0.0.1:{routes.port}"
            )
        # Which version answered: a stage or alias names a different one over time.
        answered_by = ((b"x-modelhost-version", version.encode()),)
        await upstream.forward(
            scope, receive, send, f"/versions/{version}/invocations", answered_by
        )

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

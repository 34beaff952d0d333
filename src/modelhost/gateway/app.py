"""The gateway's routes: served models, the serving control API, the registry, health."""

from __future__ import annotations

import asyncio
import gc
import logging
from http import HTTPStatus

import httpx
import orjson

from modelhost.asgi import Receive, Scope, Send, read_body, refuse_method, respond
from modelhost.auth.origin import CROSS_SITE, changes, cross_site
from modelhost.batch.jobs_api import JOBS_PATH, JobsAPI
from modelhost.config import UpSettings
from modelhost.control.node import Node, listed
from modelhost.control.routes import Replica, ServerAddress, VersionState
from modelhost.control.serving import ServingControl
from modelhost.errors import (
    LengthRequired,
    ModelhostError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PermissionDenied,
    Timeout,
)
from modelhost.gateway import openapi, ui
from modelhost.gateway.examples import Examples
from modelhost.gateway.metrics import GatewayMetrics
from modelhost.gateway.page_api import PageAPI
from modelhost.gateway.paths import (
    MLFLOW_UI,
    MLFLOW_UI_CALLS,
    MODELHOST_ROOT,
    mlflow_ui_file,
    registry_route,
    scoring_target,
    serving_action,
)
from modelhost.gateway.pool import ConnectionPool, Response, Unreachable, UpstreamClosed
from modelhost.gateway.proxy import HOP_BY_HOP, Upstream
from modelhost.gateway.series import Series
from modelhost.gateway.serving import ServingAPI

log = logging.getLogger("modelhost.gateway")

# What the gateway answers itself, to GET or HEAD.
PAGES = ("/health", "/openapi.json", "/docs", "/metrics")


class Gateway:
    """The ASGI app behind modelhost's one port."""

    def __init__(
        self,
        settings: UpSettings,
        registry_url: str,
        control: ServingControl,
        registry_secret: str | None = None,  # the embedded registry's, sent in place of callers'
        batch_jobs: JobsAPI | None = None,  # None: this gateway runs no batch jobs
        node: Node | None = None,  # this node of the state database; None: the gateway alone
    ) -> None:
        self.settings = settings
        self.node = node
        self.registry_url = registry_url
        self.registry_secret = registry_secret
        self.control = control
        self.serving_api = ServingAPI(control)
        self.batch_jobs = batch_jobs
        self._registry: Upstream | None = None
        self._pools: dict[int, ConnectionPool] = {}  # by replica of a model server (its number)
        self._turn = 0  # rotates which of equally busy replicas gets the next request
        self.metrics = GatewayMetrics(served=lambda name: name in control.routes.models)
        self.series = Series(self.metrics)
        nodes = (lambda: listed(node.store)) if node is not None else list
        self.page_api = PageAPI(Examples(registry_url), self.series, nodes)
        self._sampling: asyncio.Task | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            try:
                await self._http(scope, receive, send)
            except Exception as e:  # a bug of ours or a library's: say so, keep serving
                log.exception("Answering %s %s failed unexpectedly", scope["method"], scope["path"])
                error = ModelhostError(f"The gateway failed unexpectedly: {type(e).__name__}: {e}")
                await respond(send, error.status, error.body())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._registry = Upstream(
                    self.registry_url,
                    bearer=self.registry_secret,
                    max_per_client=self.settings.registry_requests_per_client,
                )
                self._sampling = asyncio.create_task(self.series.run(), name="metrics series")
                gc.freeze()  # what startup made (MLflow's modules above all) stays: never walk it
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._sampling:
                    self._sampling.cancel()
                if self._registry:
                    await self._registry.close()
                for pool in self._pools.values():
                    pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if (target := scoring_target(path)) is not None:
            if scope["method"] == "POST":
                await self._score(scope, receive, send, *target)
            else:
                await refuse_method(send, scope, ("POST",))
        elif changes(scope) and cross_site(scope):
            # Another site's page made the browser send it: with auth off nothing else stops it.
            error = PermissionDenied(CROSS_SITE)
            await respond(send, error.status, error.body())
        elif (action := serving_action(path)) is not None:
            await self.serving_api(scope, receive, send, action)
        elif registry_route(path) is not None or path in MLFLOW_UI_CALLS:
            assert self._registry is not None, "lifespan startup has run"
            if scope["method"] == "PUT" and (refused := self._upload_refused(scope)):
                await respond(send, refused.status, refused.body())
                return
            await self._registry.forward(scope, receive, send)
        elif path.startswith(JOBS_PATH) and self.batch_jobs is not None:
            await self.batch_jobs(scope, receive, send)
        elif path.startswith(MODELHOST_ROOT):
            await self.page_api(scope, receive, send)
        elif mlflow_ui_file(path) and scope["method"] not in ("GET", "HEAD"):
            await refuse_method(send, scope, ("GET", "HEAD"))
        elif mlflow_ui_file(path):
            assert self._registry is not None, "lifespan startup has run"
            # MLflow's index answers at the registry's `/`; its files at their own paths.
            await self._registry.forward(scope, receive, send, "/" if path == MLFLOW_UI else None)
        elif ui.is_page(path):
            await ui.serve(scope, send)
        elif path in PAGES and scope["method"] not in ("GET", "HEAD"):
            await refuse_method(send, scope, ("GET", "HEAD"))
        elif path == "/health":
            await self._health(send)
        elif path == "/openapi.json":
            await respond(send, HTTPStatus.OK, openapi.spec_json())
        elif path == "/docs":
            await respond(send, HTTPStatus.OK, openapi.page(), b"text/html; charset=utf-8")
        elif path == "/metrics":
            await self.metrics.expose(send, self._model_servers())
        else:
            error = NotFound(f"No route {path}.")
            await respond(send, error.status, error.body())

    def _upload_refused(self, scope: Scope) -> ModelhostError | None:
        """An artifact upload must say its size, within --max-artifact-mb, before it is sent on."""
        declared = dict(scope["headers"]).get(b"content-length", b"")
        limit = self.settings.max_artifact_bytes
        if not declared.isdigit():
            return LengthRequired("Send the file's size as Content-Length (MLflow's client does).")
        if int(declared) > limit:
            return PayloadTooLarge(
                f"The file is larger than the artifact limit of {limit} bytes; an admin can raise "
                "it with `modelhost up --max-artifact-mb`."
            )
        return None

    async def _score(self, scope: Scope, receive: Receive, send: Send, name: str, ref: str) -> None:
        """/model/<name>/<version | stage | alias>/invocations, to the model's server."""
        send = self.metrics.watch(name, send)  # counts the answer, whichever it is

        retry = ((b"retry-after", b"1"),)
        timeout_s = self.control.routes.timeout_s(name)  # the model's own, or --timeout
        cold_start: tuple[tuple[bytes, bytes], ...] = ()
        received = scope["headers"]
        body: bytes | None = None
        try:
            try:
                version, server = self._route(name, ref)
            except (NotReady, NotFound):  # asleep, or waking: no version is ready, no alias set
                if not self.control.sleeping(name):
                    raise
                # Auth has let this caller read the model (auth/middleware.py): it may wake it.
                # Its body first: one left unread while the model wakes would stall the client.
                body = await read_body(dict(received), receive, self.settings.max_body_bytes)
                woke_ms = await self.control.wake(name, ref, timeout_s)
                if woke_ms is not None:
                    cold_start = ((b"x-modelhost-cold-start-ms", b"%d" % round(woke_ms)),)
                version, server = self._route(name, ref)
            self.control.requested(name)  # not idle: it stays awake
            if body is None:
                body = await read_body(dict(received), receive, self.settings.max_body_bytes)
            content_type = next((v for k, v in received if k == b"content-type"), b"")
            in_flight = self.control.board.in_flight  # read by autoscaling
            in_flight[name] = in_flight.get(name, 0) + 1
            try:
                answer = await self._send_to(server.replicas, version, content_type, body,
                                             timeout_s)  # fmt: skip
            finally:
                in_flight[name] -= 1
            self.control.requested(name)  # a long request counts until it ends
        except ModelhostError as e:
            headers = retry if isinstance(e, NotReady) else ()
            await respond(send, e.status, e.body(), headers=headers)
            return
        except UpstreamClosed as e:
            error = NotReady(f"The model server of '{name}' is restarting; send again shortly. {e}")
            await respond(send, error.status, error.body(), headers=retry)
            return
        except TimeoutError:
            error = Timeout(
                f"The model server of '{name}' did not answer within {timeout_s:g} s: the model "
                "may be too slow for this input (send fewer rows, or raise the model's timeout_s "
                "setting), or its server hangs and is being replaced (send again shortly)."
            )
            await respond(send, error.status, error.body(), headers=retry)
            return
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    *((k, v) for k, v in answer.headers if k not in HOP_BY_HOP),
                    # Which version answered: a stage or alias names a different one over time.
                    (b"x-modelhost-version", version.encode()),
                    *cold_start,
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    def _route(self, name: str, ref: str) -> tuple[str, ServerAddress]:
        """The ready version `ref` names and its server; NotFound or NotReady."""
        routes = self.control.routes.models.get(name)
        version = routes.resolve(ref) if routes else None
        if routes is None and self.control.starting:
            raise NotReady("This node has just started and is reading which models it serves.")
        if routes is None or version is None:
            raise NotFound(f"No served model '{name}' with a version, stage or alias '{ref}'.")
        route = routes.versions[version]
        if route.state is not VersionState.READY or route.server is None:
            raise NotReady(
                f"Version {version} of '{name}' is not ready yet ({route.message}); send again "
                "shortly."
            )
        return version, route.server

    async def _send_to(
        self,
        replicas: tuple[Replica, ...],
        version: str,
        content_type: bytes,
        body: bytes,
        timeout_s: float,
    ) -> Response:
        """The answer of the least busy replica; if it cannot be reached (its node or process
        just died, and the routes do not know yet), of another: the request never reached it."""
        while True:
            # Chosen once the body is in: the choice and the sending see the same loads.
            pool = self._least_busy(replicas)
            try:
                # The server times out scoring itself; the pool bounds one that answers nothing.
                return await pool.score(version, content_type, body, timeout_s)
            except Unreachable:
                replicas = tuple(r for r in replicas if r.number != pool.replica.number)
                if not replicas:
                    raise

    def _least_busy(self, replicas: tuple[Replica, ...]) -> ConnectionPool:
        """The pool of the replica with the fewest requests in flight; of equally busy ones,
        each in turn, so idle replicas share the load."""
        if len(replicas) == 1:  # a server of this machine: nothing to choose
            return self._pool(replicas[0])
        self._turn += 1
        count = len(replicas)
        best: ConnectionPool | None = None
        for at in range(self._turn, self._turn + count):
            pool = self._pool(replicas[at % count])
            if best is None or pool.in_flight < best.in_flight:
                best = pool
        assert best is not None, "a ready route lists at least one replica"
        return best

    def _pool(self, replica: Replica) -> ConnectionPool:
        """The replica's pool. A new one closes those of replicas no route points at any more."""
        if (pool := self._pools.get(replica.number)) is not None:
            return pool
        live = self.control.routes.replicas()
        for gone in self._pools.keys() - live:
            self._pools.pop(gone).close()
        pool = self._pools[replica.number] = ConnectionPool(replica)
        return pool

    def _model_servers(self) -> list[tuple[str, ConnectionPool]]:
        """Each served model's name with a pool of each replica of its servers, for /metrics."""
        return [
            (name, self._pool(replica))
            for name, routes in self.control.routes.models.items()
            for replica in {
                replica
                for route in routes.versions.values()
                if route.server is not None
                for replica in route.server.replicas
            }
        ]

    async def _health(self, send: Send) -> None:
        """Whether this node can serve, for load balancers: its registry answers and its state
        database did lately (control/node.py reads it twice a second)."""
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                registry_ok = (await client.get(f"{self.registry_url}/health")).is_success
        except httpx.TransportError:
            registry_ok = False
        state_ok = self.node is None or self.node.store_reachable
        if not registry_ok:
            status = "REGISTRY_UNREACHABLE"
        elif not state_ok:
            status = "STATE_STORE_UNREACHABLE"
        else:
            status = "READY"
        body = {"status": status, "registry": registry_ok, "state_store": state_ok}
        code = HTTPStatus.OK if status == "READY" else HTTPStatus.SERVICE_UNAVAILABLE
        await respond(send, code, orjson.dumps(body))

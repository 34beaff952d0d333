"""The model server's HTTP edge: a bare ASGI app, since every microsecond here is per request."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from http import HTTPStatus
from pathlib import Path

import mlflow
import orjson

from modelhost import packing
from modelhost.asgi import Receive, Scope, Send, read_body, respond
from modelhost.config import ServeSettings
from modelhost.errors import (
    InvalidInput,
    MethodNotAllowed,
    ModelhostError,
    NotFound,
    NotReady,
    Timeout,
    Unauthenticated,
)
from modelhost.worker import metrics, protocol
from modelhost.worker.model import ServedModel
from modelhost.worker.replicas import FOLDER_ENV, Replicas
from modelhost.worker.versions import Version, Versions, VersionState

log = logging.getLogger("modelhost.worker")

# The one model of `modelhost serve` is held as a version of this name.
DEFAULT_VERSION = "model"
# Bodies larger than this are parsed off the event loop so they do not stall other requests.
PARSE_INLINE_BYTES = 64 * 1024
# What a 503 tells clients: the version may be ready, or the server replaced, in a moment.
RETRY_SOON = ((b"retry-after", b"1"),)
# What a caller without the server's secret is told (on a cluster, its port is on the network).
NOT_THE_GATEWAY = (
    "This model server runs on a cluster and answers only the modelhost gateway that started it: "
    "send requests to the gateway's /model/<name>/<version>/invocations instead."
)


class ModelServer:
    """One server's routes: /invocations for its model, or /versions/<v>/... for many.

    `modelhost serve` holds one model, answered at /invocations and /metadata. A platform
    server (`control=True`) holds the versions of one registered model, each answered at
    /versions/<v>/invocations and /versions/<v>/metadata, and is told which to hold with
    PUT and DELETE /versions/<v>; GET /versions lists them with their states.
    """

    def __init__(
        self,
        settings: ServeSettings,
        versions: Versions,
        default: str | None,
        control: bool,
        replicas: Replicas | None = None,
        secret: str = "",  # on a TCP port: every request must carry it as a bearer token
    ) -> None:
        self.settings = settings
        self._bearer = b"Bearer " + secret.encode() if secret else None
        self.versions = versions
        self.replicas = replicas  # with several worker processes: what they all hold
        self.default = default  # the version /invocations answers, in `modelhost serve`
        self.control = control
        self._routes = {
            ("GET", "/ping"): self._ping,
            ("GET", "/health"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/metrics"): self._metrics,
        }
        if default is not None:
            self._routes[("POST", "/invocations")] = self._invocations
            self._routes[("GET", "/metadata")] = self._describe
        if control:
            self._routes[("GET", "/versions")] = self._list

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.versions.start()
                if self.replicas is not None:
                    self.replicas.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.replicas is not None:
                    await self.replicas.close()
                await self.versions.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._bearer is not None and not self._authorized(scope):
            error = Unauthenticated(NOT_THE_GATEWAY)
            await respond(send, error.status, error.body())
            return
        method, path = scope["method"], scope["path"]
        route = self._routes.get((method, path))
        if route is not None:
            await route(scope, receive, send)
        elif self.control and path.startswith("/versions/"):
            await self._version_route(scope, receive, send)
        elif any(known == path for _, known in self._routes):
            error = MethodNotAllowed(f"{method} is not allowed on {path}.")
            await respond(send, error.status, error.body())
        else:
            hint = "POST /invocations; see GET /metadata" if self.default else "GET /versions"
            error = NotFound(f"No route {path}. Try {hint}.")
            await respond(send, error.status, error.body())

    def _authorized(self, scope: Scope) -> bool:
        """Whether the request carries this server's secret as its bearer token."""
        assert self._bearer is not None
        for name, value in scope["headers"]:
            if name == b"authorization":  # uvicorn gives header names in lower case
                return hmac.compare_digest(value, self._bearer)
        return False

    async def _version_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, _, rest = scope["path"].removeprefix("/versions/").partition("/")
        method = scope["method"]
        if (method, rest) == ("POST", "invocations"):
            await self._invocations(scope, receive, send, name)
        elif (method, rest) == ("POST", "packed-invocations"):
            await self._packed(scope, receive, send, name)
        elif (method, rest) == ("GET", "metadata"):
            await self._describe(scope, receive, send, name)
        elif (method, rest) == ("PUT", ""):
            await self._load(name, receive, send)
        elif (method, rest) == ("DELETE", ""):
            await self._unload(name, send)
        elif (method, rest) == ("GET", ""):
            await self._show(name, send)
        else:
            error = NotFound(f"No route {method} {scope['path']}.")
            await respond(send, error.status, error.body())

    def _ready(self, name: str | None) -> Version:
        """The version to score with, or the error that says why it cannot."""
        version = self.versions.get(name) if name is not None else None
        if version is None:
            raise NotFound(f"This server holds no version {name!r}.")
        if version.state == VersionState.LOADING:
            raise NotReady(f"Version {name} is still loading; send again shortly.")
        if version.state == VersionState.FAILED:
            raise NotReady(f"Version {name} failed to load: {version.message}")
        return version

    def _scorable(self, name: str | None) -> Version:
        """A ready version whose batcher runs, or the error that says why not."""
        version = self._ready(name)
        if (fault := self.versions.fault(version)) is not None:
            raise NotReady(f"{fault} The server must be restarted; send again shortly.")
        assert version.batcher is not None and version.model is not None, "a ready one has both"
        return version

    async def _invocations(
        self, scope: Scope, receive: Receive, send: Send, name: str | None = None
    ) -> None:
        started = time.perf_counter()
        try:
            version = self._scorable(name or self.default)
            batcher, model = version.batcher, version.model
            assert batcher is not None and model is not None
            with batcher.arriving():
                request_headers = dict(scope["headers"])
                body = await read_body(request_headers, receive, self.settings.max_body_bytes)
                model_input = await _parse(body, request_headers.get(b"content-type"), model)
            async with asyncio.timeout(self.settings.timeout_s):
                status, retry_after, answer = HTTPStatus.OK, 0, await batcher.score(model_input)
        except Exception as e:
            status, retry_after, answer = self._failed(e)
        await respond(send, status, answer, headers=RETRY_SOON if retry_after else ())
        metrics.requests.labels(int(status)).inc()
        metrics.latency.observe(time.perf_counter() - started)

    async def _packed(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """Requests the gateway received together (packing.py): each scored and answered alone,
        all in one exchange, and handed to the batcher at once."""
        started = time.perf_counter()
        try:
            body = await read_body(dict(scope["headers"]), receive, packing.MAX_PACK_BYTES)
            requests = packing.unpack_requests(body)
        except ModelhostError as e:
            await respond(send, e.status, e.body())
            return
        answers: list[tuple[int, int, bytes]] = [(0, 0, b"")] * len(requests)
        waiting: dict[asyncio.Future[bytes], int] = {}
        try:
            version = self._scorable(name)
        except ModelhostError as e:
            answers = [self._failed(e)] * len(requests)
        else:
            batcher, model = version.batcher, version.model
            assert batcher is not None and model is not None
            for at, (content_type, request) in enumerate(requests):
                try:
                    model_input = await _parse(request, content_type or None, model)
                except Exception as e:
                    answers[at] = self._failed(e)
                else:
                    waiting[batcher.submit(model_input)] = at
        if waiting:
            done, late = await asyncio.wait(waiting, timeout=self.settings.timeout_s)
            for future in late:
                future.cancel()  # the batcher skips it
                answers[waiting[future]] = self._failed(TimeoutError())
            for future in done:
                error = future.exception()
                answers[waiting[future]] = (
                    self._failed(error) if error is not None else (200, 0, future.result())
                )
        await respond(send, HTTPStatus.OK, packing.pack_answers(answers), packing.CONTENT_TYPE)
        took = time.perf_counter() - started
        for status, _, _ in answers:
            metrics.requests.labels(status).inc()
            metrics.latency.observe(took)

    def _failed(self, e: BaseException) -> tuple[int, int, bytes]:
        """A failed request's status, Retry-After seconds (0 for none) and body."""
        if isinstance(e, TimeoutError):
            e = Timeout(
                f"The model did not answer within {self.settings.timeout_s:g} s. Send fewer rows, "
                "or raise the limit with --timeout."
            )
        elif not isinstance(e, ModelhostError):  # a bug of ours or a library's: say so
            log.error("Scoring a request failed unexpectedly", exc_info=e)
            e = ModelhostError(f"Scoring failed unexpectedly: {type(e).__name__}: {e}")
        metrics.errors.labels(e.error_code).inc()
        return int(e.status), 1 if isinstance(e, NotReady) else 0, e.body()

    async def _describe(
        self, scope: Scope, receive: Receive, send: Send, name: str | None = None
    ) -> None:
        try:
            version = self._ready(name or self.default)
        except ModelhostError as e:
            await respond(send, e.status, e.body())
            return
        await respond(send, HTTPStatus.OK, version.metadata)

    async def _load(self, name: str, receive: Receive, send: Send) -> None:
        body = await read_body({}, receive, 64 * 1024)
        try:
            request = orjson.loads(body)
            model_uri = request["model_uri"]
            local_path = request.get("local_path")  # the artifacts, when fetched already
            if not isinstance(model_uri, str) or not model_uri:
                raise ValueError
            if local_path is not None and (not isinstance(local_path, str) or not local_path):
                raise ValueError
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            error = InvalidInput(
                'Send {"model_uri": "<any URI the MLflow client resolves>"}, and optionally '
                '"local_path": "<a folder holding its artifacts>".'
            )
            await respond(send, error.status, error.body())
            return
        try:
            version = self.versions.load(name, model_uri, local_path)
        except ModelhostError as e:
            await respond(send, e.status, e.body())
            return
        if self.replicas is not None:
            self.replicas.want(name, model_uri, local_path)
        await respond(send, HTTPStatus.ACCEPTED, orjson.dumps(version.describe()))

    async def _unload(self, name: str, send: Send) -> None:
        dropped = self.replicas is not None and self.replicas.drop(name)
        if await self.versions.unload(name) or dropped:
            await respond(send, HTTPStatus.OK, b"{}")
        else:
            error = NotFound(f"This server holds no version {name!r}.")
            await respond(send, error.status, error.body())

    async def _show(self, name: str, send: Send) -> None:
        version = self.versions.get(name)
        if version is None:
            error = NotFound(f"This server holds no version {name!r}.")
            await respond(send, error.status, error.body())
            return
        await respond(send, HTTPStatus.OK, orjson.dumps(version.describe()))

    async def _list(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, HTTPStatus.OK, orjson.dumps({"versions": self.versions.describe()}))

    async def _ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, HTTPStatus.OK, b"\n")

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Reads state only, never calls a model, so it answers while one predicts.
        faults = self.versions.faults()
        versions = (self.replicas or self.versions).describe()
        if not faults:
            await respond(
                send, HTTPStatus.OK, orjson.dumps({"status": "READY", "versions": versions})
            )
            return
        body = {"status": "UNHEALTHY", "message": " ".join(faults), "versions": versions}
        await respond(send, HTTPStatus.SERVICE_UNAVAILABLE, orjson.dumps(body), headers=RETRY_SOON)

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        # As `mlflow models serve` answers: the MLflow version, for clients that check it.
        await respond(send, HTTPStatus.OK, mlflow.__version__.encode())

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        text, content_type = metrics.exposition()
        await respond(send, HTTPStatus.OK, text, content_type.encode())


async def _parse(
    body: bytes, content_type: bytes | None, model: ServedModel
) -> protocol.ModelInput:
    args = (body, content_type.decode("latin-1") if content_type else None, model.spec)
    if len(body) <= PARSE_INLINE_BYTES:
        return protocol.parse(*args)
    return await asyncio.to_thread(protocol.parse, *args)


def create_app() -> ModelServer:
    """Factory the ASGI server calls in each worker process: load the model, then serve it."""
    settings = ServeSettings.from_env()
    versions = Versions(settings, tag_logs=False)
    versions.adopt(DEFAULT_VERSION, ServedModel.load(settings.model_uri, settings.local_path))
    log.info("Loaded %s; answering on /invocations.", settings.model_uri)
    return ModelServer(settings, versions, default=DEFAULT_VERSION, control=False)


def create_platform_app(secret: str = "") -> ModelServer:
    """Factory for a platform server: it starts empty and loads the versions it is told to.

    `secret`, if any, is what every request must carry (worker/server.py hands it over).
    """
    settings = ServeSettings.from_env()
    versions = Versions(settings, tag_logs=True)
    folder = os.environ.get(FOLDER_ENV)
    replicas = Replicas(Path(folder), versions, settings.workers) if folder else None
    return ModelServer(
        settings, versions, default=None, control=True, replicas=replicas, secret=secret
    )

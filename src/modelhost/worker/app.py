"""The model server's HTTP edge: a bare ASGI app, since every microsecond here is per request."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from http import HTTPStatus

import mlflow
import orjson

from modelhost.asgi import Receive, Scope, Send, respond
from modelhost.config import ServeSettings
from modelhost.errors import (
    MethodNotAllowed,
    ModelhostError,
    NotFound,
    PayloadTooLarge,
    Timeout,
)
from modelhost.worker import metrics, protocol
from modelhost.worker.batching import Batcher
from modelhost.worker.model import ServedModel

log = logging.getLogger("modelhost.worker")

# Bodies larger than this are parsed off the event loop so they do not stall other requests.
PARSE_INLINE_BYTES = 64 * 1024


class ModelServer:
    """Routes /invocations, /ping, /health, /version, /metadata and /metrics for one model."""

    def __init__(self, model: ServedModel, settings: ServeSettings) -> None:
        self.model = model
        self.settings = settings
        self.batcher: Batcher | None = None
        self._metadata = orjson.dumps(model.describe(), option=orjson.OPT_NON_STR_KEYS)
        self._routes = {
            ("POST", "/invocations"): self._invocations,
            ("GET", "/ping"): self._ping,
            ("GET", "/health"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/metadata"): self._describe,
            ("GET", "/metrics"): self._metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.batcher = Batcher(
                    self.model,
                    self.settings.max_batch_size,
                    self.settings.max_batch_delay_ms / 1000,
                    metrics.observe_predict,
                )
                self.batcher.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.batcher:
                    await self.batcher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get((scope["method"], scope["path"]))
        if route is None:
            known = {path for _, path in self._routes}
            if scope["path"] in known:
                error = MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}.")
            else:
                error = NotFound(
                    f"No route {scope['path']}. Score with POST /invocations; see GET /metadata."
                )
            await respond(send, error.status, error.body())
            return
        await route(scope, receive, send)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        assert self.batcher is not None, "lifespan startup has run"
        try:
            with self.batcher.arriving():
                headers = dict(scope["headers"])
                body = await _read_body(headers, receive, self.settings.max_body_bytes)
                model_input = await self._parse(body, headers.get(b"content-type"))
            async with asyncio.timeout(self.settings.timeout_s):
                answer = await self.batcher.score(model_input)
            status = HTTPStatus.OK
        except ModelhostError as e:
            status, answer = e.status, e.body()
            metrics.errors.labels(e.error_code).inc()
        except TimeoutError:
            error = Timeout(
                f"The model did not answer within {self.settings.timeout_s:g} s. Send fewer rows, "
                "or raise the limit with --timeout."
            )
            status, answer = error.status, error.body()
            metrics.errors.labels(error.error_code).inc()
        except Exception as e:  # a bug of ours or a library's: say so, keep serving
            log.exception("Scoring a request failed unexpectedly")
            error = ModelhostError(f"Scoring failed unexpectedly: {type(e).__name__}: {e}")
            status, answer = error.status, error.body()
            metrics.errors.labels(error.error_code).inc()
        await respond(send, status, answer)
        metrics.requests.labels(int(status)).inc()
        metrics.latency.observe(time.perf_counter() - started)

    async def _parse(self, body: bytes, content_type: bytes | None) -> protocol.ModelInput:
        args = (body, content_type.decode("latin-1") if content_type else None, self.model)
        if len(body) <= PARSE_INLINE_BYTES:
            return protocol.parse(*args)
        return await asyncio.to_thread(protocol.parse, *args)

    async def _ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, HTTPStatus.OK, b"\n")

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, HTTPStatus.OK, b'{"status": "READY"}')

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        # As `mlflow models serve` answers: the MLflow version, for clients that check it.
        await respond(send, HTTPStatus.OK, mlflow.__version__.encode())

    async def _describe(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, HTTPStatus.OK, self._metadata)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        text, content_type = metrics.exposition()
        await respond(send, HTTPStatus.OK, text, content_type.encode())


async def _read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    too_large = PayloadTooLarge(
        f"The body is larger than the limit of {limit} bytes. Send fewer rows per request, "
        "or raise the limit with --max-body-mb."
    )
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def create_app() -> ModelServer:
    """Factory the ASGI server calls in each worker process: load the model, then serve it."""
    settings = ServeSettings.from_env()
    model = ServedModel.load(settings.model_uri, settings.local_path)
    # What loading made lives as long as the process: keep it out of every garbage collection,
    # which would otherwise walk MLflow's and pandas' objects on the request path.
    gc.freeze()
    log.info("Loaded %s; answering on /invocations.", settings.model_uri)
    return ModelServer(model, settings)

"""Forward one HTTP request to an upstream server and stream its answer back, both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from modelhost.asgi import Receive, Scope, Send, respond
from modelhost.errors import NotReady, TooManyRequests

# Headers that describe one connection, not the message: never forwarded (RFC 9110, 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
# The caller's credentials, never passed to an upstream that has its own (the registry's).
CALLER_CREDENTIALS = frozenset({b"authorization", b"cookie"})

CONNECTIONS = 256
# Bodies up to this size are read whole before a connection upstream is taken, so a client
# that sends its (small) JSON slowly holds none; larger ones (artifacts) are streamed.
BUFFERED_BODY_BYTES = 1024 * 1024


class ClientDisconnected(Exception):
    """The client went away before its whole request body arrived."""


class Upstream:
    """One upstream server, reached over a pool of kept-alive connections.

    `bearer`: sent as `Authorization: Bearer ...` in place of the caller's credentials.
    `max_per_client`: requests one client address may have in flight here at once; more get 429.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 300.0,
        *,
        bearer: str | None = None,
        max_per_client: int = CONNECTIONS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_per_client = max_per_client
        self._credentials = (
            ((b"authorization", f"Bearer {bearer}".encode()),) if bearer is not None else None
        )
        self._in_flight: dict[str, int] = {}  # by client address
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str | None = None,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Send the request upstream as it arrives (to `path`, else its own); stream it back."""
        client = scope.get("client")
        address = client[0] if client else ""
        held = self._in_flight.get(address, 0)
        if held >= self.max_per_client:
            error = TooManyRequests(
                f"This address has {held} requests to the registry in flight, its share of the "
                "gateway's connections; wait for some to finish and send again."
            )
            await respond(send, error.status, error.body(), headers=((b"retry-after", b"1"),))
            return
        self._in_flight[address] = held + 1
        try:
            await self._forward(scope, receive, send, path, extra_headers)
        except ClientDisconnected:
            pass  # nobody to answer; the server's protocol logs the aborted request once
        finally:
            if (left := self._in_flight[address] - 1) > 0:
                self._in_flight[address] = left
            else:
                del self._in_flight[address]

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str | None,
        extra_headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        url = self.base_url + (path or scope["raw_path"].decode("latin-1"))
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = self._headers(scope["headers"])
        content: bytes | AsyncIterator[bytes]
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) <= BUFFERED_BODY_BYTES:
            content = b"".join([chunk async for chunk in _body(receive)])
        else:
            content = _body(receive)
        request = self._client.build_request(scope["method"], url, headers=headers, content=content)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as e:
            await _unavailable(send, f"{self.base_url} did not answer: {e}")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        *((k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP),
                        *extra_headers,
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    def _headers(self, received: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if self._credentials is None:
            # The caller's Authorization is the registry's own to judge; cookies are the
            # gateway's (a browser's modelhost session) and never leave it.
            return [(k, v) for k, v in received if k not in HOP_BY_HOP and k != b"cookie"]
        kept = [(k, v) for k, v in received if k not in HOP_BY_HOP and k not in CALLER_CREDENTIALS]
        return [*kept, *self._credentials]


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Ends the upstream request too, rather than sending it a truncated body.
            raise ClientDisconnected
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body", False):
            return


async def _unavailable(send: Send, message: str) -> None:
    error = NotReady(message)
    await respond(send, error.status, error.body(), headers=((b"retry-after", b"5"),))

"""Forward one HTTP request to an upstream server and stream its answer back, both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from modelhost.asgi import Receive, Scope, Send, respond
from modelhost.errors import NotReady

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


class Upstream:
    """One upstream server, reached over a pool of kept-alive connections."""

    def __init__(self, base_url: str, timeout_s: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
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
        url = self.base_url + (path or scope["raw_path"].decode("latin-1"))
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        request = self._client.build_request(
            scope["method"], url, headers=headers, content=_body(receive)
        )
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


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body", False):
            return


async def _unavailable(send: Send, message: str) -> None:
    error = NotReady(message)
    await respond(send, error.status, error.body(), headers=((b"retry-after", b"5"),))

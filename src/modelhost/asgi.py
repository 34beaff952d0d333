"""The little of ASGI that modelhost's HTTP edges share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from modelhost.errors import InvalidInput, MethodNotAllowed, PayloadTooLarge

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_TYPE = b"application/json"


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON_TYPE,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Send a whole response: status, content type and length, then the body."""
    await send(
        {
            "type": "http.response.start",
            "status": int(status),
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def refuse_method(send: Send, scope: Scope, allowed: Iterable[str]) -> None:
    """405 for a route that exists but not with this method, with the `Allow` RFC 9110 asks for."""
    allow = ", ".join(allowed)
    error = MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}; use {allow}.")
    await respond(send, error.status, error.body(), headers=((b"allow", allow.encode()),))


async def read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    """The whole request body; PayloadTooLarge past `limit` bytes, before reading it all."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The body is larger than the limit of {limit} bytes. Send fewer rows per request, "
        "or raise the limit with --max-body-mb."
    )


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (an empty body is an empty one)."""
    try:
        document = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidInput("The body is not JSON: send a JSON object.") from None
    if not isinstance(document, dict):
        raise InvalidInput("Send a JSON object.")
    return document


async def held(app, scope: Scope, receive: Receive) -> tuple[int, list, bytes]:
    """Run `app` and keep its whole answer: status, headers and body."""
    start: dict = {}
    chunks: list[bytes] = []

    async def keep(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    return start.get("status", 500), list(start.get("headers", [])), b"".join(chunks)


async def no_body() -> dict[str, Any]:
    """A receive for a request made here, with no body."""
    return {"type": "http.request", "body": b"", "more_body": False}

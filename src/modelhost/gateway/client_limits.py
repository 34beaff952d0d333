"""uvicorn's httptools protocol with limits, so a slow or bloated client costs only itself.

uvicorn bounds neither the size of a request's head nor the time its head and body take to
arrive. Here a head larger than `max_header_bytes` or with more than `max_headers` fields gets
431; a head not whole within `header_timeout_s` of the connection (or of its first byte, for
the next request on a kept-alive one) gets 408, and so does a body not whole within
`body_timeout_s` of its head, a limit that grows with what arrives (`body_min_bytes_per_s`, as
Apache's mod_reqtimeout) so a large upload on a slow link still gets through. Every request a
client abandons or that is cut off here is logged as one line.

A request that arrives whole in one read (nearly every scoring request) arms no timer: the cost
on that path is a few attribute checks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelhost.errors import HeadersTooLarge, ModelhostError, RequestTimeout
from modelhost.gateway.writes import OneWrite

log = logging.getLogger("modelhost.gateway")


@dataclass(frozen=True)
class ClientLimits:
    """What one request may take of the gateway: head size, fields, time to arrive."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    body_min_bytes_per_s: int = 64 * 1024

    def protocol(self) -> functools.partial[LimitedHttpProtocol]:
        """What uvicorn's `http=` takes: it makes one protocol per connection."""
        return functools.partial(LimitedHttpProtocol, limits=self)


class Phase(Enum):
    """Where the current request of a connection is."""

    IDLE = 1  # none begun: a new connection, or the last request arrived whole
    HEAD = 2
    BODY = 3


# Looked up on every request: a module global costs a tenth of an Enum's class attribute.
IDLE, HEAD, BODY = Phase.IDLE, Phase.HEAD, Phase.BODY


class _Refused(Exception):
    """Stops the parser from inside one of its callbacks; the answer is in `_refusal`."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """One connection, with its current request's head and body held to `ClientLimits`."""

    def __init__(self, *args: Any, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._max_headers = limits.max_headers
        self._max_header_bytes = limits.max_header_bytes
        self._phase = IDLE
        self._head_bytes = 0  # of the current head received so far, while it is incomplete
        self._reading = 0  # bytes in the read being parsed
        self._body_bytes = 0
        self._body_since = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._refusal: ModelhostError | None = None
        self._closed_here = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Also for a connection that never sends a byte.
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if not self._closed_here:
            if self._phase is not IDLE:
                self._log_end("went away before sending its whole request")
            elif self.cycle is not None and not self.cycle.response_complete:
                self._log_end("went away before its answer was sent")
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but a refusal of ours is answered with its status, not a 400.
        self._unset_keepalive_if_required()
        self._reading = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade:
            self._cancel_deadline()  # the connection is no longer HTTP's
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # What is still on its way after this read: bound its size and its time.
        phase = self._phase
        if phase is HEAD:
            self._head_bytes += len(data)  # buffered by the parser until the head is whole
            if self._head_bytes > self._max_header_bytes:
                self._refuse(self._too_large())
            elif self._deadline is None:
                self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)
        elif phase is BODY:
            if self._body_since == 0.0:  # the body's first read: its time starts
                self._cancel_deadline()
                self._body_bytes = 0
                self._body_since = self.loop.time()
                self._deadline = self.loop.call_later(self.limits.body_timeout_s, self._too_slow)
            self._body_bytes += len(data)

    # Parser callbacks: each request passes here, so they do as little as they can.

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._phase = HEAD
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        # Only a head that came in more bytes than the limit can be over it: sum only then.
        if len(self.headers) > self._max_headers or (
            self._head_bytes + self._reading > self._max_header_bytes
            and len(self.url) + sum(len(k) + len(v) for k, v in self.headers)
            > self._max_header_bytes
        ):
            self._refusal = self._too_large()
            raise _Refused
        self._phase = BODY
        HttpToolsProtocol.on_headers_complete(self)
        if self.cycle is not None:  # the answer's head and body go out in one write
            self.cycle.transport = OneWrite(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._phase = IDLE
        if self._deadline is not None:  # the request took more than one read
            self._cancel_deadline()
            self._body_since = 0.0
        HttpToolsProtocol.on_message_complete(self)

    # Refusals

    def _too_large(self) -> HeadersTooLarge:
        limits = self.limits
        return HeadersTooLarge(
            f"The request's headers are larger than {limits.max_header_bytes} bytes or more "
            f"than {limits.max_headers} fields: send fewer or shorter ones."
        )

    def _too_slow(self) -> None:
        self._deadline = None
        limits = self.limits
        if self._phase is BODY:
            # The limit grows with what arrived, so a large body sent steadily gets through.
            waited = self.loop.time() - self._body_since
            allowed = limits.body_timeout_s + self._body_bytes / limits.body_min_bytes_per_s
            if waited < allowed:
                self._deadline = self.loop.call_later(allowed - waited, self._too_slow)
                return
            message = (
                f"The request's body did not arrive within {limits.body_timeout_s:g} s, plus "
                f"1 s for each {limits.body_min_bytes_per_s // 1024} KiB received: send it "
                "faster (the server's --body-timeout sets the time)."
            )
        else:
            if self.cycle is not None and not self.cycle.response_complete:
                # A pipelined head waits for the answer before it; that wait is not the client's.
                self._deadline = self.loop.call_later(limits.header_timeout_s, self._too_slow)
                return
            message = (
                f"The request's headers did not arrive within {limits.header_timeout_s:g} s: "
                "send them at once (the server's --header-timeout sets the time)."
            )
        self._refuse(RequestTimeout(message))

    def _refuse(self, error: ModelhostError) -> None:
        """Answer `error` (unless an answer has begun), close, and log it as one line."""
        self._cancel_deadline()
        self._closed_here = True
        cycle = self.cycle
        if cycle is not None and (
            (cycle.response_started and not cycle.response_complete)
            or (self._phase is BODY and cycle.response_complete)
        ):
            # An answer has begun, or this request has had its own: all that is left is to close.
            self._log_end(f"closed: {error.message}")
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.close()
            return
        self._log_end(f"answered {int(error.status)} and closed: {error.message}")
        if cycle is not None and not cycle.response_complete:
            # The app holds this request: its receive() now says the client is gone, and what
            # it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        body = error.body()
        head = [STATUS_LINE[error.status]]
        defaults = self.server_state.default_headers  # the Date header
        head.extend(name + b": " + value + b"\r\n" for name, value in defaults)
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _log_end(self, what: str) -> None:
        host, port = self.client or ("unknown", 0)
        request = ""
        if self._phase is not HEAD and self.scope is not None and "path" in self.scope:
            request = f" {self.scope['method']} {self.scope['path']}"
        log.info("%s:%s%s %s", host, port, request, what)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

"""Kept-alive HTTP/1.1 connections to one model server replica: the scoring path's only hop.

Every scoring request crosses the gateway, so this does the least it can: one write per
exchange, httptools (uvicorn's own parser) to read the answer, and idle connections reused. The
scoring requests for one version that arrive in the same pass of the event loop go as one pack
(`modelhost.packing`): one exchange for the crowd, handed to the server's batcher at once. It
speaks only to modelhost's model servers, which answer every request with a Content-Length, so
it needs none of a general client's features (redirects, cookies, TLS, compression, proxies).
The registry's traffic goes through `proxy.Upstream` instead.

A replica on this machine is reached over its Unix socket; one on a cluster node over TCP, each
request carrying the secret that replica was started with (`authorization: Bearer`, in bytes
made once). The pool counts its scoring requests in flight, so the gateway can send the next
one to the least busy replica of a server.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass
from itertools import zip_longest
from typing import cast

import httptools

from modelhost import packing
from modelhost.control.routes import Replica
from modelhost.errors import ModelhostError


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


CONNECT_TIMEOUT_S = 1.0  # to a replica on a cluster node


class UpstreamClosed(ConnectionError):
    """The model server closed the connection, or could not be reached."""


class Unreachable(UpstreamClosed):
    """No connection to the model server could be opened: the request never reached it."""


class _Connection(asyncio.Protocol):
    """One connection; it carries one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[Response] | None = None
        self.received = False  # any byte of the current answer came back
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._keep_alive = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(UpstreamClosed("The model server closed the connection."))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamClosed(f"The model server answered what is not HTTP: {e}"))
            self.close()

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name != b"date":  # the gateway's server dates its own answers
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        # httptools forgets this once the message is done: ask while it still knows.
        self._keep_alive = self._parser.should_keep_alive()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(Response(self._status, self._headers, b"".join(self._body)))

    def send(self, request: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.received = False
        self._headers, self._body = [], []
        self.transport.write(request)
        return self.answer

    def reusable(self) -> bool:
        return self.transport is not None and self._keep_alive

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)


@dataclass(slots=True)
class _Waiting:
    """A scoring request held for the next pack."""

    content_type: bytes
    body: bytes
    answer: asyncio.Future[Response]


class ConnectionPool:
    """Connections to one replica of a model server, opened as needed and kept while idle."""

    def __init__(self, replica: Replica, max_idle: int = 128) -> None:
        self.replica = replica
        self.max_idle = max_idle
        self.in_flight = 0  # scoring requests sent or waiting to be, not yet answered
        # Where it is, for messages: never its secret.
        self.address = replica.socket or f"{replica.host}:{replica.port}"
        # What every request's head carries after its request line.
        self._head = b"host: model-server\r\n"
        if replica.secret:
            self._head += b"authorization: Bearer %s\r\n" % replica.secret.encode("latin-1")
        self._idle: deque[_Connection] = deque()
        self._waiting: dict[tuple[str, float], list[_Waiting]] = {}  # by (version, timeout)
        self._sending: set[asyncio.Future[None]] = set()

    async def score(
        self, version: str, content_type: bytes, body: bytes, timeout_s: float
    ) -> Response:
        """The model server's answer to one scoring request for `version`.

        Raises UpstreamClosed, or TimeoutError past `timeout_s`. A small request waits for the
        end of this pass of the event loop, then goes with every other that came meanwhile.
        """
        self.in_flight += 1
        try:
            if len(body) > packing.MAX_BODY_BYTES:
                return await self._alone(version, content_type, body, timeout_s)
            answer = asyncio.get_running_loop().create_future()
            key = (version, timeout_s)
            waiting = self._waiting.get(key)
            if waiting is None:
                waiting = self._waiting[key] = []
                asyncio.get_running_loop().call_soon(self._send_waiting, key)
            waiting.append(_Waiting(content_type, body, answer))
            return await answer
        finally:
            self.in_flight -= 1

    def _send_waiting(self, key: tuple[str, float]) -> None:
        waiting = self._waiting.pop(key)
        version, timeout_s = key
        for start in range(0, len(waiting), packing.MAX_REQUESTS):
            part = waiting[start : start + packing.MAX_REQUESTS]
            task = asyncio.ensure_future(self._send(version, part, timeout_s))
            self._sending.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._sending.discard)

    async def _send(self, version: str, waiting: list[_Waiting], timeout_s: float) -> None:
        """One exchange for `waiting`; every answer or failure goes to its request's future."""
        answers: list[Response] = []
        error: Exception = UpstreamClosed("The exchange with the model server was cut short.")
        try:
            if len(waiting) == 1:
                one = waiting[0]
                answers = [await self._alone(version, one.content_type, one.body, timeout_s)]
            else:
                answers = await self._packed(version, waiting, timeout_s)
        except (UpstreamClosed, TimeoutError) as e:
            error = e
        finally:  # whatever happened, no request is left waiting
            for request, answer in zip_longest(waiting, answers):
                if request.answer.done():  # its caller left
                    continue
                if answer is None:
                    request.answer.set_exception(error)
                else:
                    request.answer.set_result(answer)

    async def _alone(
        self, version: str, content_type: bytes, body: bytes, timeout_s: float
    ) -> Response:
        headers = [(b"content-type", content_type)] if content_type else []
        async with asyncio.timeout(timeout_s):
            return await self.request("POST", f"/versions/{version}/invocations", headers, body)

    async def _packed(
        self, version: str, waiting: list[_Waiting], timeout_s: float
    ) -> list[Response]:
        pack = packing.pack_requests([(w.content_type, w.body) for w in waiting])
        headers = [(b"content-type", packing.CONTENT_TYPE)]
        async with asyncio.timeout(timeout_s):
            answer = await self.request(
                "POST", f"/versions/{version}/packed-invocations", headers, pack
            )
        try:
            if answer.status != 200:
                raise ModelhostError(answer.body.decode(errors="replace"))
            answers = packing.unpack_answers(answer.body)
            if len(answers) != len(waiting):
                raise ModelhostError(f"{len(answers)} answers to {len(waiting)} requests")
        except ModelhostError as e:
            raise UpstreamClosed(f"The model server answered a pack wrongly: {e.message}") from None
        return [
            Response(status, _headers(len(body), retry_after), body)
            for status, retry_after, body in answers
        ]

    async def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        """Send one request and read its whole answer; raises UpstreamClosed."""
        head = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._head]
        head.extend(b"%s: %s\r\n" % pair for pair in headers)
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        request = b"".join([*head, body])
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is None:
                continue
            try:
                return await self._exchange(connection, request)
            except UpstreamClosed:
                # The server may close an idle connection just as it is reused: if nothing
                # came back, the request never reached it, so send it again on a fresh one.
                if connection.received:
                    raise
        return await self._exchange(await self._open(), request)

    async def _exchange(self, connection: _Connection, request: bytes) -> Response:
        try:
            response = await connection.send(request)
        except BaseException:
            connection.close()  # an answer may still be on its way: never reuse it
            raise
        if connection.reusable() and len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        replica = self.replica
        try:
            if replica.socket:
                _, connection = await loop.create_unix_connection(_Connection, replica.socket)
            else:
                # A node that is gone answers nothing at all: give up soon, for another replica.
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    transport, connection = await loop.create_connection(
                        _Connection, replica.host, replica.port
                    )
                # Each request is one write: send it now, not after the last one's ACK.
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, TimeoutError) as e:
            message = f"The model server at {self.address} did not answer: {e or 'no answer'}"
            raise Unreachable(message) from None
        return connection

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _headers(length: int, retry_after: int) -> list[tuple[bytes, bytes]]:
    """An answer's headers, as the model server would have sent it alone."""
    headers = [(b"content-type", packing.JSON), (b"content-length", b"%d" % length)]
    if retry_after:
        headers.append((b"retry-after", b"%d" % retry_after))
    return headers

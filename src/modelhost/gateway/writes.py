"""Writes of one answer that go out as one, so a scoring answer costs the gateway one syscall.

uvicorn writes an answer's head when the app starts it and its body when the app sends it, and
uvloop sends each write at once: two syscalls per answer, and on loopback two wake-ups of the
client. Held until the next write or the end of the event loop's pass, they leave as one.
"""

from __future__ import annotations

import asyncio


class OneWrite:
    """A response's transport whose writes in one pass of the event loop go out as one."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.writelines((self._held, data))
            self._held = None

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._flush()
        self._transport.close()

"""Scoring requests that arrive together, sent to a model server in one exchange.

Under a crowd, the gateway holds many requests for one version at once. Sending each over its
own upstream request costs a write, a read and an HTTP parse on both sides, and hands them to
the model server's batcher one by one; a pack carries them all in one body, and the server
answers them all in one. Each request in a pack is still parsed, scored and answered alone,
so a bad one fails only itself.

A pack of requests is, for each: the content type's length (4 bytes, big-endian), the content
type, the body's length, the body. A pack of answers is, for each: the status (2 bytes), the
`Retry-After` seconds (2 bytes, 0 for none), the body's length and the body (JSON, as every
answer of a model server is).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from modelhost.errors import InvalidInput

CONTENT_TYPE = b"application/vnd.modelhost.pack"
JSON = b"application/json"  # what every answer in a pack is
# How much a pack may hold, in bodies and bytes; larger bodies travel alone.
MAX_REQUESTS = 128
MAX_BODY_BYTES = 64 * 1024
MAX_PACK_BYTES = MAX_REQUESTS * (MAX_BODY_BYTES + 1024)

_LENGTH = struct.Struct(">I")
_HEAD = struct.Struct(">HH")


def pack_requests(requests: Sequence[tuple[bytes, bytes]]) -> bytes:
    """(content type, body) pairs as one pack."""
    parts = []
    for content_type, body in requests:
        parts += (_LENGTH.pack(len(content_type)), content_type, _LENGTH.pack(len(body)), body)
    return b"".join(parts)


def unpack_requests(pack: bytes) -> list[tuple[bytes, bytes]]:
    """The (content type, body) pairs of a pack; InvalidInput if it is cut short."""
    requests = []
    view = memoryview(pack)
    at = 0
    while at < len(pack):
        content_type, at = _field(view, at)
        body, at = _field(view, at)
        requests.append((content_type, body))
    return requests


def pack_answers(answers: Sequence[tuple[int, int, bytes]]) -> bytes:
    """(status, retry-after seconds, body) triples as one pack."""
    parts = []
    for status, retry_after, body in answers:
        parts += (_HEAD.pack(status, retry_after), _LENGTH.pack(len(body)), body)
    return b"".join(parts)


def unpack_answers(pack: bytes) -> list[tuple[int, int, bytes]]:
    """The (status, retry-after seconds, body) triples of a pack; InvalidInput if cut short."""
    answers = []
    view = memoryview(pack)
    at = 0
    while at < len(pack):
        if at + _HEAD.size > len(pack):
            raise InvalidInput("The pack ends inside an answer's head.")
        status, retry_after = _HEAD.unpack_from(view, at)
        body, at = _field(view, at + _HEAD.size)
        answers.append((status, retry_after, body))
    return answers


def _field(view: memoryview, at: int) -> tuple[bytes, int]:
    """The length-prefixed field at `at`, and where the next one starts."""
    end = at + _LENGTH.size
    if end > len(view):
        raise InvalidInput("The pack ends inside a field's length.")
    (length,) = _LENGTH.unpack_from(view, at)
    if end + length > len(view):
        raise InvalidInput("The pack ends inside a field.")
    return bytes(view[end : end + length]), end + length

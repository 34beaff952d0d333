"""The Serving page's files: `/`, `/models/<name>` and `/static/<file>`, from the package.

The page is public (the data behind it is not): its routes answer GET and HEAD without a
credential. Files are read once and answered from memory with an ETag, so a browser asks again
cheaply (`no-cache`) and never runs a stale script after an upgrade.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from pathlib import Path

from modelhost.asgi import Scope, Send, refuse_method, respond
from modelhost.errors import NotFound

UI = Path(__file__).parent / "ui"
STATIC = "/static/"
MODEL_PAGES = "/models/"
STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a file of ui/static, never a path
TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".txt": b"text/plain; charset=utf-8",
    ".LICENSE": b"text/plain; charset=utf-8",
}
# Scripts, styles and images only from the gateway itself; no other site may frame the page.
SECURITY = (
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes


def is_page(path: str) -> bool:
    """Whether the page's files answer `path` (GET and HEAD, open to all)."""
    return path == "/" or path.startswith((MODEL_PAGES, STATIC))


async def serve(scope: Scope, send: Send) -> None:
    """Answer one of the page's routes."""
    if scope["method"] not in ("GET", "HEAD"):
        await refuse_method(send, scope, ("GET", "HEAD"))
        return
    asset = _assets().get(_file_of(scope["path"]))
    if asset is None:
        error = NotFound(f"No file {scope['path']}: the page's files are under {STATIC}.")
        await respond(send, error.status, error.body())
        return
    headers = [*SECURITY, (b"etag", asset.etag), (b"cache-control", b"no-cache")]
    if dict(scope["headers"]).get(b"if-none-match") == asset.etag:
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["method"] == "HEAD":
        length = (b"content-length", str(len(asset.body)).encode())
        headers += [(b"content-type", asset.content_type), length]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await respond(send, HTTPStatus.OK, asset.body, asset.content_type, tuple(headers))


def _file_of(path: str) -> str:
    """The file under ui/ that answers `path`: every page is index.html, its script reads the
    path; "" for a name that is not a file of ui/static."""
    if not path.startswith(STATIC):
        return "index.html"
    name = path.removeprefix(STATIC)
    return f"static/{name}" if STATIC_NAME.fullmatch(name) else ""


@cache
def _assets() -> dict[str, Asset]:
    """Every file of the page, by its path under ui/, read once."""
    assets = {}
    for file in UI.rglob("*"):
        content_type = TYPES.get(file.suffix)
        if content_type is not None and file.is_file():
            body = file.read_bytes()
            etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'.encode()
            assets[file.relative_to(UI).as_posix()] = Asset(body, content_type, etag)
    return assets

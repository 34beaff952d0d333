"""Whether a request that changes something comes from the gateway's own pages.

Browsers attach cookies (and cached Basic credentials) to requests another site makes them
send, so a change signed in that way must prove it comes from this origin: `Sec-Fetch-Site:
same-origin`, or an `Origin` whose host is the one the request was sent to. Page scripts cannot
forge either header. Clients that are not browsers (curl, MLflow's client) send neither, and
sign in with a header no other site can make a browser send.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from modelhost.asgi import Scope

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CROSS_SITE = (
    "This request comes from a page of another site (its Origin or Sec-Fetch-Site says so); "
    "modelhost takes changes only from its own pages and from clients that are not browsers."
)


def changes(scope: Scope) -> bool:
    return scope["method"] not in SAFE_METHODS


def cross_site(scope: Scope) -> bool:
    """The browser says the request comes from another origin."""
    fetch_site, origin, host = _headers(scope)
    if fetch_site is not None:
        return fetch_site not in (b"same-origin", b"none")
    return origin is not None and not _same_host(origin, host)


def same_origin(scope: Scope) -> bool:
    """The browser says the request comes from a page of this origin."""
    fetch_site, origin, host = _headers(scope)
    if fetch_site is not None:
        return fetch_site == b"same-origin"
    return origin is not None and _same_host(origin, host)


def _headers(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    fetch_site = origin = host = None
    for key, value in scope["headers"]:
        if key == b"sec-fetch-site":
            fetch_site = value.strip().lower()
        elif key == b"origin":
            origin = value.strip()
        elif key == b"host":
            host = value.strip().lower()
    return fetch_site, origin, host


def _same_host(origin: bytes, host: bytes | None) -> bool:
    """`Origin: scheme://host[:port]` names the host the request was sent to (`null`: never)."""
    if host is None:
        return False
    try:
        parts = urlsplit(origin.decode("latin-1").lower())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.encode() == host and not parts.path

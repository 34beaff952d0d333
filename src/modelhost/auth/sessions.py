"""Browser sign-in: a session cookie that stands for a token, for the page and MLflow's UI.

A browser trades a token for a session once (`POST /api/2.0/modelhost/session`) and then sends
only the cookie. The cookie holds a new random id, never the token: the token stays out of the
browser's storage, a session is ended for good by signing out, and an id is never taken from
the caller (a planted cookie names no session), so sessions cannot be fixed in advance. Each
session remembers the hash of the token it came from, so revoking the token, or its expiry,
ends the session too. Sessions live in the gateway's memory: a restart signs browsers out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

COOKIE = "modelhost_session"
LIFETIME_S = 12 * 3600.0  # a working day: then the page asks for the token again
MAX_SESSIONS = 10_000  # past it, the oldest sessions end first
_SET = f"{COOKIE}={{}}; HttpOnly; SameSite=Strict; Path=/"
CLEARED = f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0".encode()


@dataclass(frozen=True)
class Session:
    principal: str
    token_hash: str  # of the token it was opened with
    ends_at: float


class Sessions:
    """Open sessions by the SHA-256 of their id: the ids themselves are kept nowhere."""

    def __init__(self, lifetime_s: float = LIFETIME_S) -> None:
        self.lifetime_s = lifetime_s
        self._open: dict[str, Session] = {}  # insertion order: oldest first

    def open(self, principal: str, token_hash: str, token_expires_at: float | None) -> str:
        """A new session's id, for the cookie."""
        if len(self._open) >= MAX_SESSIONS:
            del self._open[next(iter(self._open))]
        session_id = secrets.token_urlsafe(32)
        ends_at = time.time() + self.lifetime_s
        if token_expires_at is not None:
            ends_at = min(ends_at, token_expires_at)
        self._open[_digest(session_id)] = Session(principal, token_hash, ends_at)
        return session_id

    def find(self, session_id: str) -> Session | None:
        digest = _digest(session_id)
        session = self._open.get(digest)
        if session is not None and session.ends_at <= time.time():
            del self._open[digest]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._open.pop(_digest(session_id), None)


def set_cookie(session_id: str) -> bytes:
    """The Set-Cookie value: no Max-Age or Expires, so it ends with the browser session."""
    return _SET.format(session_id).encode()


def session_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The session id a request's Cookie headers carry, if any."""
    for key, value in headers:
        if key != b"cookie" or COOKIE.encode() not in value:
            continue
        try:
            cookies = SimpleCookie(value.decode("latin-1"))
        except CookieError:
            continue
        if COOKIE in cookies and cookies[COOKIE].value:
            return cookies[COOKIE].value
    return None


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()

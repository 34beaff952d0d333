"""Browser sign-in: a session cookie that stands for a token, for the page and MLflow's UI.

A browser trades a token for a session once (`POST /api/2.0/modelhost/session`) and then sends
only the cookie. The cookie holds a new random id, never the token: the token stays out of the
browser's storage, a session is ended for good by signing out, and an id is never taken from
the caller (a planted cookie names no session), so sessions cannot be fixed in advance. Each
session remembers the hash of the token it came from, so revoking the token, or its expiry,
ends the session too.

Sessions live in the state database, so that every node behind a load balancer knows them; a
node keeps those it has met in memory, and forgets them all when the auth counter moves (a
sign-out on any node moves it), then reads each again as it is next sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

import sqlalchemy as sa

from modelhost.control.store import AUTH, moved

COOKIE = "modelhost_session"
LIFETIME_S = 12 * 3600.0  # a working day: then the page asks for the token again
MAX_SESSIONS = 10_000  # past it, the oldest sessions end first
_SET = f"{COOKIE}={{}}; HttpOnly; SameSite=Strict; Path=/"
CLEARED = f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0".encode()

metadata = sa.MetaData()
rows = sa.Table(
    "sessions",
    metadata,
    sa.Column("digest", sa.String, primary_key=True),  # SHA-256 of the id: ids are kept nowhere
    sa.Column("principal", sa.String, nullable=False),
    sa.Column("token_hash", sa.String, nullable=False),
    sa.Column("ends_at", sa.Float, nullable=False, index=True),
)


@dataclass(frozen=True)
class Session:
    principal: str
    token_hash: str  # of the token it was opened with
    ends_at: float


class Sessions:
    def __init__(self, engine: sa.Engine, lifetime_s: float = LIFETIME_S) -> None:
        self.engine = engine
        self.lifetime_s = lifetime_s
        self._known: dict[str, Session] = {}  # by digest: those met on this node

    def open(self, principal: str, token_hash: str, token_expires_at: float | None) -> str:
        """A new session's id, for the cookie."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        ends_at = now + self.lifetime_s
        if token_expires_at is not None:
            ends_at = min(ends_at, token_expires_at)
        session = Session(principal, token_hash, ends_at)
        with self.engine.begin() as db:
            db.execute(rows.delete().where(rows.c.ends_at <= now))
            held = db.execute(sa.select(sa.func.count()).select_from(rows)).scalar_one()
            if held >= MAX_SESSIONS:
                oldest = sa.select(rows.c.digest).order_by(rows.c.ends_at)
                db.execute(
                    rows.delete().where(rows.c.digest.in_(oldest.limit(held + 1 - MAX_SESSIONS)))
                )
            db.execute(rows.insert().values(digest=_digest(session_id), **vars(session)))
        self._remember(_digest(session_id), session)
        return session_id

    async def find(self, session_id: str) -> Session | None:
        """The open session of `session_id`, read from the database if this node has not met
        it (it was opened on another node)."""
        digest = _digest(session_id)
        session = self._known.get(digest)
        if session is None:
            session = await asyncio.to_thread(self._read, digest)
            if session is None:
                return None
            self._remember(digest, session)
        if session.ends_at <= time.time():
            self._known.pop(digest, None)
            return None
        return session

    def close(self, session_id: str) -> None:
        """End it on every node: the counter moves, so each forgets what it knew."""
        digest = _digest(session_id)
        with self.engine.begin() as db:
            if db.execute(rows.delete().where(rows.c.digest == digest)).rowcount:
                moved(db, AUTH)
        self._known.pop(digest, None)

    def forget(self) -> None:
        """Drop what this node knew: something changed on another node."""
        self._known = {}

    def _read(self, digest: str) -> Session | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(rows).where(rows.c.digest == digest)).first()
        return None if row is None else Session(row.principal, row.token_hash, row.ends_at)

    def _remember(self, digest: str, session: Session) -> None:
        if len(self._known) >= MAX_SESSIONS:
            self._known = {}
        self._known[digest] = session


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

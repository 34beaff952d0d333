"""`/api/2.0/modelhost/session`: a browser signs in with a token, learns who it is, signs out.

GET answers without a credential (`"user": null` then: the page asks for a token). POST trades a
token for a session cookie (`auth/sessions.py`); a wrong token counts as a failed sign-in from
the caller's address, as a wrong Authorization header does. DELETE ends the session. Signing in
from another site's page is refused, so no site can sign a browser in as someone else.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import orjson

from modelhost.asgi import Receive, Scope, Send, json_object, read_body, refuse_method, respond
from modelhost.auth.access import Access
from modelhost.auth.limits import FailureLimiter, retry_after
from modelhost.auth.origin import CROSS_SITE, cross_site
from modelhost.auth.sessions import CLEARED, Sessions, session_id, set_cookie
from modelhost.auth.store import Principal
from modelhost.errors import (
    InvalidInput,
    ModelhostError,
    PermissionDenied,
    TooManyFailures,
    Unauthenticated,
)

SESSION_PATH = "/api/2.0/modelhost/session"
METHODS = ("GET", "POST", "DELETE")
BODY_LIMIT = 4096  # a token in JSON
NO_STORE = (b"cache-control", b"no-store")
BEARER_CHALLENGE = (b"www-authenticate", b'Bearer realm="modelhost"')  # never a Basic pop-up


class SessionAPI:
    def __init__(self, access: Access, sessions: Sessions, limiter: FailureLimiter) -> None:
        self.access = access
        self.sessions = sessions
        self.limiter = limiter

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, caller: Principal | None
    ) -> None:
        """`caller`: whoever the request's Authorization header or cookie signed in, if any."""
        method = scope["method"]
        if method not in METHODS:
            await refuse_method(send, scope, METHODS)
            return
        if method == "GET":
            # A cookie that names no session any more is cleared, so the page starts afresh.
            ended = caller is None and session_id(scope["headers"]) is not None
            await _answer(send, caller, CLEARED if ended else None)
            return
        if cross_site(scope):
            await _error(send, PermissionDenied(CROSS_SITE))
            return
        # Signing in or out ends the session the browser had: a new one gets a new id.
        if (held := session_id(scope["headers"])) is not None:
            await asyncio.to_thread(self.sessions.close, held)  # a database write
        if method == "DELETE":
            await _answer(send, None, CLEARED)
            return
        try:
            token = _token(await read_body(dict(scope["headers"]), receive, BODY_LIMIT))
        except ModelhostError as e:
            await _error(send, e)
            return
        record = self.access.token(token)
        principal = self.access.holder(record.hash) if record is not None else None
        if record is None or principal is None:
            await self._failed(scope, send)
            return
        opened = await asyncio.to_thread(
            self.sessions.open, principal.name, record.hash, record.expires_at
        )
        await _answer(send, principal, set_cookie(opened))

    async def _failed(self, scope: Scope, send: Send) -> None:
        client = scope.get("client")
        wait_s = self.limiter.failed(client[0] if client else "unknown")
        if wait_s > 0:
            error = TooManyFailures("Too many failed sign-ins from this address; wait and retry.")
            await _error(send, error, (b"retry-after", retry_after(wait_s)))
        else:
            error = Unauthenticated(
                "The token is unknown, revoked or expired. Ask an admin for one: "
                "`modelhost tokens create --user NAME`."
            )
            await _error(send, error, BEARER_CHALLENGE)


def shown(caller: Principal | None) -> dict:
    return {
        "auth": True,
        "user": caller.name if caller else None,
        "admin": bool(caller and caller.admin),
    }


def _token(body: bytes) -> str:
    token = json_object(body).get("token")
    if not isinstance(token, str) or not token.strip():
        raise InvalidInput('Send {"token": "<your modelhost token>"}.')
    return token.strip()


async def _answer(send: Send, caller: Principal | None, cookie: bytes | None = None) -> None:
    headers = (NO_STORE, *(((b"set-cookie", cookie),) if cookie else ()))
    await respond(send, HTTPStatus.OK, orjson.dumps(shown(caller)), headers=headers)


async def _error(send: Send, error: ModelhostError, *headers: tuple[bytes, bytes]) -> None:
    await respond(send, error.status, error.body(), headers=(NO_STORE, *headers))

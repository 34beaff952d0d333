"""What the page asks of the gateway under /api/2.0/modelhost/: a version's example, the metrics
series of a model's versions, and (with auth off) the session, a caller's level and the nodes.

With auth on, `auth/middleware.py` signs the caller in and checks READ on the model before these
run, and answers `session` and `models/permission` itself; with auth off everyone may do
everything, which is what those two say here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs

import orjson

from modelhost.asgi import Receive, Scope, Send, refuse_method, respond
from modelhost.errors import InvalidInput, ModelhostError, NotFound
from modelhost.gateway.examples import Examples
from modelhost.gateway.paths import MODELHOST_ROOT
from modelhost.gateway.series import Series

# Each route and its methods; the first two are answered by auth when it is on.
ROUTES = {"session": ("GET", "POST", "DELETE"), "models/permission": ("GET",),
          "models/example": ("GET",), "metrics/series": ("GET",), "nodes": ("GET",)}  # fmt: skip
OPEN_SESSION = {"auth": False, "user": None, "admin": True}
MODEL = "registered_model_name"


class PageAPI:
    def __init__(self, examples: Examples, series: Series, nodes: Callable[[], list[dict]]) -> None:
        self.examples = examples
        self.series = series
        self.nodes = nodes  # on a thread: every node of the state database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope["path"][len(MODELHOST_ROOT) :]
        methods = ROUTES.get(route)
        if methods is None:
            error = NotFound(
                f"No route {scope['path']}: users, tokens and grants exist only with auth on "
                "(`modelhost up --auth`)."
            )
            await respond(send, error.status, error.body())
            return
        if scope["method"] not in methods:
            await refuse_method(send, scope, methods)
            return
        try:
            answer = await self._answer(route, scope)
        except ModelhostError as e:
            await respond(send, e.status, e.body())
            return
        await respond(send, HTTPStatus.OK, orjson.dumps(answer))

    async def _answer(self, route: str, scope: Scope) -> dict:
        if route == "session":
            return OPEN_SESSION  # nothing to sign in to: no cookie is set or cleared
        if route == "nodes":
            return {"nodes": await asyncio.to_thread(self.nodes)}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = one(query, MODEL)
        if route == "models/permission":
            return {MODEL: name, "permission_level": "MANAGE"}
        if route == "models/example":
            return await self.examples.of_version(name, one(query, "version"))
        return {"interval_s": self.series.interval_s, "versions": self.series.of_model(name)}


def one(query: dict[str, list[str]], key: str) -> str:
    """The one value of `key` in a query; InvalidInput if it is missing or repeated."""
    values = query.get(key)
    if not values or not values[0]:
        raise InvalidInput(f"Pass ?{key}=<value>.")
    if len(values) > 1:
        raise InvalidInput(f"Pass '{key}' once.")
    return values[0]

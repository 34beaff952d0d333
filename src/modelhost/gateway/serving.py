"""The serving control API, in the shape scripts for the managed legacy service use."""

from __future__ import annotations

import asyncio
import os
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

import orjson

from modelhost import logs
from modelhost.asgi import Receive, Scope, Send, read_body, refuse_method, respond
from modelhost.auth import ACTOR
from modelhost.control import settings as serving_settings
from modelhost.control.routes import EndpointState
from modelhost.control.serving import ServingControl
from modelhost.errors import InvalidInput, ModelhostError, NotFound, NotReady

LOG_LINES = 2000  # the tail of a model server's log that `logs` returns
LOG_BYTES = 8 * 1024 * 1024  # read from the end of the log, to find those lines in
BODY_LIMIT = 512 * 1024  # a name and the settings (up to 50 tags of 5000 characters)
# Each action and the one method it takes.
ACTIONS = {"enable": "POST", "disable": "POST", "update-settings": "POST", "get-status": "GET",
           "list": "GET", "list-versions": "GET", "events": "GET", "logs": "GET"}  # fmt: skip


class ServingAPI:
    """enable, disable, update-settings, get-status, list, list-versions, events and logs.

    `logs` returns the tail of the model server's log, which every version of the model shares
    (its loading output and tracebacks), or with `endpoint_version_name` the lines about that
    version.
    """

    def __init__(self, control: ServingControl) -> None:
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send, action: str) -> None:
        method = ACTIONS.get(action)
        if method is not None and scope["method"] != method:
            await refuse_method(send, scope, (method,))
            return
        try:
            body = await self._dispatch(scope, receive, action)
        except ModelhostError as e:
            headers = ((b"retry-after", b"1"),) if isinstance(e, NotReady) else ()
            await respond(send, e.status, e.body(), headers=headers)
            return
        await respond(send, HTTPStatus.OK, orjson.dumps(body))

    async def _dispatch(self, scope: Scope, receive: Receive, action: str) -> dict:
        method = scope["method"]
        control = self.control
        if method == "POST" and action in ("enable", "disable", "update-settings"):
            name, fields = await self._name_from_body(scope, receive)
            actor = scope.get(ACTOR)  # who asked, once signed in: an audit event
            if action == "enable":
                await control.enable(name, serving_settings.parse(fields), actor)
            elif action == "update-settings":
                await control.update_settings(name, serving_settings.parse(fields), actor)
            else:
                await control.disable(name, actor)
            return {}
        if method != "GET":
            raise NotFound(f"No route {method} {scope['path']}.")
        query = parse_qs(scope.get("query_string", b"").decode())
        if action == "list":
            served = await control.served()
            return {
                "endpoints": [self._status(n, settings.to_json()) for n, settings in served.items()]
            }
        name = _one(query, "registered_model_name")
        settings = await control.must_be_served(name)
        if action == "get-status":
            return {"endpoint_status": self._status(name, settings.to_json())}
        if action == "list-versions":
            routes = control.routes.models.get(name)
            versions = routes.versions if routes else {}
            return {
                "endpoint_versions": [
                    {
                        "registered_model_name": name,
                        "endpoint_version_name": version,
                        "state": route.state.value,
                        "state_message": route.message,
                        "stages": list(route.stages),
                        "aliases": list(route.aliases),
                    }
                    for version, route in sorted(versions.items(), key=lambda item: int(item[0]))
                ]
            }
        if action == "events":
            return {"events": await control.events(name)}
        if action == "logs":
            version = query.get("endpoint_version_name", [None])[0]
            return {"logs": await asyncio.to_thread(_tail, control.log_path(name), version)}
        raise NotFound(f"No serving action {action!r}.")

    def _status(self, name: str, settings: dict) -> dict:
        routes = self.control.routes.models.get(name)
        return {
            "registered_model_name": name,
            "state": (routes.state if routes else EndpointState.PENDING).value,
            "state_message": routes.message if routes else "Starting the model server.",
            "settings": settings,
            "served_versions": len(routes.versions) if routes else 0,
            "engine": self.control.engine,  # the page offers cluster settings on ray only
        }

    async def _name_from_body(self, scope: Scope, receive: Receive) -> tuple[str, dict]:
        """The registered model a POST names, and every field of its body."""
        body = await read_body(dict(scope["headers"]), receive, BODY_LIMIT)
        try:
            fields = orjson.loads(body)
            name = fields["registered_model_name"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            fields, name = {}, None
        if not isinstance(name, str) or not name:
            raise InvalidInput('Send {"registered_model_name": "<name>"}.')
        return name, fields


def _tail(path: Path, version: str | None) -> str:
    """The last lines of a model server's log, or of its records about one version."""
    try:
        with open(path, "rb") as log:
            log.seek(max(log.seek(0, os.SEEK_END) - LOG_BYTES, 0))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    if version is not None:
        text = logs.of_version(text, version)
    return "".join(text.splitlines(keepends=True)[-LOG_LINES:])


def _one(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key)
    if not values or not values[0]:
        raise InvalidInput(f"Pass ?{key}=<name>.")
    return values[0]

"""`/api/2.0/modelhost/batch/jobs`: the batch jobs API, translated to batch/jobs_service.py.

POST .../jobs submits, GET .../jobs lists (`?registered_model_name=`), GET .../jobs/{id} shows
one, POST .../jobs/{id}/cancel stops one. Every call runs on a thread: the event loop that
answers scoring never waits on the registry, the disk or the state database.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from urllib.parse import parse_qs

import orjson

from modelhost.asgi import Receive, Scope, Send, json_object, read_body, refuse_method, respond
from modelhost.auth.policy import CALLER, Caller
from modelhost.batch.jobs import parse_request
from modelhost.batch.jobs_service import Jobs
from modelhost.errors import InvalidInput, ModelhostError, NotFound

JOBS_PATH = "/api/2.0/modelhost/batch/jobs"
BODY_LIMIT = 64 * 1024  # a model, two paths and a few options


class JobsAPI:
    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _route(scope["path"])
        if route is None:
            error = NotFound(f"No route {scope['path']}.")
            await respond(send, error.status, error.body())
            return
        action, job_id, allowed = route
        if scope["method"] not in allowed:
            await refuse_method(send, scope, allowed)
            return
        caller: Caller | None = scope.get(CALLER)
        try:
            if action == "jobs" and scope["method"] == "POST":
                body = await read_body(dict(scope["headers"]), receive, BODY_LIMIT)
                request = parse_request(json_object(body))
                job = await asyncio.to_thread(self.jobs.submit, request, caller)
                answer: dict = {"job": job.to_json()}
            elif action == "jobs":
                name = _model_filter(scope)
                found = await asyncio.to_thread(self.jobs.list, caller, name)
                answer = {"jobs": [job.to_json() for job in found]}
            elif action == "job":
                job = await asyncio.to_thread(self.jobs.get, job_id, caller)
                answer = {"job": job.to_json()}
            else:
                job = await asyncio.to_thread(self.jobs.cancel, job_id, caller)
                answer = {"job": job.to_json()}
        except ModelhostError as e:
            await respond(send, e.status, e.body())
            return
        await respond(send, HTTPStatus.OK, orjson.dumps(answer))


def _route(path: str) -> tuple[str, str, tuple[str, ...]] | None:
    """(action, job id, the methods it takes) for a path under JOBS_PATH; None: no such route."""
    rest = path[len(JOBS_PATH) :]
    if rest in ("", "/"):
        return "jobs", "", ("GET", "POST")
    parts = rest.strip("/").split("/")
    if not rest.startswith("/") or not parts[0]:
        return None
    if len(parts) == 1:
        return "job", parts[0], ("GET",)
    if len(parts) == 2 and parts[1] == "cancel":
        return "cancel", parts[0], ("POST",)
    return None


def _model_filter(scope: Scope) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    unknown = sorted(set(query) - {"registered_model_name"})
    if unknown:
        raise InvalidInput(f"Unknown parameter '{unknown[0]}': filter by registered_model_name.")
    names = query.get("registered_model_name", [])
    if len(names) > 1:
        raise InvalidInput("Pass 'registered_model_name' once.")
    return names[0] if names else None

"""`Auth(app, ...)`: every request is signed in and checked before the gateway sees it.

Answers: no or a bad credential is 401 with `WWW-Authenticate`; a signed-in caller without the
level a route needs is 403, with the same answer whether or not the model exists, so only those
who may read a model learn that it does. Failed sign-ins from one address beyond a small burst
get 429 with `Retry-After`. `/health` and the Serving page's files are open; `/metrics` is for
admins.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs

import orjson

from modelhost.asgi import Receive, Scope, Send, held, json_object, read_body, respond
from modelhost.auth import ACTOR, search
from modelhost.auth.access import Access
from modelhost.auth.api import AuthAPI
from modelhost.auth.experiments import MODEL_VERSIONS_TAG, Locator, redacted
from modelhost.auth.limits import FailureLimiter, retry_after
from modelhost.auth.policy import (
    EXPERIMENT,
    SCORING,
    Level,
    Rule,
    check_model_name,
    registry_rule,
    serving_rule,
)
from modelhost.auth.search import entry_name
from modelhost.auth.store import Principal
from modelhost.control.store import StateStore
from modelhost.errors import (
    InvalidInput,
    ModelhostError,
    PermissionDenied,
    TooManyFailures,
    Unauthenticated,
)
from modelhost.gateway import ui
from modelhost.gateway.paths import MODELHOST_ROOT, registry_route, scoring_target, serving_action
from modelhost.gateway.serving import ACTIONS as SERVING_ACTIONS

log = logging.getLogger("modelhost.auth")
audit = logging.getLogger("modelhost.audit")

OPEN_PATHS = frozenset({"/health"})
METRICS = "/metrics"
CHALLENGE = ((b"www-authenticate", b'Bearer realm="modelhost"'),
             (b"www-authenticate", b'Basic realm="modelhost"'))  # fmt: skip
SIGN_IN = (
    "send 'Authorization: Bearer <token>' (or HTTP Basic with user 'token': "
    "curl -u token:$TOKEN); an admin creates tokens with `modelhost tokens create --user NAME`."
)
BODY_LIMIT = 4 * 1024 * 1024  # registry calls that name a model are small JSON bodies


class Auth:
    """The ASGI wrapper around the gateway."""

    def __init__(self, app, access: Access, events: StateStore, limiter: FailureLimiter) -> None:
        self.app = app
        self.access = access
        self.events = events
        self.limiter = limiter
        self.api = AuthAPI(access, events)
        self.locator = Locator(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or _page(scope):
            await self.app(scope, receive, send)
            return
        principal = await self._sign_in(scope, send)
        if principal is None:
            return
        scope[ACTOR] = principal.name
        path = scope["path"]
        if (target := scoring_target(path)) is not None:
            name = target[0]
            # Another method does nothing and needs no right: the gateway answers it 405.
            if scope["method"] != "POST" or self.access.allows(principal, name, Level.READ):
                await self.app(scope, receive, send)
            else:
                await _error(send, denied(SCORING, name))
        elif path.startswith(MODELHOST_ROOT):
            await self.api(scope, receive, send, principal)
        elif (action := serving_action(path)) is not None:
            if SERVING_ACTIONS.get(action, scope["method"]) != scope["method"]:
                await self.app(scope, receive, send)  # the gateway answers 405, doing nothing
            else:
                await self._guarded(serving_rule(scope["method"], action),
                                    principal, scope, receive, send)  # fmt: skip
        elif (route := registry_route(path)) is not None:
            rule = registry_rule(scope["method"], *route)
            await self._guarded(rule, principal, scope, receive, send)
        elif path == METRICS and scope["method"] in ("GET", "HEAD") and not principal.admin:
            # It names every served model; another method gets the gateway's 405.
            await _error(send, PermissionDenied(f"{METRICS} is for admins only."))
        else:
            await self.app(scope, receive, send)  # the gateway's own pages, or its 404

    async def _sign_in(self, scope: Scope, send: Send) -> Principal | None:
        authorization = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
                break
        if authorization is None:
            await _error(send, Unauthenticated(f"Sign in: {SIGN_IN}"), CHALLENGE)
            return None
        principal = self.access.who(authorization)
        if principal is not None:
            return principal
        client = scope.get("client")
        wait_s = self.limiter.failed(client[0] if client else "unknown")
        if wait_s > 0:
            error = TooManyFailures("Too many failed sign-ins from this address; wait and retry.")
            await _error(send, error, ((b"retry-after", retry_after(wait_s)),))
        else:
            message = f"The token is unknown, revoked or expired. To sign in, {SIGN_IN}"
            await _error(send, Unauthenticated(message), CHALLENGE)
        return None

    async def _guarded(
        self, rule: Rule, principal: Principal, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Check `rule`, then call the gateway; answers that need upkeep or filtering are held.

        Admins pass every check, but what they create, rename and delete keeps grants in step.
        """
        admin = principal.admin
        body: bytes | None = None
        name = new_name = None
        try:
            if rule.admin and not admin:
                raise PermissionDenied(f"{rule.what} {scope['path']} is for admins only.")
            names_model = rule.field is not None and (rule.after is not None or not admin)
            fields: dict = {}
            # Files named by their path hold what is uploaded in the body: never read it here.
            located_by_fields = rule.locate not in (None, "path", "logged_model")
            if names_model or ((located_by_fields or rule.admin_fields) and not admin):
                if scope["method"] == "GET":
                    fields = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                else:
                    body = await read_body(dict(scope["headers"]), receive, BODY_LIMIT)
                    fields = json_object(body)
            for field in rule.admin_fields if not admin else ():
                if fields.get(field):
                    raise PermissionDenied(f"Setting '{field}' is for admins: leave it out.")
            if names_model:
                name, new_name = _model_names(rule, fields)
                if not admin:
                    self._check(rule, principal, name, new_name)
            if rule.experiment is not None and not admin:
                await self._check_experiments(rule, principal, scope, fields)
            if rule.redact and not admin and MODEL_VERSIONS_TAG.lower() in str(fields).lower():
                raise PermissionDenied(f"Searching by {MODEL_VERSIONS_TAG} is for admins.")
        except ModelhostError as e:
            await _error(send, e)
            return
        if body is not None:
            receive = _replay(body, receive)
        filtering = (rule.filter_key is not None or rule.redact) and not admin
        readable = lambda name: self.access.allows(principal, name, Level.READ)  # noqa: E731
        if filtering and rule.paged:
            await search.readable_pages(self.app, scope, send, rule.filter_key or "", readable)
            return
        if not filtering and rule.after is None:
            await self.app(scope, receive, send)
            return
        # Held whole to be filtered or checked: compressed answers could not be read.
        scope = {**scope, "headers": [h for h in scope["headers"] if h[0] != b"accept-encoding"]}
        status, headers, answer = await held(self.app, scope, receive)
        if filtering and status == 200:
            answer = (
                redacted(answer, readable)
                if rule.redact
                else self._readable_only(answer, rule.filter_key or "", principal)
            )
        elif rule.after == "experiment":
            if status == 200 and not admin:
                await asyncio.to_thread(self._experiment_created, answer, principal)
        elif rule.after is not None:
            made = new_name if rule.after == "rename" else name
            if status != 200 and not self.access.allows(principal, made, Level.READ):
                await _error(send, denied(rule, made))  # do not tell whether it exists
                return
            if status == 200:
                # Grants are rows of the state database: written off the event loop.
                await asyncio.to_thread(self._upkeep, rule.after, principal, name, new_name)
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    def _check(self, rule: Rule, principal: Principal, name: str, new_name: str | None) -> None:
        if rule.create:
            if not self.access.may_create(principal, name):
                raise denied(rule, name)
            return
        assert rule.level is not None
        if not self.access.allows(principal, name, rule.level):
            raise denied(rule, name)
        if new_name is not None and not self.access.allows(principal, new_name, Level.MANAGE):
            raise denied(rule, new_name, Level.MANAGE)

    async def _check_experiments(
        self, rule: Rule, principal: Principal, scope: Scope, fields: dict
    ) -> None:
        """Runs, logged models and their files follow their experiment; a registered model's
        files (those a version was made of) need READ on the model to read, MANAGE to change."""
        assert rule.experiment is not None and rule.locate is not None, "a tracking rule"
        route = registry_route(scope["path"])
        place = await self.locator.locate(
            rule.locate, scope, route[1] if route else "", fields, rule.files
        )
        if rule.experiment is Level.READ and place.backs:
            allowed = any(self.access.allows(principal, n, Level.READ) for n in place.backs)
        else:
            allowed = all(
                self.access.allows(principal, EXPERIMENT + e, rule.experiment)
                for e in place.experiments
            ) and all(self.access.allows(principal, n, Level.MANAGE) for n in place.backs)
        if not allowed:
            what = "these files" if rule.files else "this experiment"
            model = " (or READ on the registered model, for its files)" if rule.files else ""
            raise PermissionDenied(
                f"{rule.what} {what} needs {rule.experiment.name} on the experiment{model}, "
                "which you do not have (or it does not exist). Ask its managers, or an admin."
            )

    def _experiment_created(self, answer: bytes, principal: Principal) -> None:
        """Whoever creates an experiment manages it, as in MLflow's auth app."""
        try:
            experiment_id = orjson.loads(answer).get("experiment_id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(experiment_id, str) and experiment_id.isdigit():
            target = EXPERIMENT + experiment_id
            self.access.store.grant(principal.name, target, Level.MANAGE, by=principal.name)
            self._audit(target, f"MANAGE granted to {principal.name}, who created it.", principal)

    def _readable_only(self, answer: bytes, key: str, principal: Principal) -> bytes:
        """The answer's `key` list without what the caller may not read (models or experiments)."""
        try:
            document = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return answer
        if isinstance(document, dict) and isinstance(document.get(key), list):
            document[key] = [e for e in document[key] if self._readable(principal, e)]
            return orjson.dumps(document)
        return answer

    def _readable(self, principal: Principal, entry: object) -> bool:
        if isinstance(entry, dict) and isinstance(entry.get("experiment_id"), str):
            target = EXPERIMENT + entry["experiment_id"]
        else:
            target = entry_name(entry)
        return self.access.allows(principal, target, Level.READ)

    def _upkeep(self, after: str, principal: Principal, name: str, new_name: str | None) -> None:
        """Grants follow what happened in the registry."""
        store = self.access.store
        if after == "create" and not principal.admin:  # admins manage every model already
            store.grant(principal.name, name, Level.MANAGE, by=principal.name)
            self._audit(name, f"MANAGE granted to {principal.name}, who created it.", principal)
        elif after == "rename" and new_name:
            store.move_grants(name, new_name)
            self._audit(new_name, f"Renamed from '{name}'; its grants moved along.", principal)
        elif after == "delete":
            store.drop_grants(name)
            self._audit(name, "Deleted; the grants on its name went with it.", principal)

    def _audit(self, target: str, message: str, principal: Principal) -> None:
        self.events.record(target, message, actor=principal.name)
        audit.info("%s: %s (by %s)", target, message, principal.name)


def _page(scope: Scope) -> bool:
    """The Serving page's files are public; what they show comes from the guarded API."""
    return scope["method"] in ("GET", "HEAD") and ui.is_page(scope["path"])


def denied(rule: Rule, name: str, level: Level | None = None) -> PermissionDenied:
    needed = (level or rule.level or Level.READ).name
    where = " or on a prefix of its name" if rule.create else ""
    return PermissionDenied(
        f"{rule.what} registered model '{name}' needs {needed} on it{where}, which you do not "
        "have (or it does not exist). Ask one of its managers, or an admin, for a grant."
    )


async def _error(
    send: Send, error: ModelhostError, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await respond(send, error.status, error.body(), headers=headers)


def _model_names(rule: Rule, fields: dict) -> tuple[str, str | None]:
    """The registered model a request names (and the new name a rename gives it)."""
    assert rule.field is not None, "a rule on a registered model"
    name = fields.get(rule.field)
    if isinstance(name, list):  # from the query: given once, or it is ambiguous
        if len(name) > 1:
            raise InvalidInput(f"Pass '{rule.field}' once.")
        name = name[0] if name else None
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"Name the registered model: pass '{rule.field}'.")
    new_name = None
    if rule.after == "rename":
        new_name = fields.get("new_name")
        if not isinstance(new_name, str) or not new_name:
            raise InvalidInput("Pass 'new_name'.")
    if rule.after in ("create", "rename"):
        check_model_name(new_name or name)
    return name, new_name


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the body read here to the app, then what the client sends next."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed

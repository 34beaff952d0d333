"""`Auth(app, ...)`: every request is signed in and checked before the gateway sees it.

Answers: no or a bad credential is 401 with `WWW-Authenticate`; a signed-in caller without the
level a route needs is 403, with the same answer whether or not the model exists, so only those
who may read a model learn that it does. Failed sign-ins from one address beyond a small burst
get 429 with `Retry-After`. `/health` is open; `/metrics` is for admins.

A credential is a token in the Authorization header, or a browser's session cookie
(`auth/browser.py`), which signs in a change only when the browser says it comes from the
gateway's own pages (`auth/origin.py`); a change another site's page sent is refused whatever
it carries. The page (`/`, `/models/...`, `/static/...`) and MLflow's UI files are public, to
GET and HEAD: the data behind them is not.
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
from modelhost.auth.browser import BEARER_CHALLENGE, SESSION_PATH, SessionAPI
from modelhost.auth.experiments import MODEL_VERSIONS_TAG, Locator, redacted
from modelhost.auth.limits import FailureLimiter, retry_after
from modelhost.auth.origin import CROSS_SITE, changes, cross_site, same_origin
from modelhost.auth.policy import (
    ADMIN_ONLY,
    CALLER,
    EXPERIMENT,
    SCORING,
    Caller,
    Level,
    Rule,
    check_model_name,
    registry_rule,
    serving_rule,
)
from modelhost.auth.search import entry_name
from modelhost.auth.sessions import Sessions, session_id
from modelhost.auth.store import Principal, Snapshot
from modelhost.batch.jobs_api import JOBS_PATH
from modelhost.control.store import StateStore
from modelhost.errors import (
    InvalidInput,
    ModelhostError,
    PermissionDenied,
    TooManyFailures,
    Unauthenticated,
)
from modelhost.gateway.paths import (
    MLFLOW_UI_CALLS,
    MODELHOST_ROOT,
    mlflow_ui_file,
    registry_route,
    scoring_target,
    serving_action,
)
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
PAGES = ("/models/", "/static/")  # and `/`: the page, which asks for the data behind it
# What the gateway answers under /api/2.0/modelhost/ about one model, to its readers.
ABOUT_A_MODEL = {
    "models/example": Rule("Reading an example of", Level.READ, "registered_model_name"),
    "metrics/series": Rule("Reading the metrics of", Level.READ, "registered_model_name"),
}
# MLflow's UI calls outside its API roots: a registered version's files need READ on the model;
# a run's files and GraphQL queries are judged by nothing here yet, so only admins make them.
UI_CALLS = {"/model-versions/get-artifact": Rule("Reading", Level.READ, "name")}
ENDED = (
    "The browser's session has ended (signed out, expired, or its token revoked): sign in again."
)
NOT_OWN_PAGE = (
    "A change signed in only by the browser's session cookie must come from the gateway's own "
    "pages (its Origin or Sec-Fetch-Site says so); a script sends 'Authorization: Bearer "
    "<token>' instead."
)


class Auth:
    """The ASGI wrapper around the gateway."""

    def __init__(self, app, access: Access, events: StateStore, limiter: FailureLimiter) -> None:
        self.app = app
        self.access = access
        self.events = events
        self.limiter = limiter
        self.api = AuthAPI(access, events)
        self.locator = Locator(app)
        self.sessions = Sessions(access.store.engine)
        self.session_api = SessionAPI(access, self.sessions, limiter)

    def changed_elsewhere(self, snapshot: Snapshot) -> None:
        """Another node changed users, tokens, grants or sessions: answer from the new tables,
        and read each browser's session again."""
        self.access.install(snapshot)
        self.sessions.forget()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or _public(scope):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == SESSION_PATH:
            await self._session(scope, receive, send)
            return
        if scoring_target(path) is None and changes(scope) and cross_site(scope):
            await _error(send, PermissionDenied(CROSS_SITE))
            return
        principal = await self._sign_in(scope, send)
        if principal is None:
            return
        scope[ACTOR] = principal.name
        if (target := scoring_target(path)) is not None:
            name = target[0]
            # Another method does nothing and needs no right: the gateway answers it 405.
            if scope["method"] != "POST" or self.access.allows(principal, name, Level.READ):
                await self.app(scope, receive, send)
            else:
                await _error(send, denied(SCORING, name))
        elif path.startswith(MODELHOST_ROOT) and (
            about := ABOUT_A_MODEL.get(path[len(MODELHOST_ROOT) :])
        ):
            if scope["method"] != "GET":
                await self.app(scope, receive, send)  # the gateway answers 405, doing nothing
            else:
                await self._guarded(about, principal, scope, receive, send)
        elif path.startswith(JOBS_PATH):
            # A job's model is known once it is found: the jobs API checks with the caller's
            # levels (auth/policy.py JOB_*).
            level_on = lambda name: self.access.level(principal, name)  # noqa: E731
            scope[CALLER] = Caller(principal.name, principal.admin, level_on)
            await self.app(scope, receive, send)
        elif path.startswith(MODELHOST_ROOT):
            await self.api(scope, receive, send, principal)
        elif (action := serving_action(path)) is not None:
            if SERVING_ACTIONS.get(action, scope["method"]) != scope["method"]:
                await self.app(scope, receive, send)  # the gateway answers 405, doing nothing
            else:
                await self._guarded(serving_rule(scope["method"], action),
                                    principal, scope, receive, send)  # fmt: skip
        elif path in MLFLOW_UI_CALLS:
            rule = UI_CALLS.get(path, ADMIN_ONLY) if scope["method"] == "GET" else ADMIN_ONLY
            await self._guarded(rule, principal, scope, receive, send)
        elif (route := registry_route(path)) is not None:
            rule = registry_rule(scope["method"], *route)
            await self._guarded(rule, principal, scope, receive, send)
        elif path == METRICS and scope["method"] in ("GET", "HEAD") and not principal.admin:
            # It names every served model; another method gets the gateway's 405.
            await _error(send, PermissionDenied(f"{METRICS} is for admins only."))
        else:
            await self.app(scope, receive, send)  # the gateway's own pages, or its 404

    async def _session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET says who the caller is, answering without a credential; a bad Authorization
        header is refused as anywhere. POST signs in with the token in its body."""
        caller = None
        if scope["method"] == "GET" and (
            _authorization(scope) is not None or session_id(scope["headers"]) is not None
        ):
            caller = await self._sign_in(scope, send, quiet=True)
            if caller is None and _authorization(scope) is not None:
                return  # refused: _sign_in answered
        await self.session_api(scope, receive, send, caller)

    async def _sign_in(self, scope: Scope, send: Send, quiet: bool = False) -> Principal | None:
        """The caller, or None once refused (`quiet`: a browser's ended session is not)."""
        authorization = _authorization(scope)
        if authorization is None:
            held = session_id(scope["headers"])
            if held is None:
                await _error(send, Unauthenticated(f"Sign in: {SIGN_IN}"), CHALLENGE)
                return None
            return await self._by_session(held, scope, send, quiet)
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

    async def _by_session(
        self, held: str, scope: Scope, send: Send, quiet: bool
    ) -> Principal | None:
        """The holder of a browser's session; none for a change that is not from our pages.

        An unknown id is not counted as a failed sign-in: it is as hard to guess as a token,
        and a browser whose session ended (expired, signed out) would lock its own address out.
        """
        session = await self.sessions.find(held)
        principal = self.access.holder(session.token_hash) if session else None
        if principal is None:
            if not quiet:
                await _error(send, Unauthenticated(ENDED), (BEARER_CHALLENGE,))
            return None
        if changes(scope) and not same_origin(scope):
            await _error(send, PermissionDenied(NOT_OWN_PAGE))
            return None
        return principal

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


def _authorization(scope: Scope) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            return value
    return None


def _public(scope: Scope) -> bool:
    """The page and MLflow's UI files, to GET or HEAD: the same to everyone."""
    if scope["method"] not in ("GET", "HEAD"):
        return False
    path = scope["path"]
    return path == "/" or path.startswith(PAGES) or mlflow_ui_file(path)


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

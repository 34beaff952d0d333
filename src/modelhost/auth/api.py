"""The REST API of identities, tokens and grants, under /api/2.0/modelhost/.

Admins create and revoke users and service principals; anyone creates, lists and revokes their
own tokens (admins anyone's); whoever holds MANAGE on a model or a prefix grants and revokes
there (admins anywhere). Grants and revokes are audit events of the model (or prefix) they name.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from urllib.parse import parse_qs

import orjson

from modelhost.asgi import Receive, Scope, Send, json_object, read_body, refuse_method, respond
from modelhost.auth.access import Access
from modelhost.auth.policy import Level, covers, parse_level
from modelhost.auth.store import Kind, Principal
from modelhost.control.node import listed
from modelhost.control.store import StateStore
from modelhost.errors import InvalidInput, ModelhostError, NotFound, PermissionDenied

PREFIX = "/api/2.0/modelhost/"
DAY_S = 86400.0
MAX_DAYS = 36500  # a century: any longer is "never", and far ones overflow a timestamp
audit = logging.getLogger("modelhost.audit")


class AuthAPI:
    def __init__(self, access: Access, events: StateStore) -> None:
        self.access = access
        self.store = access.store
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send, caller: Principal) -> None:
        route = (scope["method"], scope["path"][len(PREFIX) :])
        allowed = [method for method, action in ROUTES if action == route[1]]
        if allowed and route[0] not in allowed:
            await refuse_method(send, scope, allowed)
            return
        try:
            if route[0] == "GET":
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                fields = {key: values[0] for key, values in query.items()}
            else:
                body = await read_body(dict(scope["headers"]), receive, 64 * 1024)
                fields = json_object(body)
            # Users, tokens and grants are rows of the state database: written off the loop.
            answer = await asyncio.to_thread(self._dispatch, route, fields, caller)
        except ModelhostError as e:
            await respond(send, e.status, e.body())
            return
        await respond(send, HTTPStatus.OK, orjson.dumps(answer))

    def _dispatch(self, route: tuple[str, str], fields: dict, caller: Principal) -> dict:
        handler = ROUTES.get(route)
        if handler is None:
            raise NotFound(f"No route {route[0]} {PREFIX}{route[1]}.")
        return handler(self, fields, caller)

    # --- identities

    def whoami(self, _: dict, caller: Principal) -> dict:
        return {"user": caller.shown()}

    def create_user(self, fields: dict, caller: Principal) -> dict:
        _admin(caller, "Creating users")
        kind = _text(fields, "kind", Kind.USER.value)
        if kind not in {k.value for k in Kind}:
            raise InvalidInput(f"'kind' is one of {[k.value for k in Kind]}, not {kind!r}.")
        made = self.store.create_principal(_text(fields, "name"), kind, bool(fields.get("admin")))
        audit.info("%s %s created (admin: %s) by %s", kind, made.name, made.admin, caller.name)
        return {"user": made.shown()}

    def nodes(self, _: dict, caller: Principal) -> dict:
        _admin(caller, "Listing the nodes")
        return {"nodes": listed(self.events)}

    def list_users(self, _: dict, caller: Principal) -> dict:
        _admin(caller, "Listing users")
        return {"users": self.store.list_principals()}

    def revoke_user(self, fields: dict, caller: Principal) -> dict:
        _admin(caller, "Revoking users")
        name = _text(fields, "name")
        self.store.revoke_principal(name)
        audit.info("%s revoked by %s", name, caller.name)
        return {}

    # --- tokens

    def create_token(self, fields: dict, caller: Principal) -> dict:
        user = _text(fields, "user", caller.name)
        _self_or_admin(caller, user, "Creating tokens for others")
        days = fields.get("expires_in_days")
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_DAYS
        ):
            raise InvalidInput(
                f"'expires_in_days' is a number of days above 0 and at most {MAX_DAYS}; leave it "
                "out for a token that does not expire."
            )
        secret, shown = self.store.create_token(
            user, days * DAY_S if days else None, _text(fields, "comment", "")
        )
        audit.info("token %s created for %s by %s", shown["id"], user, caller.name)
        return {"token": secret, "token_info": shown}

    def list_tokens(self, fields: dict, caller: Principal) -> dict:
        user = fields.get("user") or (None if caller.admin else caller.name)
        if user is not None:
            _self_or_admin(caller, user, "Listing the tokens of others")
        return {"tokens": self.store.list_tokens(user)}

    def revoke_token(self, fields: dict, caller: Principal) -> dict:
        token_id = _text(fields, "id")
        owner = self.store.token_owner(token_id)
        _self_or_admin(caller, owner, "Revoking the tokens of others")
        self.store.revoke_token(token_id)
        audit.info("token %s of %s revoked by %s", token_id, owner, caller.name)
        return {}

    def permission(self, fields: dict, caller: Principal) -> dict:
        """The caller's own level on a model (NONE without a grant): what the page may offer.

        It tells only what the caller's grants say, not whether the model exists."""
        name = _text(fields, "registered_model_name")
        level = self.access.level(caller, name)
        return {"registered_model_name": name, "permission_level": level.name if level else "NONE"}

    # --- grants

    def grant(self, fields: dict, caller: Principal) -> dict:
        target, user = _text(fields, "target"), _text(fields, "user")
        level = _level(_text(fields, "level"))
        self._must_manage(caller, target, "Granting")
        self.store.grant(user, target, level, by=caller.name)
        self._audit(target, f"{level.name} granted to {user}.", caller)
        return {}

    def revoke(self, fields: dict, caller: Principal) -> dict:
        target, user = _text(fields, "target"), _text(fields, "user")
        self._must_manage(caller, target, "Revoking grants")
        if not self.store.revoke(user, target):
            raise NotFound(f"'{user}' holds no grant on '{target}' itself (see permissions list).")
        self._audit(target, f"The grant of {user} was revoked.", caller)
        return {}

    def list_grants(self, fields: dict, caller: Principal) -> dict:
        """The grants that apply to a model or prefix, or those of one user (yours by default)."""
        target, user = fields.get("target"), fields.get("user")
        if target:
            self._must_manage(caller, target, "Listing grants")
            shown = [g for g in self.store.list_grants(user) if covers(g["target"], target)]
        else:
            user = user or (None if caller.admin else caller.name)
            if user is not None:
                _self_or_admin(caller, user, "Listing the grants of others")
            shown = self.store.list_grants(user)
        return {"permissions": shown}

    def audit(self, fields: dict, caller: Principal) -> dict:
        """The audit events of a model or a prefix (grants on a prefix are its own events)."""
        target = _text(fields, "target")
        self._must_manage(caller, target, "Reading the audit events")
        return {"events": [e for e in self.events.events(target) if e["user"] is not None]}

    def _must_manage(self, caller: Principal, target: str, what: str) -> None:
        if not self.access.allows(caller, target, Level.MANAGE):
            raise PermissionDenied(
                f"{what} on '{target}' needs MANAGE on it (or on a prefix of it), which you do "
                "not have (or it does not exist)."
            )

    def _audit(self, target: str, message: str, caller: Principal) -> None:
        self.events.record(target, message, actor=caller.name)
        audit.info("%s: %s (by %s)", target, message, caller.name)


ROUTES = {
    ("GET", "whoami"): AuthAPI.whoami,
    ("GET", "nodes"): AuthAPI.nodes,
    ("GET", "models/permission"): AuthAPI.permission,
    ("POST", "users/create"): AuthAPI.create_user,
    ("GET", "users/list"): AuthAPI.list_users,
    ("POST", "users/revoke"): AuthAPI.revoke_user,
    ("POST", "tokens/create"): AuthAPI.create_token,
    ("GET", "tokens/list"): AuthAPI.list_tokens,
    ("POST", "tokens/revoke"): AuthAPI.revoke_token,
    ("POST", "permissions/grant"): AuthAPI.grant,
    ("POST", "permissions/revoke"): AuthAPI.revoke,
    ("GET", "permissions/list"): AuthAPI.list_grants,
    ("GET", "permissions/audit"): AuthAPI.audit,
}


def _admin(caller: Principal, what: str) -> None:
    if not caller.admin:
        raise PermissionDenied(f"{what} is for admins only.")


def _self_or_admin(caller: Principal, user: str, what: str) -> None:
    if user != caller.name and not caller.admin:
        raise PermissionDenied(f"{what} is for admins only.")


def _text(fields: dict, key: str, default: str | None = None) -> str:
    value = fields.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise InvalidInput(f"Pass '{key}' (a string).")
    return value


def _level(text: str) -> Level:
    try:
        return parse_level(text)
    except ValueError as e:
        raise InvalidInput(str(e)) from None

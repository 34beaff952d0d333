"""One path per request: normalized once, then judged and forwarded as the same string.

A proxy and the server behind it can read one path two ways (`/a/x/../b` is `/a/b` to one and
not to the other; `%2F` is a slash to some), and a policy that judges one reading while the
other is served can be walked around. So every request's path is rewritten once, before auth
sees it: percent-decoded, dot segments resolved, repeated slashes folded. What has no single
reading (an encoded slash or backslash, `..` above the root, a bad percent sign, control
characters) is refused. Auth and routing read `scope["path"]`; the proxy forwards
`scope["raw_path"]`, the same path encoded again.

MLflow's own UI is served under `/mlflow/`: its index there, and its files and API calls, which
it makes relative to the index (`/mlflow/static-files/...`, `/mlflow/ajax-api/...`), rewritten
here to the registry's own paths, so auth judges `/mlflow/ajax-api/X` exactly as `/ajax-api/X`.

The gateway's route families are parsed here too, so auth and routing split a path alike.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from modelhost.asgi import Receive, Scope, Send, respond
from modelhost.errors import InvalidInput

# Characters RFC 3986 allows in a path segment as they are; everything else is percent-encoded.
SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_NO_SINGLE_READING = re.compile(rb"%2f|%5c|\\", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A path with none of these is its own one reading: the common case passes untouched.
_NEEDS_WORK = re.compile(rb"%|\\|//|/\.\.?(?:/|$)|[^\x21-\x7e]")

# Where MLflow's REST API lives behind the gateway (the registry, tracking and artifacts).
REGISTRY_ROOTS = (
    "/api/2.0/mlflow/",
    "/ajax-api/2.0/mlflow/",
    "/api/3.0/mlflow/",
    "/ajax-api/3.0/mlflow/",
    "/api/2.0/mlflow-artifacts/",
    "/ajax-api/2.0/mlflow-artifacts/",
)
SERVING_ROOTS = ("/api/2.0/preview/mlflow/endpoints/", "/api/2.0/mlflow/endpoints/")
MODELHOST_ROOT = "/api/2.0/modelhost/"
MLFLOW_UI = "/mlflow/"  # MLflow's UI: its index page
MLFLOW_FILES = "/static-files/"  # where MLflow's UI has its scripts, styles and images
# What else MLflow's UI calls on its server, outside the API roots: the MLmodel of a registered
# version, a run's files, and its GraphQL queries.
MLFLOW_UI_CALLS = ("/model-versions/get-artifact", "/get-artifact", "/graphql")


class Normalized:
    """The ASGI wrapper that gives every request its one path, or answers 400."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") or scope.get("path", "").encode()
        if scope["type"] == "http" and (not raw.startswith(b"/") or _NEEDS_WORK.search(raw)):
            try:
                path = canonical(raw)
            except InvalidInput as e:
                await respond(send, e.status, e.body())
                return
            scope = {**scope, "path": path, "raw_path": encoded(path)}
        if scope["type"] == "http" and (inner := mlflow_ui_path(scope["path"])) is not None:
            scope = {**scope, "path": inner, "raw_path": encoded(inner)}
        await self.app(scope, receive, send)


def canonical(raw: bytes) -> str:
    """The decoded path with dot segments resolved and empty segments dropped; InvalidInput."""
    if not raw.startswith(b"/"):
        raise InvalidInput("A request path starts with '/'.")
    if _NO_SINGLE_READING.search(raw):
        raise InvalidInput(
            "The path holds an encoded slash or a backslash, which servers read differently: "
            "send '/' between segments and no '\\'."
        )
    if _BAD_PERCENT.search(raw):
        raise InvalidInput("The path holds a '%' that is not followed by two hex digits.")
    try:
        text = unquote(raw.decode(), errors="strict")
    except UnicodeDecodeError:
        raise InvalidInput("The path is not UTF-8 once percent-decoded.") from None
    if _CONTROL.search(text):
        raise InvalidInput("The path holds control characters.")
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise InvalidInput("The path climbs above the root with '..'.")
            segments.pop()
            continue
        segments.append(segment)
    trailing = "/" if text.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def encoded(path: str) -> bytes:
    """`path` percent-encoded for the wire: one decoding gives it back exactly."""
    return quote(path, safe="/" + SEGMENT_SAFE).encode("ascii")


def mlflow_ui_path(path: str) -> str | None:
    """The registry's own path of a file or API call of MLflow's UI under /mlflow/, if it is one."""
    if not path.startswith(MLFLOW_UI):
        return None
    inner = path[len(MLFLOW_UI) - 1 :]
    if inner.startswith(MLFLOW_FILES) or inner in MLFLOW_UI_CALLS or registry_route(inner):
        return inner
    return None


def mlflow_ui_file(path: str) -> bool:
    """Whether `path` is MLflow's UI itself (its index or its files), public as any page is."""
    return path == MLFLOW_UI or path.startswith(MLFLOW_FILES)


def scoring_target(path: str) -> tuple[str, str] | None:
    """(registered model name, version | stage | alias) of /model/<name>/<ref>/invocations."""
    segments = path.split("/")
    if len(segments) == 5 and segments[1] == "model" and segments[4] == "invocations":
        return segments[2], segments[3]
    return None


def serving_action(path: str) -> str | None:
    """The action of a serving control API path (`enable`, `get-status`...), if it is one."""
    for root in SERVING_ROOTS:
        if path.startswith(root):
            return path[len(root) :]
    return None


def registry_route(path: str) -> tuple[str, str] | None:
    """(root, route) of a path to MLflow's REST API, e.g. ('/api/2.0/mlflow/', 'runs/get')."""
    for root in REGISTRY_ROOTS:
        if path.startswith(root):
            return root, path[len(root) :]
    return None

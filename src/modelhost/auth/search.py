"""Registry searches for a caller who may read only some models: the answer is the same as if
the others did not exist.

Filtering one page of the registry's answer would still tell (an emptied page is `[]` where no
match is `{}`, and a page token says more matches exist), so the gateway reads every page of
the search, keeps the entries the caller may read, and pages those itself with its own token.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qsl, urlencode

import orjson

from modelhost.asgi import Scope, Send, held, no_body, respond
from modelhost.errors import InvalidInput

REGISTRY_PAGE = 1000  # entries asked of the registry per call: MLflow's largest page
MAX_RESULTS = 10_000
DEFAULT_RESULTS = {"registered_models": 100, "model_versions": 10_000}  # MLflow's defaults
TOKEN = "modelhost-offset-"


async def readable_pages(
    app, scope: Scope, send: Send, key: str, readable: Callable[[str], bool]
) -> None:
    """Answer a GET search (`key`: the answer's list) with only the entries `readable` keeps."""
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    try:
        offset = _offset(query)
        wanted = _max_results(query, DEFAULT_RESULTS[key])
    except InvalidInput as e:
        await respond(send, e.status, e.body())
        return
    asked = [(k, v) for k, v in query if k not in ("page_token", "max_results")]
    headers = [h for h in scope["headers"] if h[0] not in (b"accept-encoding", b"content-length")]
    kept: list = []
    token = None
    while True:
        page = [*asked, ("max_results", str(REGISTRY_PAGE))]
        if token:
            page.append(("page_token", token))
        call = {**scope, "query_string": urlencode(page).encode(), "headers": headers}
        status, answer_headers, answer = await held(app, call, no_body)
        if status != HTTPStatus.OK:  # a bad filter, the registry away: the same for everyone
            await send({"type": "http.response.start", "status": status,
                        "headers": answer_headers})  # fmt: skip
            await send({"type": "http.response.body", "body": answer})
            return
        document = orjson.loads(answer)
        kept.extend(entry for entry in document.get(key, []) if readable(entry_name(entry)))
        token = document.get("next_page_token")
        if not token:
            break
    shown: dict = {}
    if kept[offset : offset + wanted]:
        shown[key] = kept[offset : offset + wanted]  # MLflow leaves an empty list out
    if offset + wanted < len(kept):
        shown["next_page_token"] = f"{TOKEN}{offset + wanted}"
    await respond(send, HTTPStatus.OK, orjson.dumps(shown))


def entry_name(entry: object) -> str:
    """The registered model an entry of an answer is about (a model, a version, an endpoint)."""
    if isinstance(entry, dict):
        name = entry.get("name") or entry.get("registered_model_name")
        if isinstance(name, str):
            return name
    return ""


def _offset(query: list[tuple[str, str]]) -> int:
    tokens = [v for k, v in query if k == "page_token" and v]
    if not tokens:
        return 0
    number = tokens[-1].removeprefix(TOKEN)
    if len(tokens) > 1 or not tokens[0].startswith(TOKEN) or not number.isdigit():
        raise InvalidInput("page_token is not one this server gave: pass the next_page_token "
                           "of the previous page, once.")  # fmt: skip
    return int(number)


def _max_results(query: list[tuple[str, str]], default: int) -> int:
    values = [v for k, v in query if k == "max_results"]
    if not values:
        return default
    if len(values) > 1 or not values[0].isdigit() or not 0 < int(values[0]) <= MAX_RESULTS:
        raise InvalidInput(f"max_results is a whole number from 1 to {MAX_RESULTS}, given once.")
    return int(values[0])

"""Whose files a request touches: the experiment that holds them, and the registered models
whose versions they are.

The artifact store keeps a run's files under `<experiment id>/<run id>/artifacts/` and a logged
model's under `<experiment id>/models/<model id>/artifacts/` (MLflow's own layout), and routes
name files by that path, by a run id or by a logged model id. Where files physically are
decides whose they are, so an experiment created with its artifact location inside another's
gains nothing. A run or a logged model never moves, so which experiment holds it is asked of
the registry once; which registered models it backs changes as versions are registered, so
that is asked each time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

import orjson

from modelhost.asgi import Scope, held, no_body
from modelhost.errors import InvalidInput, PermissionDenied

RUN_ID = re.compile(r"[0-9a-f]{32}")
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # set on a logged model for each version made of it
KNOWN_LIMIT = 100_000  # runs and logged models remembered; past it, start again empty


@dataclass(frozen=True)
class Files:
    experiment_id: str
    backs: frozenset[str]  # registered models that have a version made of these files


class Unplaced(PermissionDenied):
    """Files no experiment can be found for (a made-up path, a run that does not exist)."""


class FileLocator:
    """Answers `Files` for a request, asking the registry behind `app` what it must."""

    def __init__(self, app) -> None:
        self.app = app
        self._experiment_of: dict[str, str] = {}  # run or logged model id -> experiment id

    async def locate(self, how: str, scope: Scope, route: str) -> Files:
        """`how` is a Rule's `locate`: path, path_query, run or logged_model."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if how == "path":  # artifacts/<path> or mpu/<step>/<path>
            return await self._path(
                scope, route.split("/", 2 if route.startswith("mpu/") else 1)[-1]
            )
        if how == "path_query":
            return await self._path(scope, _one(query, "path"))
        if how == "run":
            run_id = _one(query, "run_id") if "run_id" in query else _one(query, "run_uuid")
            return await self._run(scope, run_id)
        return await self._logged_model(scope, route.split("/")[1])

    async def _path(self, scope: Scope, path: str) -> Files:
        # MLflow decodes an artifact path once more and refuses `..`: refuse what would read
        # differently there than here.
        if "%" in path or "\\" in path or any(s in ("", ".", "..") for s in path.split("/")):
            raise InvalidInput(f"Name an artifact by a plain relative path, not {path!r}.")
        segments = path.split("/")
        experiment = segments[0]
        if not experiment.isdigit():
            raise Unplaced("These files are in no experiment: only admins reach them.")
        if len(segments) > 2 and segments[1] == "models":
            found = await self._logged_model(scope, segments[2])
            return Files(experiment, found.backs)
        if len(segments) > 1 and RUN_ID.fullmatch(segments[1]):
            return Files(experiment, await self._run_backs(scope, segments[1]))
        return Files(experiment, frozenset())

    async def _run(self, scope: Scope, run_id: str) -> Files:
        experiment = self._experiment_of.get(run_id)
        if experiment is None:
            answer = await self._get(scope, "/api/2.0/mlflow/runs/get", {"run_id": run_id})
            experiment = self._remember(run_id, answer.get("run", {}).get("info", {}))
        return Files(experiment, await self._run_backs(scope, run_id))

    async def _run_backs(self, scope: Scope, run_id: str) -> frozenset[str]:
        names: set[str] = set()
        token = None
        while True:
            query = {"filter": f"run_id = '{run_id}'", "max_results": "1000"}
            if token:
                query["page_token"] = token
            answer = await self._get(scope, "/api/2.0/mlflow/model-versions/search", query)
            names.update(v.get("name", "") for v in answer.get("model_versions", []))
            token = answer.get("next_page_token")
            if not token:
                return frozenset(names)

    async def _logged_model(self, scope: Scope, model_id: str) -> Files:
        if not re.fullmatch(r"[\w-]+", model_id):
            raise Unplaced("No such logged model.")
        answer = await self._get(scope, f"/api/2.0/mlflow/logged-models/{model_id}", {})
        info = answer.get("model", {}).get("info", {})
        experiment = self._remember(model_id, info)
        return Files(experiment, frozenset(n for n, _ in model_versions(info.get("tags", []))))

    def _remember(self, key: str, info: dict) -> str:
        experiment = info.get("experiment_id")
        if not isinstance(experiment, str) or not experiment:
            raise Unplaced("No such run or logged model.")
        if len(self._experiment_of) >= KNOWN_LIMIT:
            self._experiment_of = {}
        self._experiment_of[key] = experiment
        return experiment

    async def _get(self, scope: Scope, path: str, query: dict[str, str]) -> dict:
        """GET `path` of the registry as the gateway itself; anything but a 200 is unplaced."""
        call = {
            **scope,
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": urlencode(query).encode(),
            "headers": [],
        }
        status, _, body = await held(self.app, call, no_body)
        if status != 200:
            raise Unplaced("No such run or logged model.")
        return orjson.loads(body)


def model_versions(tags: list) -> list[tuple[str, str]]:
    """(name, version) of each registered model version a logged model's tags say it backs."""
    for tag in tags:
        if isinstance(tag, dict) and tag.get("key") == MODEL_VERSIONS_TAG:
            try:
                listed = orjson.loads(tag.get("value") or "[]")
            except orjson.JSONDecodeError:
                return []
            return [
                (str(v.get("name")), str(v.get("version"))) for v in listed if isinstance(v, dict)
            ]
    return []


def redacted(answer: bytes, readable) -> bytes:
    """Logged models (one, or a search's) with only the versions `readable(name)` keeps in
    their `mlflow.modelVersions` tag, and the tag gone where none is left."""
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return answer
    if not isinstance(document, dict):
        return answer
    models = document.get("models") or ([document["model"]] if "model" in document else [])
    for model in models:
        info = model.get("info", {}) if isinstance(model, dict) else {}
        tags = info.get("tags")
        if not isinstance(tags, list):
            continue
        kept = [{"name": n, "version": v} for n, v in model_versions(tags) if readable(n)]
        info["tags"] = [
            t for t in tags if not (isinstance(t, dict) and t.get("key") == MODEL_VERSIONS_TAG)
        ]
        if kept:
            info["tags"].append({"key": MODEL_VERSIONS_TAG, "value": orjson.dumps(kept).decode()})
    return orjson.dumps(document)


def _one(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key, [])
    if len(values) != 1 or not values[0]:
        raise InvalidInput(f"Pass '{key}' once.")
    return values[0]

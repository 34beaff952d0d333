"""Which experiments a tracking request is about, and which registered models its files back.

Runs, logged models and their files belong to an experiment, and follow its permissions as in
MLflow's auth app. Requests name the experiment by id or by name, or name a run or a logged
model, or name files by their path in the artifact store, where MLflow keeps a run's files under
`<experiment id>/<run id>/artifacts/` and a logged model's under
`<experiment id>/models/<model id>/artifacts/`. Where files physically are decides whose they
are, so an experiment created with its artifact location inside another's gains nothing.

A run or a logged model never moves, so which experiment holds it is asked of the registry once;
which registered models a run's or a logged model's files back changes as versions are
registered, so that is asked each time (a version's files need READ on its model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from modelhost.asgi import Scope, held, no_body
from modelhost.errors import InvalidInput, PermissionDenied

RUN_ID = re.compile(r"[0-9a-f]{32}")
# Run, logged model and experiment ids: hex, `m-<hex>`, digits. No `_` or `%`, which would be
# wildcards in the LIKE filter that finds the versions an id's files back.
ID = re.compile(r"[A-Za-z0-9-]+")
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # set on a logged model for each version made of it
KNOWN_LIMIT = 100_000  # runs and logged models remembered; past it, start again empty
MAX_NAMED = 100  # experiments or runs one request may name


@dataclass(frozen=True)
class Place:
    experiments: frozenset[str]  # the experiments the request touches, by id
    backs: frozenset[str] = frozenset()  # registered models with a version made of its files


class Unplaced(PermissionDenied):
    """Nothing the request names can be found (a made-up path, a run that does not exist); told
    as a refusal, so that what exists is not told to who may not read it."""


class Locator:
    """Answers `Place` for a request, asking the registry behind `app` what it must."""

    def __init__(self, app) -> None:
        self.app = app
        self._experiment_of: dict[str, str] = {}  # run or logged model id -> experiment id

    async def locate(
        self, how: str, scope: Scope, route: str, fields: dict[str, Any], files: bool
    ) -> Place:
        """`how` is a Rule's `locate`; `fields` the request's query (lists) or JSON body."""
        if how == "path":  # artifacts/<path> or mpu/<step>/<path>
            parts = 2 if route.startswith("mpu/") else 1
            return await self._path(scope, route.split("/", parts)[-1])
        if how == "path_query":
            return await self._path(scope, _one(fields, "path"))
        if how == "logged_model":
            return await self._logged_model(scope, route.split("/")[1], files)
        if how == "run":
            run_id = _one(fields, "run_id" if "run_id" in fields else "run_uuid")
            return await self._run(scope, run_id, files)
        if how == "run_ids":
            places = [await self._run(scope, r, False) for r in _many(fields, "run_ids")]
            return Place(frozenset().union(*(p.experiments for p in places)))
        if how == "experiment_ids":
            return Place(frozenset(_many(fields, "experiment_ids")))
        if how == "experiment_name":
            query = {"experiment_name": _one(fields, "experiment_name")}
            try:
                found = await self._get(scope, "experiments/get-by-name", query)
            except Unplaced:  # MLflow's client creates an experiment its 404 says is missing
                return Place(frozenset())
            return Place(frozenset({_experiment(found.get("experiment", {}))}))
        experiment_id = _one(fields, "experiment_id")
        if not experiment_id.isdigit():
            raise InvalidInput(f"An experiment id is a number, not {experiment_id!r}.")
        return Place(frozenset({experiment_id}))

    async def _path(self, scope: Scope, path: str) -> Place:
        # MLflow decodes an artifact path once more and refuses `..`: refuse what would read
        # differently there than here.
        if "%" in path or "\\" in path or any(s in ("", ".", "..") for s in path.split("/")):
            raise InvalidInput(f"Name an artifact by a plain relative path, not {path!r}.")
        segments = path.split("/")
        if not segments[0].isdigit():
            raise Unplaced("These files are in no experiment: only admins reach them.")
        experiment = frozenset({segments[0]})
        if len(segments) > 2 and segments[1] == "models":
            return Place(experiment, await self._backs(scope, segments[2], run=False))
        if len(segments) > 1 and RUN_ID.fullmatch(segments[1]):
            return Place(experiment, await self._backs(scope, segments[1], run=True))
        return Place(experiment)

    async def _run(self, scope: Scope, run_id: str, files: bool) -> Place:
        experiment = self._experiment_of.get(run_id)
        if experiment is None:
            found = await self._get(scope, "runs/get", {"run_id": _id(run_id)})
            experiment = self._remember(run_id, found.get("run", {}).get("info", {}))
        backs = await self._backs(scope, run_id, run=True) if files else frozenset()
        return Place(frozenset({experiment}), backs)

    async def _logged_model(self, scope: Scope, model_id: str, files: bool) -> Place:
        experiment = self._experiment_of.get(model_id)
        if experiment is None:
            found = await self._get(scope, f"logged-models/{_id(model_id)}", {})
            experiment = self._remember(model_id, found.get("model", {}).get("info", {}))
        backs = await self._backs(scope, model_id, run=False) if files else frozenset()
        return Place(frozenset({experiment}), backs)

    async def _backs(self, scope: Scope, owner: str, run: bool) -> frozenset[str]:
        """Registered models with a version made from a run's or a logged model's files: by the
        version's run, or by its source (`models:/<id>` or a path inside the owner's folder)."""
        filters = [f"source_path LIKE '%{_id(owner)}%'"]
        if run:
            filters.append(f"run_id = '{owner}'")
        names: set[str] = set()
        for where in filters:
            token = None
            while True:
                query = {"filter": where, "max_results": "1000"}
                if token:
                    query["page_token"] = token
                found = await self._get(scope, "model-versions/search", query)
                names.update(v.get("name", "") for v in found.get("model_versions", []))
                token = found.get("next_page_token")
                if not token:
                    break
        return frozenset(names)

    def _remember(self, key: str, info: dict) -> str:
        experiment = _experiment(info)
        if len(self._experiment_of) >= KNOWN_LIMIT:
            self._experiment_of = {}
        self._experiment_of[key] = experiment
        return experiment

    async def _get(self, scope: Scope, route: str, query: dict[str, str]) -> dict:
        """GET a route of the registry as the gateway itself; anything but a 200 is unplaced."""
        path = f"/api/2.0/mlflow/{route}"
        call = {**scope, "method": "GET", "path": path, "raw_path": path.encode(),
                "query_string": urlencode(query).encode(), "headers": []}  # fmt: skip
        status, _, body = await held(self.app, call, no_body)
        if status != 200:
            raise Unplaced("No such run, logged model or experiment, or not yours to reach.")
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


def _experiment(info: dict) -> str:
    experiment = info.get("experiment_id") if isinstance(info, dict) else None
    if not isinstance(experiment, str) or not experiment.isdigit():
        raise Unplaced("No such run, logged model or experiment, or not yours to reach.")
    return experiment


def _id(value: str) -> str:
    """A run or logged model id, checked before it goes into a registry query."""
    if not ID.fullmatch(value):
        raise InvalidInput(f"Not a run or logged model id: {value!r}.")
    return value


def _one(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"Pass '{key}' once.")
    return value


def _many(fields: dict[str, Any], key: str) -> list[str]:
    values = fields.get(key)
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not values or len(values) > MAX_NAMED:
        raise InvalidInput(f"Pass '{key}': a list of 1 to {MAX_NAMED} ids.")
    if not all(isinstance(v, str) and ID.fullmatch(v) for v in values):
        raise InvalidInput(f"'{key}' holds ids (strings).")
    return values

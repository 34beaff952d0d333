"""The gateway's API described as OpenAPI 3.1 (`/openapi.json`) and as a page (`/docs`).

The page is rendered here from the same description, with no script or stylesheet fetched from
elsewhere, so it reads the same on a machine with no network.
"""

from __future__ import annotations

import html
import re
from functools import cache
from typing import Any

import orjson

from modelhost import __version__
from modelhost.auth.api import MAX_DAYS
from modelhost.auth.policy import Level
from modelhost.auth.store import Kind
from modelhost.config import EnvManager
from modelhost.control import settings as serving_settings

SERVING = "/api/2.0/preview/mlflow/endpoints"
AUTH = "/api/2.0/modelhost"
METHODS = ("get", "post", "put", "delete")
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]

# What each error status means, wherever an operation answers it; an operation may say more.
ANSWERS = {
    400: "The request is malformed or misses a field; the message says what to send.",
    401: "Only with auth on (`--auth`, or a `--host` that is not loopback): no token, or one "
    "that is unknown, revoked or expired.",
    403: "Only with auth on: the caller lacks the right this needs.",
    404: "Not found; the message says what.",
    408: "The client did not finish sending its headers or body in time; the connection closes.",
    409: "It exists already.",
    413: "The body is larger than the limit the message names.",
    415: "An unsupported content type.",
    429: "Only with auth on: too many failed sign-ins from this address; see `Retry-After`.",
    431: "The request's headers are too large or too many.",
    503: "Not ready yet; see `Retry-After`.",
    504: "No answer within `--timeout`.",
}
# Answered before routing, on every route but /health: reading the request, then signing in.
SIGNED_IN = (401, 408, 429, 431)
NO_GRANT = (
    "Only with auth on: the caller's token lacks {level} on the model (the same answer whether "
    "or not it exists)."
)
NOT_SERVED = "Serving is not enabled for that registered model."
TOKEN_SAID = (
    "With auth on (`--auth`, or a `--host` that is not loopback), a token from `modelhost "
    "tokens create`; an open gateway (loopback, no `--auth`) ignores it."
)
AUTH_OFF = "Auth is off: these routes exist only with `--auth` (or a non-loopback `--host`)."


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(example: Any, schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    content = {"application/json": {"schema": schema, "example": example}}
    return {"description": description, "content": content}


def _answers(
    ok: dict[str, Any], statuses: tuple[int, ...], said: dict[int, str] | None = None
) -> dict[str, Any]:
    """200 `ok`, then each error status with what it means here."""
    said = said or {}
    errors = {str(s): _error(said.get(s, ANSWERS[s])) for s in sorted({*statuses, *SIGNED_IN})}
    return {"200": ok, **errors}


def _object(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


def _list_of(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return _object({key: {"type": "array", "items": item}}, key)


def _body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "example": example}},
    }


def _within(kind: str | list[str], bounds: tuple[Any, Any]) -> dict[str, Any]:
    """A number of `kind` from bounds[0] to bounds[1], both included."""
    return {"type": kind, "minimum": bounds[0], "maximum": bounds[1]}


def _query(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": {"type": "string"},
        "description": description,
    }


NAME = {"type": "string", "minLength": 1}
TEXT = {"type": "string"}
BOOLEAN = {"type": "boolean"}
NODE = _object(
    {"name": TEXT, "url": TEXT, "started_at": {"type": "integer"},
     "seen_at": {"type": "integer"}, "alive": BOOLEAN},
    "name", "url", "started_at", "seen_at", "alive",
)  # fmt: skip
NODE_EXAMPLE = {"name": "node-a", "url": "http://10.0.0.5:8080", "started_at": 1767225600000,
                "seen_at": 1767229200000, "alive": True}  # fmt: skip
HEALTH = _object({"status": TEXT, "registry": BOOLEAN, "state_store": BOOLEAN}, "status")
NAME_QUERY = _query(
    "registered_model_name", "The registered model, e.g. `prod.ml_team.iris_model`.", True
)
ENV_MANAGER = {"enum": [m.value for m in EnvManager]}
# A tag is these two fields and no other (a third is refused).
TAG = {**_object({"key": TEXT, "value": TEXT}, "key"), "additionalProperties": False}
# A served model's settings, each field optional where they are set (control/settings.py).
SETTINGS_FIELDS = {
    "env_manager": ENV_MANAGER,
    "workers": _within("integer", serving_settings.WORKERS),
    "max_batch_size": _within("integer", serving_settings.MAX_BATCH_SIZE),
    "max_batch_delay_ms": _within("number", serving_settings.MAX_BATCH_DELAY_MS),
    "timeout_s": {"type": "number", "exclusiveMinimum": serving_settings.TIMEOUT_S[0],
                  "maximum": serving_settings.TIMEOUT_S[1]},
    "cpus": _within("number", serving_settings.CPUS),
    "memory_mb": _within("integer", serving_settings.MEMORY_MB),
    "min_replicas": _within("integer", serving_settings.REPLICAS),
    "max_replicas": _within("integer", serving_settings.REPLICAS),
    "scale_to_zero_after": _within(["number", "null"], serving_settings.SCALE_TO_ZERO_AFTER_S),
    "tags": {"type": "array", "items": TAG, "maxItems": serving_settings.MAX_TAGS},
}  # fmt: skip
SETTINGS_SAID = (
    "Settings (each optional): `env_manager` (`auto` serves each version in modelhost's own "
    "Python environment when it satisfies the version's requirements, else in one built with "
    "uv; `local` always modelhost's own; `uv` always a built one); `workers`, the worker "
    "processes of the model server; `max_batch_size` and `max_batch_delay_ms`, its batching "
    "limits; `timeout_s`, how long a scoring request may take before it gets 504; "
    "`cpus` and `memory_mb` (MB; 0 reserves none), what each replica of its model server "
    "reserves on a Ray cluster's node, and `min_replicas` to `max_replicas`, how many replicas "
    "it runs there (these four need `modelhost up --engine ray`: with the local engine, a "
    "request that sets `cpus` or `memory_mb`, or replicas above 1, gets 400; "
    "`max_replicas` below `min_replicas` gets 400 too); "
    "`scale_to_zero_after`, seconds without requests after which the model sleeps (its model "
    "servers stop, state `ENDPOINT_STATE_SCALED_TO_ZERO`; the next request wakes it), or null "
    "(the default) to keep it awake; `tags`, the team's own labels (given, they replace the "
    "whole list). A setting not given keeps its value (`modelhost up`'s default until set). "
    "A change of `workers`, batching, `timeout_s`, `cpus` or `memory_mb` starts a model "
    "server with the new settings; each version moves to it once it is ready there, and the "
    "old server stops: no request fails meanwhile."
)
_ENDPOINT_STATUS = {
    "registered_model_name": "iris-demo",
    "state": "ENDPOINT_STATE_READY",
    "state_message": "Ready to answer.",
    "settings": {"env_manager": "auto", "workers": 1, "max_batch_size": 2048,
                 "max_batch_delay_ms": 2, "timeout_s": 60, "cpus": 1, "memory_mb": 0,
                 "min_replicas": 1, "max_replicas": 1, "scale_to_zero_after": None,
                 "tags": [{"key": "team", "value": "fraud"}]},
    "engine": "local",
}  # fmt: skip
ENDPOINT_STATUS = _object(
    {
        "registered_model_name": TEXT,
        "state": TEXT,
        "state_message": TEXT,
        "settings": _object(SETTINGS_FIELDS, *serving_settings.FIELDS),
        "served_versions": {"type": "integer", "minimum": 0},
        # What runs its model servers: the settings the page offers depend on it.
        "engine": {"enum": ["local", "ray"]},
    },
    "registered_model_name",
    "state",
    "state_message",
    "settings",
)
EVENT = _object(
    {
        "timestamp": {"type": "integer"},
        "registered_model_name": TEXT,
        "endpoint_version_name": {"type": ["string", "null"]},
        "message": TEXT,
        "user": {"type": ["string", "null"]},
        "node": {"type": ["string", "null"]},  # which node recorded it
    },
    "timestamp",
    "registered_model_name",
    "message",
)
USER = _object({"name": TEXT, "kind": TEXT, "admin": {"type": "boolean"}}, "name", "kind", "admin")
TOKEN_INFO = _object(
    {
        "id": TEXT,
        "user": TEXT,
        "comment": TEXT,
        "created_at": {"type": "integer"},
        "expires_at": {"type": ["integer", "null"]},
    },
    "id",
    "user",
    "created_at",
)
GRANT = _object(
    {"target": TEXT, "user": TEXT, "level": TEXT, "granted_by": {"type": ["string", "null"]}},
    "target",
    "user",
    "level",
)
EMPTY = _json({}, {"type": "object"})
SESSION = _json(
    {"auth": True, "user": "alice", "admin": False},
    _object(
        {
            "auth": {"type": "boolean"},
            "user": {"type": ["string", "null"]},
            "admin": {"type": "boolean"},
        },
        "auth",
        "user",
        "admin",
    ),
)
_NUMBER_OR_NULL = {"type": ["number", "null"]}
SERIES_POINT = _object(
    {
        "t": {"type": "integer"},
        "requests_per_s": {"type": "number"},
        "p50_ms": _NUMBER_OR_NULL,
        "p99_ms": _NUMBER_OR_NULL,
        "errors_per_s": {"type": "number"},
        "requests": {"type": "integer"},
        "errors": {"type": "integer"},
    },
    "t", "requests_per_s", "p50_ms", "p99_ms", "errors_per_s",
)  # fmt: skip
SERIES_POINT_EXAMPLE = {"t": 1767225600, "requests_per_s": 2.4, "p50_ms": 3.1, "p99_ms": 9.8,
                        "errors_per_s": 0.0, "requests": 12, "errors": 0}  # fmt: skip
_SCORING_EXAMPLE = {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]]}}


BATCH_JOBS = "/api/2.0/modelhost/batch/jobs"
_INT_OR_NULL = {"type": ["integer", "null"]}
_TEXT_OR_NULL = {"type": ["string", "null"]}
_FORMAT = {"enum": ["parquet", "csv", "jsonl"]}
JOB_OPTIONS = {
    "engine": {"enum": ["local", "spark"]},
    "workers": {"type": "integer", "minimum": 1, "maximum": 64},
    "chunk_rows": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
    "input_format": _FORMAT,
    "output_format": _FORMAT,
    "error_threshold": {"type": "integer", "minimum": -1},
    "env_manager": ENV_MANAGER,
}
MODEL_URI_SAID = "models:/NAME/VERSION, models:/NAME/STAGE or models:/NAME@ALIAS"
JOB_REQUEST = {
    **_object(
        {
            "model_uri": {**NAME, "description": MODEL_URI_SAID},
            "registered_model_name": NAME,
            "version": NAME,
            "alias": NAME,
            "stage": NAME,
            "input": {**NAME, "description": "A file, folder or glob under the batch folder"},
            "output": {**NAME, "description": "A folder under the batch folder"},
            **JOB_OPTIONS,
        },
        "input",
        "output",
    ),
    "additionalProperties": False,
}
JOB_SAID = (
    "Name the model by `model_uri` (`models:/NAME/VERSION`, `models:/NAME/STAGE`, "
    "`models:/NAME@ALIAS`), or by `registered_model_name` with exactly one of `version`, `alias` "
    "or `stage`; an alias or stage is resolved now, and the job scores that version even if it "
    "moves. `input` (a file, a folder or a glob) and `output` (a folder) are paths on the "
    "server under its batch folder (`modelhost up --batch-root`); relative ones are taken under "
    "it, and neither may leave it once links and `..` are resolved. Submitting again with the "
    "same output resumes from the parts already written. The job runs in processes of its own, "
    "as model servers do; it is `PENDING` while its model is fetched and its environment "
    "prepared, then `RUNNING`, then `SUCCEEDED`, `FAILED` or `CANCELLED`. A job that was "
    "running when modelhost stopped is `FAILED`, saying so."
)
JOB = _object(
    {
        "job_id": TEXT,
        "registered_model_name": TEXT,
        "version": TEXT,
        "model_uri": TEXT,
        "requested_model_uri": TEXT,
        "input": TEXT,
        "output": TEXT,
        "options": {"type": "object", "properties": JOB_OPTIONS},
        "state": {"enum": ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]},
        "rows_done": {"type": "integer"},
        "rows_total": _INT_OR_NULL,
        "rows_failed": {"type": "integer"},
        "rows_per_s": {"type": "number"},
        "message": _TEXT_OR_NULL,
        "errors_file": _TEXT_OR_NULL,
        "submitter": _TEXT_OR_NULL,
        "created_at": {"type": "integer"},
        "started_at": _INT_OR_NULL,
        "finished_at": _INT_OR_NULL,
        "node": _TEXT_OR_NULL,
    },
    "job_id",
    "registered_model_name",
    "version",
    "state",
    "rows_done",
    "rows_failed",
)
JOB_EXAMPLE = {"model_uri": "models:/iris-demo@champion", "input": "in/iris.parquet",
               "output": "out/iris-scored", "chunk_rows": 50000}  # fmt: skip
JOB_ANSWER_EXAMPLE = {
    "job_id": "3f2a9c1d5e7b8a60", "registered_model_name": "iris-demo", "version": "1",
    "model_uri": "models:/iris-demo/1", "requested_model_uri": "models:/iris-demo@champion",
    "input": "/srv/batch/in/iris.parquet", "output": "/srv/batch/out/iris-scored",
    "options": {"engine": "local", "chunk_rows": 50000, "error_threshold": 0,
                "env_manager": "auto"},
    "state": "RUNNING", "rows_done": 150000, "rows_total": 1000000, "rows_failed": 0,
    "rows_per_s": 61234.5, "message": None, "errors_file": None, "submitter": "alice",
    "created_at": 1767225600000, "started_at": 1767225602000, "finished_at": None,
    "node": "node-a:8080",
}  # fmt: skip
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": NAME,
          "example": "3f2a9c1d5e7b8a60"}  # fmt: skip
JOB_NOT_FOUND = (
    "No such job, or (with auth on) one on a model the caller may not read: the same answer."
)


def _serving_change(summary: str, fields: dict[str, Any], example: dict[str, Any]) -> dict:
    """A POST of the serving API: a registered model's name, and maybe its settings."""
    schema = _object({"registered_model_name": NAME, **fields}, "registered_model_name")
    return {
        "tags": ["Serving"],
        "summary": summary,
        "requestBody": _body(schema, example),
        "responses": _answers(
            EMPTY,
            (400, 403, 404, 413),
            {
                400: "No `registered_model_name` in the body, a bad or unknown setting, or "
                "cluster settings the local engine does not take: the message says what to do.",
                403: NO_GRANT.format(level="MANAGE"),
                404: "The registry has no such registered model, or (to turn serving off or "
                "change its settings) serving is not enabled for it.",
            },
        ),
    }


def _serving_read(summary: str, ok: dict[str, Any], level: str = "READ") -> dict[str, Any]:
    """A GET of the serving API about one registered model."""
    return {
        "tags": ["Serving"],
        "summary": summary,
        "parameters": [NAME_QUERY],
        "responses": _answers(
            ok,
            (400, 403, 404),
            {
                400: "No `registered_model_name` in the query, or more than one.",
                403: NO_GRANT.format(level=level),
                404: NOT_SERVED,
            },
        ),
    }


def _auth_route(
    method: str, summary: str, ok: dict[str, Any], statuses: tuple[int, ...], **more: Any
) -> dict[str, Any]:
    """One route of the identities, tokens and grants API."""
    said = {
        403: "The caller may not do that (admins manage users; MANAGE on a model grants on it).",
        404: AUTH_OFF + " Or: no such user, token or grant.",
    }
    if method == "post":
        statuses = (*statuses, 400, 413)
    operation = {"tags": ["Auth"], "summary": summary, **more}
    operation["responses"] = _answers(ok, (*statuses, 404), said)
    return {method: operation}


_PATHS: dict[str, Any] = {
    "/model/{name}/{ref}/invocations": {
        "post": {
            "tags": ["Scoring"],
            "summary": "Score with a served version, or the version a stage or alias names",
            "description": (
                "`ref` is a version number, a stage (`Production`, `Staging`) or an alias "
                "(`champion`). Names are URL-encoded (`iris%20model`). The body is any form of "
                "MLflow's scoring protocol: MLflow 2+ JSON (`dataframe_split`, "
                "`dataframe_records`, `instances`, `inputs`, optional `params`), CSV, Parquet, "
                "MLflow 1.x JSON (answered as a bare list) or Azure ML's `input_data`. The "
                "`X-Modelhost-Version` header of the answer names the version that gave it. A "
                "request to a sleeping model (see `scale_to_zero_after`) wakes it and waits, at "
                "most the model's `timeout_s`; its answer's `X-Modelhost-Cold-Start-Ms` header "
                "says how long the wake-up took."
            ),
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": NAME,
                    "example": "iris-demo",
                },
                {"name": "ref", "in": "path", "required": True, "schema": NAME, "example": "1"},
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"example": _SCORING_EXAMPLE},
                    "text/csv": {
                        "schema": TEXT,
                        "example": ",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n",
                    },
                    "application/vnd.apache.parquet": {
                        "schema": {"type": "string", "format": "binary"}
                    },
                },
            },
            "responses": {
                **_answers(
                    _json({"predictions": [0]}, {"type": ["object", "array"]}),
                    (400, 403, 404, 413, 415, 503, 504),
                    {
                        400: "The input does not fit the model's signature or the scoring "
                        "protocol; the message says what it expects. Or the path is one the "
                        "gateway refuses, such as an encoded `/` (`%2F`).",
                        403: NO_GRANT.format(level="READ"),
                        404: "No served model of that name, or no version, stage or alias `ref`.",
                        413: "The body is larger than `--max-body-mb`.",
                        503: "The version is still loading, its server restarts, or the "
                        "model is still waking up after `timeout_s`: see `Retry-After`.",
                    },
                ),
                "500": _error("The model raised; the next request is served as usual."),
            },
        }
    },
    f"{SERVING}/enable": {
        "post": {
            **_serving_change(
                "Serve every non-archived version of a registered model",
                SETTINGS_FIELDS,
                {"registered_model_name": "iris-demo", "env_manager": "auto", "workers": 1},
            ),
            "description": SETTINGS_SAID,
        }
    },
    f"{SERVING}/disable": {
        "post": _serving_change(
            "Stop serving a registered model; its model server stops",
            {},
            {"registered_model_name": "iris-demo"},
        )
    },
    f"{SERVING}/update-settings": {
        "post": {
            **_serving_change(
                "Change some of a served model's settings",
                SETTINGS_FIELDS,
                {"registered_model_name": "iris-demo", "workers": 2, "max_batch_size": 64},
            ),
            "description": SETTINGS_SAID + " A new `env_manager` prepares the versions again in "
            "the new environment; each keeps serving from the old one until it is ready in the "
            "new. At least one setting must be given.",
        }
    },
    f"{SERVING}/get-status": {
        "get": _serving_read(
            "The state of a model's serving",
            _json(
                {"endpoint_status": _ENDPOINT_STATUS},
                _object({"endpoint_status": ENDPOINT_STATUS}, "endpoint_status"),
            ),
        )
    },
    f"{SERVING}/list": {
        "get": {
            "tags": ["Serving"],
            "summary": "Every served model and its state (with auth on: those the caller may read)",
            "responses": _answers(
                _json({"endpoints": [_ENDPOINT_STATUS]}, _list_of("endpoints", ENDPOINT_STATUS)),
                (),
            ),
        }
    },
    f"{SERVING}/list-versions": {
        "get": _serving_read(
            "The served versions of a model and their states",
            _json(
                {
                    "endpoint_versions": [
                        {
                            "registered_model_name": "iris-demo",
                            "endpoint_version_name": "1",
                            "state": "VERSION_STATE_READY",
                            "state_message": "Ready.",
                        }
                    ]
                },
                _list_of(
                    "endpoint_versions",
                    _object(
                        {
                            "registered_model_name": TEXT,
                            "endpoint_version_name": TEXT,
                            "state": TEXT,
                            "state_message": TEXT,
                            "stages": {"type": "array", "items": TEXT},
                            "aliases": {"type": "array", "items": TEXT},
                        },
                        "registered_model_name",
                        "endpoint_version_name",
                        "state",
                    ),
                ),
            ),
        )
    },
    f"{SERVING}/events": {
        "get": _serving_read(
            "What happened to a model's serving and its versions, newest first",
            _json(
                {
                    "events": [
                        {
                            "timestamp": 1763939000000,
                            "registered_model_name": "iris-demo",
                            "endpoint_version_name": "1",
                            "message": "Version 1 is ready.",
                            "user": None,
                            "node": "node-a:8080",
                        }
                    ]
                },
                _list_of("events", EVENT),
            ),
        )
    },
    f"{SERVING}/logs": {
        "get": {
            **_serving_read(
                "The model server's log, or one version's part of it",
                _json(
                    {"logs": "... INFO modelhost.worker [version 1]: Version 1 is ready"},
                    _object({"logs": TEXT}, "logs"),
                ),
                level="MANAGE",
            ),
            "parameters": [
                NAME_QUERY,
                _query(
                    "endpoint_version_name", "A version: only its loading output and tracebacks."
                ),
            ],
        }
    },
    f"{AUTH}/whoami": _auth_route(
        "get",
        "Who the caller is",
        _json(
            {"user": {"name": "admin", "kind": "user", "admin": True}},
            _object({"user": USER}, "user"),
        ),
        (),
    ),
    f"{AUTH}/users/create": _auth_route(
        "post",
        "Create a user or service principal (admins)",
        _json(
            {"user": {"name": "alice", "kind": "user", "admin": False}},
            _object({"user": USER}, "user"),
        ),
        (403, 409),
        requestBody=_body(
            _object(
                {
                    "name": NAME,
                    "kind": {"enum": [k.value for k in Kind]},
                    "admin": {"type": "boolean"},
                },
                "name",
            ),
            {"name": "alice", "kind": "user", "admin": False},
        ),
    ),
    f"{AUTH}/users/list": _auth_route(
        "get",
        "Every user and service principal (admins)",
        _json(
            {"users": [{"name": "admin", "kind": "user", "admin": True, "active": True}]},
            _list_of("users", USER),
        ),
        (403,),
    ),
    f"{AUTH}/users/revoke": _auth_route(
        "post",
        "Revoke a user: its tokens stop working at once (admins)",
        EMPTY,
        (403,),
        requestBody=_body(_object({"name": NAME}, "name"), {"name": "alice"}),
    ),
    f"{AUTH}/tokens/create": _auth_route(
        "post",
        "A new token for the caller, or for `user` (admins); answered this once",
        _json(
            {"token": "mh_...", "token_info": {"id": "3f2a", "user": "alice", "created_at": 0}},
            _object({"token": TEXT, "token_info": TOKEN_INFO}, "token", "token_info"),
        ),
        (403,),
        requestBody=_body(
            _object(
                {
                    "user": NAME,
                    "expires_in_days": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": MAX_DAYS,
                    },
                    "comment": TEXT,
                }
            ),
            {"user": "alice", "expires_in_days": 90, "comment": "CI"},
        ),
    ),
    f"{AUTH}/tokens/list": _auth_route(
        "get",
        "Live tokens (ids, never the tokens): the caller's, or `user`'s (admins: all)",
        _json(
            {"tokens": [{"id": "3f2a", "user": "alice", "created_at": 0}]},
            _list_of("tokens", TOKEN_INFO),
        ),
        (403,),
        parameters=[_query("user", "Whose tokens.")],
    ),
    f"{AUTH}/tokens/revoke": _auth_route(
        "post",
        "Revoke a token by its id: your own, or anyone's (admins)",
        EMPTY,
        (403,),
        requestBody=_body(_object({"id": NAME}, "id"), {"id": "3f2a"}),
    ),
    f"{AUTH}/permissions/grant": _auth_route(
        "post",
        "Grant a level on a registered model or a name prefix (needs MANAGE there)",
        EMPTY,
        (403,),
        requestBody=_body(
            _object(
                {"target": NAME, "user": NAME, "level": {"enum": [lv.name for lv in Level]}},
                "target",
                "user",
                "level",
            ),
            {"target": "prod.ml_team.*", "user": "alice", "level": "READ"},
        ),
    ),
    f"{AUTH}/permissions/revoke": _auth_route(
        "post",
        "Revoke a user's grant on a registered model or prefix (needs MANAGE there)",
        EMPTY,
        (403,),
        requestBody=_body(
            _object({"target": NAME, "user": NAME}, "target", "user"),
            {"target": "prod.ml_team.*", "user": "alice"},
        ),
    ),
    f"{AUTH}/permissions/list": _auth_route(
        "get",
        "The grants on `target` (needs MANAGE there), or those of `user` (yours by default)",
        _json(
            {"permissions": [{"target": "prod.*", "user": "alice", "level": "READ"}]},
            _list_of("permissions", GRANT),
        ),
        (403,),
        parameters=[
            _query("target", "A registered model or prefix."),
            _query("user", "Whose grants."),
        ],
    ),
    f"{AUTH}/permissions/audit": _auth_route(
        "get",
        "Who granted, revoked, created, renamed or deleted what on `target` (needs MANAGE)",
        _json(
            {"events": [{"timestamp": 0, "registered_model_name": "prod.*", "message": "."}]},
            _list_of("events", EVENT),
        ),
        (400, 403),
        parameters=[_query("target", "A registered model or prefix.", required=True)],
    ),
    f"{AUTH}/session": {
        method: {
            "tags": ["Page"],
            "summary": summary,
            "description": (
                "The page's sign-in. POST trades a token for the `modelhost_session` cookie "
                "(HttpOnly, SameSite=Strict, Path=/, ending with the browser session; it holds "
                "no token). The cookie signs in wherever a token does, but a change signed in "
                "only by it must come from the gateway's own pages (`Origin` or "
                "`Sec-Fetch-Site: same-origin`). With auth off: `auth` false, everything allowed."
            ),
            "security": [],  # the credential, if any, is the body's token or the cookie
            **more,
            "responses": _answers(SESSION, statuses, said),
        }
        for method, summary, statuses, said, more in (
            ("get", "Who is signed in (answered without a credential too)", (), {}, {}),
            (
                "post",
                "Sign a browser in with a token: sets the session cookie",
                (400, 403, 413),
                {
                    401: "The token is unknown, revoked or expired (a failed sign-in).",
                    403: "Sent from another site's page.",
                },
                {
                    "requestBody": _body(
                        _object({"token": {"type": "string", "minLength": 1}}, "token"),
                        {"token": "mh_..."},
                    )
                },
            ),
            (
                "delete",
                "Sign the browser out: clears the cookie",
                (403,),
                {403: "Sent from another site's page."},
                {},
            ),
        )
    },
    f"{AUTH}/models/permission": {
        "get": {
            "tags": ["Page"],
            "summary": "The caller's own level on a registered model: what the page may offer",
            "description": "`NONE` without a grant (whether or not the model exists); `MANAGE` "
            "for admins and with auth off.",
            "parameters": [NAME_QUERY],
            "responses": _answers(
                _json(
                    {"registered_model_name": "iris-demo", "permission_level": "READ"},
                    _object(
                        {
                            "registered_model_name": TEXT,
                            "permission_level": {"enum": [*(lv.name for lv in Level), "NONE"]},
                        },
                        "registered_model_name",
                        "permission_level",
                    ),
                ),
                (400,),
                {400: "No `registered_model_name` in the query."},
            ),
        }
    },
    f"{AUTH}/models/example": {
        "get": {
            "tags": ["Page"],
            "summary": "A body to score a version with: its logged input example, or a "
            "skeleton from its signature",
            "parameters": [NAME_QUERY, _query("version", "The version, e.g. `1`.", True)],
            "responses": _answers(
                _json(
                    {"example": _SCORING_EXAMPLE, "source": "input_example"},
                    _object(
                        {"example": {}, "source": {"enum": ["input_example", "signature"]}},
                        "example",
                        "source",
                    ),
                ),
                (400, 403, 404, 503),
                {
                    400: "No `registered_model_name` or `version` in the query, or more than one.",
                    403: NO_GRANT.format(level="READ"),
                    404: "No such version, or it was logged with neither an input example nor "
                    "a signature.",
                    503: "The registry did not answer; see `Retry-After`.",
                },
            ),
        }
    },
    f"{AUTH}/nodes": {
        "get": {
            "tags": ["Operations"],
            "summary": "Every node of the state database: its URL, when it started and was "
            "last seen, and whether it is alive",
            "description": "Nodes started with the same `--state-uri` serve the same models. "
            "A node says it is alive twice a second; one not seen for 5 s is not `alive`. "
            "Times in milliseconds. With auth on, for admins only.",
            "responses": _answers(
                _json(
                    {"nodes": [NODE_EXAMPLE]},
                    _list_of("nodes", NODE),
                ),
                (403,),
                {403: "Only with auth on: the caller is not an admin."},
            ),
        }
    },
    f"{AUTH}/metrics/series": {
        "get": {
            "tags": ["Page"],
            "summary": "The last 15 minutes of scoring per version, every `interval_s` seconds",
            "description": "Oldest first; `p50_ms` and `p99_ms` are null in an interval with no "
            "request. Errors are answers with a status of 400 or above.",
            "parameters": [NAME_QUERY],
            "responses": _answers(
                _json(
                    {"interval_s": 5, "versions": {"1": [SERIES_POINT_EXAMPLE]}},
                    _object(
                        {
                            "interval_s": {"type": "number"},
                            "versions": {
                                "type": "object",
                                "additionalProperties": {"type": "array", "items": SERIES_POINT},
                            },
                        },
                        "interval_s",
                        "versions",
                    ),
                ),
                (400, 403),
                {
                    400: "No `registered_model_name` in the query, or more than one.",
                    403: NO_GRANT.format(level="READ"),
                },
            ),
        }
    },
    BATCH_JOBS: {
        "post": {
            "tags": ["Batch"],
            "summary": "Start a batch job: score files under the batch folder with a registered "
            "model version",
            "description": JOB_SAID,
            "requestBody": _body(JOB_REQUEST, JOB_EXAMPLE),
            "responses": _answers(
                _json({"job": JOB_ANSWER_EXAMPLE}, _object({"job": JOB}, "job")),
                (400, 403, 404, 413, 503),
                {
                    400: "A field is missing or wrong, or a path leaves the batch folder; the "
                    "message names the field and says what to send.",
                    403: NO_GRANT.format(level="READ"),
                    404: "The registry has no such version, alias or stage of the model.",
                    503: "modelhost is stopping: submit again once it is up.",
                },
            ),
        },
        "get": {
            "tags": ["Batch"],
            "summary": "The batch jobs on models the caller may read, newest first",
            "parameters": [
                _query("registered_model_name", "Only the jobs on this registered model.")
            ],
            "responses": _answers(
                _json({"jobs": [JOB_ANSWER_EXAMPLE]}, _list_of("jobs", JOB)),
                (400,),
                {400: "An unknown query parameter, or `registered_model_name` more than once."},
            ),
        },
    },
    f"{BATCH_JOBS}/{{job_id}}": {
        "get": {
            "tags": ["Batch"],
            "summary": "One batch job: its state, rows done and total, rows/s and errors",
            "parameters": [JOB_ID],
            "responses": _answers(
                _json({"job": JOB_ANSWER_EXAMPLE}, _object({"job": JOB}, "job")),
                (400, 404),
                {404: JOB_NOT_FOUND},
            ),
        }
    },
    f"{BATCH_JOBS}/{{job_id}}/cancel": {
        "post": {
            "tags": ["Batch"],
            "summary": "Cancel a batch job: SIGTERM to its processes, SIGKILL after a grace period",
            "description": "Answers once the job has ended (CANCELLED), or after a few seconds "
            "with it still ending. A job that has ended already is answered as it is. Its "
            "submitter may cancel it, and anyone with EDIT on its model.",
            "parameters": [JOB_ID],
            "responses": _answers(
                _json({"job": JOB_ANSWER_EXAMPLE}, _object({"job": JOB}, "job")),
                (400, 403, 404),
                {
                    403: "Only with auth on: the caller neither submitted the job nor has EDIT "
                    "on its model.",
                    404: JOB_NOT_FOUND,
                },
            ),
        }
    },
    "/health": {
        "get": {
            "tags": ["Operations"],
            "summary": "200 while this node can serve: its registry and state database answer",
            "description": "Open to all, with auth on too: for load balancers. 503 says which "
            "of the two does not answer (REGISTRY_UNREACHABLE, STATE_STORE_UNREACHABLE).",
            "security": [],
            "responses": {
                "200": _json(
                    {"status": "READY", "registry": True, "state_store": True},
                    HEALTH,
                ),
                "408": _error(ANSWERS[408]),
                "431": _error(ANSWERS[431]),
                "503": _json(
                    {"status": "STATE_STORE_UNREACHABLE", "registry": True, "state_store": False},
                    HEALTH,
                    "Not ready",
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["Operations"],
            "summary": "Prometheus metrics of scoring, per registered model and version",
            "description": (
                "In Prometheus' text format: `modelhost_gateway_requests_total` by "
                "`model_name`, `model_version` and `status_code`; "
                "`modelhost_gateway_request_duration_seconds` (a histogram) by model and "
                "version; `modelhost_gateway_requests_in_flight` by model; and the model "
                "servers' `modelhost_batch_rows` and `modelhost_predict_duration_seconds` by "
                "model and version. `model_version` is the version that answered, empty when "
                'none did; models that are not served count as `model_name=""`. With auth on, '
                "for admins only."
            ),
            "responses": _answers(
                {
                    "description": "OK",
                    "content": {"text/plain": {"schema": TEXT}},
                },
                (403,),
                {403: "Only with auth on: the caller is not an admin."},
            ),
        }
    },
    "/openapi.json": {
        "get": {
            "tags": ["Operations"],
            "summary": "This description, as OpenAPI 3.1",
            "responses": _answers(_json({"openapi": "3.1.0"}, {"type": "object"}), ()),
        }
    },
    "/docs": {
        "get": {
            "tags": ["Operations"],
            "summary": "This description, as a page",
            "responses": _answers(
                {"description": "OK", "content": {"text/html": {"schema": TEXT}}}, ()
            ),
        }
    },
}


@cache
def spec() -> dict[str, Any]:
    """The OpenAPI description of what the gateway answers itself (the registry: MLflow's)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelhost",
            "version": __version__,
            "description": (
                "Every non-archived version of each serving-enabled registered model, as a REST "
                "endpoint. The serving API answers under /api/2.0/preview/mlflow/endpoints/ and "
                "/api/2.0/mlflow/endpoints/. MLflow's own REST API (/api/2.0/mlflow/...) is "
                "passed to the registry: point MLflow's client at this server. With auth on, "
                "send `Authorization: Bearer <token>` (or HTTP Basic with user `token`): no or "
                "a bad token is 401, a token without the right on the model is 403. A method "
                "a path does not take is answered 405, with `Allow` naming those it takes."
            ),
        },
        "paths": _PATHS,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
                    "required": ["error_code", "message"],
                }
            },
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer", "description": TOKEN_SAID},
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "User `token`, "
                    "the token as the password (`curl -u token:$TOKEN`).",
                },
            },
        },
        "security": [{"token": []}, {"basic": []}],
    }


@cache
def spec_json() -> bytes:
    return orjson.dumps(spec())


@cache
def page() -> bytes:
    """The description as one self-contained HTML page."""
    sections = []
    for path, item in spec()["paths"].items():
        shared = item.get("parameters", [])  # the path's own, for each of its operations
        for method, operation in item.items():
            if method in METHODS:
                sections.append(_operation(path, method, operation, shared))
    info = spec()["info"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelhost API</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
  padding: 0 1rem; color: #1d1d1f; }}
h2 {{ font-size: 1.05rem; margin: 2rem 0 .3rem; }}
code, pre {{ font: 13px ui-monospace, monospace; background: #f4f4f6; border-radius: 4px; }}
pre {{ padding: .6rem; overflow-x: auto; }}
.method {{ display: inline-block; min-width: 3.5rem; font-weight: 600; color: #0b5cad; }}
table {{ border-collapse: collapse; }} td {{ padding: .1rem .8rem .1rem 0; vertical-align: top; }}
</style></head><body>
<h1>modelhost API <small>{html.escape(info["version"])}</small></h1>
<p>{_text(info["description"])} Machine-readable: <a href="/openapi.json">/openapi.json</a>.
</p>
{"".join(sections)}
</body></html>
""".encode()


def _operation(path: str, method: str, operation: dict[str, Any], shared: list) -> str:
    parts = [
        f'<h2><span class="method">{method.upper()}</span> <code>{html.escape(path)}</code></h2>',
        f"<p>{_text(operation['summary'])}.</p>",
    ]
    if "description" in operation:
        parts.append(f"<p>{_text(operation['description'])}</p>")
    for parameter in [*shared, *operation.get("parameters", [])]:
        required = "required" if parameter.get("required") else "optional"
        said = parameter.get("description", "")
        if "enum" in parameter["schema"]:
            said += " One of " + ", ".join(f"`{value}`" for value in parameter["schema"]["enum"])
        parts.append(
            f"<p><code>{html.escape(parameter['name'])}</code> ({parameter['in']}, {required})"
            f" {_text(said)}</p>"
        )
    body = operation.get("requestBody", {}).get("content", {})
    example = body.get("application/json", {}).get("example")
    if example is not None:
        shown = orjson.dumps(example, option=orjson.OPT_INDENT_2).decode()
        parts.append(f"<pre>{html.escape(shown)}</pre>")
    rows = "".join(
        f"<tr><td><code>{status}</code></td><td>{_text(answer['description'])}</td></tr>"
        for status, answer in operation["responses"].items()
    )
    parts.append(f"<table>{rows}</table>")
    return "\n".join(parts)


def _text(markdown: str) -> str:
    """Escaped text with its `code spans` shown as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(markdown))

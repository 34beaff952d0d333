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

SERVING = "/api/2.0/preview/mlflow/endpoints"
METHODS = ("get", "post", "put", "delete")
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(example: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


def _name_query(required: bool = True) -> dict[str, Any]:
    return {
        "name": "registered_model_name",
        "in": "query",
        "required": required,
        "schema": {"type": "string"},
        "description": "The registered model, e.g. `prod.ml_team.iris_model`.",
    }


_ENDPOINT_STATUS = {
    "registered_model_name": "iris-demo",
    "state": "ENDPOINT_STATE_READY",
    "state_message": "The model server is up.",
    "settings": {"env_manager": "auto"},
}
_SCORING_EXAMPLE = {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]]}}

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
                "`X-Modelhost-Version` header of the answer names the version that gave it."
            ),
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"example": _SCORING_EXAMPLE},
                    "text/csv": {"example": ",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n"},
                    "application/vnd.apache.parquet": {
                        "schema": {"type": "string", "format": "binary"}
                    },
                },
            },
            "responses": {
                "200": _json({"predictions": [0]}),
                "400": _error(
                    "The input does not fit the model's signature; says what it expects."
                ),
                "404": _error("No served model of that name, or no version, stage or alias `ref`."),
                "413": _error("The body is larger than --max-body-mb."),
                "415": _error("An unsupported content type."),
                "500": _error("The model raised; the next request is served as usual."),
                "503": _error("The version is still loading or its server restarts: Retry-After."),
                "504": _error("No answer within --timeout."),
            },
        }
    },
    f"{SERVING}/enable": {
        "post": {
            "tags": ["Serving"],
            "summary": "Serve every non-archived version of a registered model",
            "description": (
                "`env_manager` (optional): `auto` serves each version in modelhost's own Python "
                "environment when it satisfies the version's requirements, else in one built "
                "with uv; `local` always modelhost's own; `uv` always a built one."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "example": {"registered_model_name": "iris", "env_manager": "auto"}
                    }
                },
            },
            "responses": {
                "200": _json({}),
                "400": _error("No `registered_model_name` in the body."),
                "404": _error("The registry has no such registered model."),
            },
        }
    },
    f"{SERVING}/disable": {
        "post": {
            "tags": ["Serving"],
            "summary": "Stop serving a registered model; its model server stops",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"example": {"registered_model_name": "iris"}}},
            },
            "responses": {"200": _json({}), "404": _error("Serving is not enabled for it.")},
        }
    },
    f"{SERVING}/update-settings": {
        "post": {
            "tags": ["Serving"],
            "summary": "Change a served model's settings: `env_manager`",
            "description": (
                "The versions are prepared again in the new environment; each keeps serving "
                "from the old one until it is ready in the new."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "example": {"registered_model_name": "iris", "env_manager": "uv"}
                    }
                },
            },
            "responses": {
                "200": _json({}),
                "400": _error("`env_manager` is not one of auto, local, uv."),
                "404": _error("Serving is not enabled for it."),
            },
        }
    },
    f"{SERVING}/get-status": {
        "get": {
            "tags": ["Serving"],
            "summary": "The state of a model's serving",
            "parameters": [_name_query()],
            "responses": {
                "200": _json({"endpoint_status": _ENDPOINT_STATUS}),
                "404": _error("Serving is not enabled for it."),
            },
        }
    },
    f"{SERVING}/list": {
        "get": {
            "tags": ["Serving"],
            "summary": "Every served model and its state",
            "responses": {"200": _json({"endpoints": [_ENDPOINT_STATUS]})},
        }
    },
    f"{SERVING}/list-versions": {
        "get": {
            "tags": ["Serving"],
            "summary": "The served versions of a model and their states",
            "parameters": [_name_query()],
            "responses": {
                "200": _json(
                    {
                        "endpoint_versions": [
                            {
                                "registered_model_name": "iris-demo",
                                "endpoint_version_name": "1",
                                "state": "VERSION_STATE_READY",
                                "state_message": "Ready.",
                            }
                        ]
                    }
                ),
                "404": _error("Serving is not enabled for it."),
            },
        }
    },
    f"{SERVING}/events": {
        "get": {
            "tags": ["Serving"],
            "summary": "What happened to a model's serving and its versions, newest first",
            "parameters": [_name_query()],
            "responses": {
                "200": _json(
                    {
                        "events": [
                            {
                                "timestamp": 1763939000000,
                                "registered_model_name": "iris-demo",
                                "endpoint_version_name": "1",
                                "message": "Version 1 is ready.",
                            }
                        ]
                    }
                ),
                "404": _error("Serving is not enabled for it."),
            },
        }
    },
    f"{SERVING}/logs": {
        "get": {
            "tags": ["Serving"],
            "summary": "The model server's log, or one version's part of it",
            "parameters": [
                _name_query(),
                {
                    "name": "endpoint_version_name",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "A version: only its loading output and tracebacks.",
                },
            ],
            "responses": {
                "200": _json({"logs": "... INFO modelhost.worker [version 1]: Version 1 is ready"}),
                "404": _error("Serving is not enabled for it."),
            },
        }
    },
    "/api/2.0/modelhost/{action}": {
        "parameters": [
            {
                "name": "action",
                "in": "path",
                "required": True,
                "schema": {
                    "enum": [
                        "whoami",
                        "users/create",
                        "users/list",
                        "users/revoke",
                        "tokens/create",
                        "tokens/list",
                        "tokens/revoke",
                        "permissions/grant",
                        "permissions/revoke",
                        "permissions/list",
                        "permissions/audit",
                    ]
                },
            }
        ],
        "post": {
            "tags": ["Auth"],
            "summary": "Create or revoke users, tokens and grants (when auth is on)",
            "description": (
                '`users/create` `{"name", "kind": "user" | "service_principal", '
                '"admin"}`; `tokens/create` `{"user", "expires_in_days"}` answers the '
                'token once; `permissions/grant` and `permissions/revoke` `{"target": '
                '"prod.ml_team.*", "user", "level": "READ" | "EDIT" | '
                '"MANAGE"}`. Managing users and tokens is for admins; granting on a model '
                "needs MANAGE on it."
            ),
            "responses": {
                "200": _json({}),
                "401": _error("No token, or one that is unknown, revoked or expired."),
                "403": _error("The caller may not do that."),
            },
        },
        "get": {
            "tags": ["Auth"],
            "summary": "Who the caller is; list users, tokens, grants and audit events",
            "responses": {"200": _json({}), "401": _error("No valid token.")},
        },
    },
    "/health": {
        "get": {
            "tags": ["Operations"],
            "summary": "200 once the registry answers, 503 while it does not",
            "responses": {
                "200": _json({"status": "READY", "registry": True}),
                "503": _json({"status": "REGISTRY_UNREACHABLE", "registry": False}, "Not ready"),
            },
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
                "a bad token is 401, a token without the right on the model is 403."
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
            }
        },
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

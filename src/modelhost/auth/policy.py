"""Which level a request needs on which registered model: MLflow's levels, modelhost's routes.

Levels are MLflow's: READ scores every served version and sees status, versions and events;
EDIT also registers versions and sets tags, aliases and stages; MANAGE also turns serving on and
off, reads logs, deletes and grants. A grant names one registered model or a name prefix ending
in `*` (`prod.ml_team.*`), so three-level names work as catalogs and schemas do.

Experiments, runs and their artifacts are open to every signed-in caller (they hold no
registered model); admins may do everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum


class Level(IntEnum):
    READ = 1
    EDIT = 2
    MANAGE = 3


def parse_level(text: str) -> Level:
    try:
        return Level[text.upper()]
    except KeyError:
        raise ValueError(f"Unknown level {text!r}: use READ, EDIT or MANAGE.") from None


def check_target(target: str) -> str:
    """A registered model name, or a prefix that ends in `*` (and has no other `*`)."""
    if not target or "*" in target[:-1]:
        raise ValueError(
            f"Grant on a registered model name or a prefix ending in '*' "
            f"(like 'prod.ml_team.*'), not {target!r}."
        )
    return target


def covers(grant_target: str, target: str) -> bool:
    """Whether a grant on `grant_target` applies to `target` (a name, or itself a prefix)."""
    if grant_target == target:
        return True
    return grant_target.endswith("*") and target.startswith(grant_target[:-1])


def level_on(grants: Mapping[str, Level], target: str) -> Level | None:
    """The highest level that any of one caller's grants gives on `target`."""
    found = None
    for grant_target, level in grants.items():
        if covers(grant_target, target) and (found is None or level > found):
            found = level
    return found


@dataclass(frozen=True)
class Rule:
    """What one route needs."""

    what: str  # for messages: "Scoring", "Turning serving on for"...
    level: Level | None = None  # on the model `field` names; None: any signed-in caller
    field: str | None = None  # where the model's name is: the query (GET) or the JSON body
    admin: bool = False  # admins only
    filter_key: str | None = None  # a list in the answer: keep the entries the caller may read
    create: bool = False  # creating a registered model (see Access.may_create)
    after: str | None = None  # grant upkeep once the registry has done it: create | rename | delete


ANY_CALLER = Rule("Calling")
ADMIN_ONLY = Rule("Calling", admin=True)
SCORING = Rule("Scoring", Level.READ)

_NAME = "name"
# MLflow's registry REST API (under /api/2.0/mlflow/ and /ajax-api/2.0/mlflow/), mapped as
# MLflow's own auth app maps it (mlflow/server/auth), with MLflow's levels.
REGISTRY: dict[tuple[str, str], Rule] = {
    ("POST", "registered-models/create"): Rule(
        "Creating", Level.EDIT, _NAME, create=True, after="create"
    ),
    ("POST", "registered-models/rename"): Rule("Renaming", Level.MANAGE, _NAME, after="rename"),
    ("PATCH", "registered-models/update"): Rule("Updating", Level.EDIT, _NAME),
    ("DELETE", "registered-models/delete"): Rule("Deleting", Level.MANAGE, _NAME, after="delete"),
    ("GET", "registered-models/get"): Rule("Reading", Level.READ, _NAME),
    ("GET", "registered-models/search"): Rule("Searching", filter_key="registered_models"),
    ("POST", "registered-models/get-latest-versions"): Rule("Reading", Level.READ, _NAME),
    ("GET", "registered-models/get-latest-versions"): Rule("Reading", Level.READ, _NAME),
    ("POST", "registered-models/set-tag"): Rule("Tagging", Level.EDIT, _NAME),
    ("DELETE", "registered-models/delete-tag"): Rule("Untagging", Level.EDIT, _NAME),
    ("POST", "registered-models/alias"): Rule("Setting an alias of", Level.EDIT, _NAME),
    ("DELETE", "registered-models/alias"): Rule("Deleting an alias of", Level.EDIT, _NAME),
    ("GET", "registered-models/alias"): Rule("Reading", Level.READ, _NAME),
    ("POST", "model-versions/create"): Rule("Registering a version of", Level.EDIT, _NAME),
    ("PATCH", "model-versions/update"): Rule("Updating a version of", Level.EDIT, _NAME),
    ("POST", "model-versions/transition-stage"): Rule("Moving a stage of", Level.EDIT, _NAME),
    ("DELETE", "model-versions/delete"): Rule("Deleting a version of", Level.MANAGE, _NAME),
    ("GET", "model-versions/get"): Rule("Reading", Level.READ, _NAME),
    ("GET", "model-versions/search"): Rule("Searching", filter_key="model_versions"),
    ("GET", "model-versions/get-download-uri"): Rule("Reading", Level.READ, _NAME),
    ("POST", "model-versions/set-tag"): Rule("Tagging a version of", Level.EDIT, _NAME),
    ("DELETE", "model-versions/delete-tag"): Rule("Untagging a version of", Level.EDIT, _NAME),
}
# Routes of these families that the table above does not know are refused to all but admins.
REGISTRY_FAMILIES = ("registered-models/", "model-versions/", "webhooks")
REGISTRY_ROOTS = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")

_SERVED = "registered_model_name"
SERVING: dict[tuple[str, str], Rule] = {
    ("POST", "enable"): Rule("Turning serving on for", Level.MANAGE, _SERVED),
    ("POST", "disable"): Rule("Turning serving off for", Level.MANAGE, _SERVED),
    ("POST", "update-settings"): Rule("Changing the serving settings of", Level.MANAGE, _SERVED),
    ("GET", "get-status"): Rule("Reading the status of", Level.READ, _SERVED),
    ("GET", "list-versions"): Rule("Reading the versions of", Level.READ, _SERVED),
    ("GET", "events"): Rule("Reading the events of", Level.READ, _SERVED),
    ("GET", "logs"): Rule("Reading the logs of", Level.MANAGE, _SERVED),
    ("GET", "list"): Rule("Listing", filter_key="endpoints"),
}
# Serving actions not listed here are refused to all but the model's managers.
SERVING_OTHER = Rule("Changing serving of", Level.MANAGE, _SERVED)


def registry_rule(method: str, path: str) -> Rule:
    """The rule for a request to the registry (MLflow's REST API) behind the gateway."""
    for root in REGISTRY_ROOTS:
        if path.startswith(root):
            route = path[len(root) :]
            rule = REGISTRY.get((method, route))
            if rule is not None:
                return rule
            if route.startswith(REGISTRY_FAMILIES):
                return ADMIN_ONLY  # fail closed on registry routes this table does not know
    return ANY_CALLER


def serving_rule(method: str, action: str) -> Rule:
    return SERVING.get((method, action), SERVING_OTHER)

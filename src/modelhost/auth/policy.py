"""Which level a request needs, and on what: MLflow's levels, modelhost's routes.

Levels are MLflow's: READ scores every served version and sees status, versions and events;
EDIT also registers versions and sets tags, aliases and stages; MANAGE also turns serving on and
off, reads logs, deletes and grants. A grant names one registered model, a name prefix ending
in `*` (`prod.ml_team.*`, so three-level names work as catalogs and schemas do), or an
experiment (`experiment:<id>`), whose runs, logged models and files follow it.

What these tables do not name under MLflow's API roots is for admins, who may do everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from modelhost.errors import InvalidInput


class Level(IntEnum):
    READ = 1
    EDIT = 2
    MANAGE = 3


def parse_level(text: str) -> Level:
    try:
        return Level[text.upper()]
    except KeyError:
        raise ValueError(f"Unknown level {text!r}: use READ, EDIT or MANAGE.") from None


EXPERIMENT = "experiment:"  # a grant on an experiment targets `experiment:<id>`


def check_target(target: str) -> str:
    """A registered model name, a prefix that ends in `*` (and has no other `*`), or
    `experiment:<id>`."""
    if target.startswith(EXPERIMENT):
        if not target[len(EXPERIMENT) :].isdigit():
            raise ValueError(f"Grant on an experiment by its id ('experiment:12'), not {target!r}.")
        return target
    if not target or "*" in target[:-1]:
        raise ValueError(
            f"Grant on a registered model name, a prefix ending in '*' (like 'prod.ml_team.*') "
            f"or an experiment ('experiment:12'), not {target!r}."
        )
    return target


def parse_default_permission(text: str) -> Level | None:
    """`--default-experiment-permission`: a level, or NO_PERMISSIONS (None)."""
    if text.upper() == "NO_PERMISSIONS":
        return None
    try:
        return parse_level(text)
    except ValueError:
        raise ValueError(
            f"Unknown permission {text!r}: use READ, EDIT, MANAGE or NO_PERMISSIONS."
        ) from None


def check_model_name(name: str) -> None:
    """A registered model's name may not hold what grants read as a prefix."""
    if "*" in name:
        raise InvalidInput(
            f"A registered model name cannot contain '*' ({name!r}): grants read '*' as 'any "
            "name that starts with' (like 'prod.ml_team.*'). Choose a name without it."
        )


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
    paged: bool = False  # a registry search, whose every page is read to filter (auth/search.py)
    experiment: Level | None = None  # on the experiment(s) that `locate` finds
    locate: str | None = None  # where the request names it: see auth/experiments.py
    files: bool = False  # it touches files, which may be a registered model version's
    redact: bool = False  # logged models in the answer: hide the versions the caller may not read
    admin_fields: tuple[str, ...] = ()  # fields of the request only admins may set


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
    ("GET", "registered-models/search"): Rule(
        "Searching", filter_key="registered_models", paged=True
    ),
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
    ("GET", "model-versions/search"): Rule("Searching", filter_key="model_versions", paged=True),
    ("GET", "model-versions/get-download-uri"): Rule("Reading", Level.READ, _NAME),
    ("POST", "model-versions/set-tag"): Rule("Tagging a version of", Level.EDIT, _NAME),
    ("DELETE", "model-versions/delete-tag"): Rule("Untagging a version of", Level.EDIT, _NAME),
}


def _on(level: Level, locate: str, what: str, **more) -> Rule:
    return Rule(what, experiment=level, locate=locate, **more)


_R, _E, _M = Level.READ, Level.EDIT, Level.MANAGE
_CHANGES = ("update", "set-tag", "delete-tag", "log-batch", "log-inputs", "log-metric",
            "log-model", "log-parameter", "outputs")  # fmt: skip
# MLflow's tracking API behind /api/2.0/mlflow/ (and /ajax-api/2.0/mlflow/, for its UI):
# experiments, runs and logged models follow their experiment's permissions as MLflow's auth
# app has them (READ to read, EDIT to change, MANAGE to delete; whoever creates an experiment
# manages it), and the files of a registered model's versions need READ on the model
# (auth/experiments.py). `*` is one path segment, `**` the rest of the path.
TRACKING: dict[tuple[str, str], Rule] = {
    # Where an experiment's files go is the server's business: a stranger's run must not list
    # or fill the server's own folders.
    ("POST", "experiments/create"): Rule(
        "Creating an experiment", after="experiment", admin_fields=("artifact_location",)
    ),
    ("GET", "experiments/get"): _on(_R, "experiment_id", "Reading"),
    ("GET", "experiments/get-by-name"): _on(_R, "experiment_name", "Reading"),
    ("GET", "experiments/search"): Rule("Searching experiments", filter_key="experiments"),
    ("POST", "experiments/search"): Rule("Searching experiments", filter_key="experiments"),
    ("POST", "experiments/update"): _on(_E, "experiment_id", "Renaming"),
    ("POST", "experiments/set-experiment-tag"): _on(_E, "experiment_id", "Tagging"),
    ("POST", "experiments/delete-experiment-tag"): _on(_E, "experiment_id", "Untagging"),
    ("POST", "experiments/delete"): _on(_M, "experiment_id", "Deleting"),
    ("POST", "experiments/restore"): _on(_M, "experiment_id", "Restoring"),
    ("POST", "runs/create"): _on(_E, "experiment_id", "Creating a run in"),
    ("GET", "runs/get"): _on(_R, "run", "Reading a run of"),
    ("POST", "runs/search"): _on(_R, "experiment_ids", "Searching the runs of"),
    **{("POST", f"runs/{change}"): _on(_E, "run", "Changing a run of") for change in _CHANGES},
    ("POST", "runs/delete"): _on(_M, "run", "Deleting a run of"),
    ("POST", "runs/restore"): _on(_M, "run", "Restoring a run of"),
    ("GET", "metrics/get-history"): _on(_R, "run", "Reading a run of"),
    ("GET", "metrics/get-history-bulk"): _on(_R, "run_ids", "Reading runs of"),
    ("GET", "metrics/get-history-bulk-interval"): _on(_R, "run_ids", "Reading runs of"),
    ("GET", "artifacts/list"): _on(_R, "run", "Reading", files=True),
    ("POST", "logged-models"): _on(_E, "experiment_id", "Logging a model in"),
    ("POST", "logged-models/search"): _on(_R, "experiment_ids", "Searching", redact=True),
    ("GET", "logged-models/*"): _on(_R, "logged_model", "Reading a model of", redact=True),
    ("PATCH", "logged-models/*"): _on(_E, "logged_model", "Changing a model of"),
    ("DELETE", "logged-models/*"): _on(_M, "logged_model", "Deleting a model of"),
    ("POST", "logged-models/*/params"): _on(_E, "logged_model", "Changing a model of"),
    ("PATCH", "logged-models/*/tags"): _on(_E, "logged_model", "Tagging a model of"),
    ("DELETE", "logged-models/*/tags/*"): _on(_E, "logged_model", "Untagging a model of"),
    ("GET", "logged-models/*/artifacts/files"): _on(_R, "logged_model", "Reading", files=True),
    ("GET", "logged-models/*/artifacts/directories"): _on(
        _R, "logged_model", "Reading", files=True
    ),
}
# The artifact store behind /api/2.0/mlflow-artifacts/ (and /ajax-api/...).
ARTIFACTS: dict[tuple[str, str], Rule] = {
    ("GET", "artifacts"): _on(_R, "path_query", "Reading", files=True),
    ("GET", "artifacts/**"): _on(_R, "path", "Reading", files=True),
    ("PUT", "artifacts/**"): _on(_E, "path", "Writing", files=True),
    ("DELETE", "artifacts/**"): _on(_M, "path", "Deleting", files=True),
    **{("POST", f"mpu/{step}/**"): _on(_E, "path", "Writing", files=True)
       for step in ("create", "complete", "abort")},
}  # fmt: skip


def registry_rule(method: str, root: str, route: str) -> Rule:
    """The rule for `method` on `route` under one of MLflow's API roots behind the gateway.

    Fails closed: whatever these tables do not name (webhooks, MLflow's GenAI and AI gateway
    APIs, routes of a newer MLflow, HEAD and OPTIONS) is for admins only.
    """
    if root.endswith("/mlflow-artifacts/"):
        return _find(ARTIFACTS, method, route) or ADMIN_ONLY
    if root.endswith("/2.0/mlflow/"):
        return REGISTRY.get((method, route)) or _find(TRACKING, method, route) or ADMIN_ONLY
    return ADMIN_ONLY


def _find(table: dict[tuple[str, str], Rule], method: str, route: str) -> Rule | None:
    segments = route.split("/")
    for (listed, pattern), rule in table.items():
        if listed == method and _match(pattern.split("/"), segments):
            return rule
    return None


def _match(pattern: list[str], segments: list[str]) -> bool:
    if pattern[-1] == "**":
        head = pattern[:-1]
        return len(segments) > len(head) and _match(head, segments[: len(head)])
    return len(pattern) == len(segments) and all(
        p in ("*", s) and s != "" for p, s in zip(pattern, segments, strict=True)
    )


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


def serving_rule(method: str, action: str) -> Rule:
    return SERVING.get((method, action), SERVING_OTHER)


# Batch jobs (/api/2.0/modelhost/batch/jobs...): a job's model is known only once the job is
# found by its id, so the gateway (batch/jobs_service.py) checks these itself, with what the
# signed-in caller may do (`CALLER` in the request's scope). A job on a model the caller may
# not read is not found (404), so it reveals nothing.
JOB_SUBMIT = Level.READ  # on the registered model the job scores
JOB_READ = Level.READ  # to see a job: `list` shows only these
JOB_CANCEL = Level.EDIT  # to cancel another's job; whoever submitted it may cancel it with READ
CALLER = "modelhost.caller"


@dataclass(frozen=True)
class Caller:
    """Who signed in, and what they may do on registered models."""

    name: str
    admin: bool
    level_on: Callable[[str], Level | None]  # a registered model's name -> their level

    def may(self, name: str, needed: Level) -> bool:
        found = self.level_on(name)
        return found is not None and found >= needed

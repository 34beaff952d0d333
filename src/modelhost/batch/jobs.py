"""Batch jobs on the platform: what a job is, and what a request to start one must say.

A job names a registered model version (an alias or a stage is resolved to the version it
points to when the job is submitted, so the job scores that version even if the alias moves),
an input and an output under the platform's batch folder (batch/jobs_paths.py), and the
options of `modelhost batch run`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from modelhost.config import EnvManager
from modelhost.errors import InvalidInput

FORMATS = ("parquet", "csv", "jsonl")
ENGINES = ("local", "spark")
STAGES = ("None", "Staging", "Production", "Archived")
MAX_WORKERS = 64


class JobState(StrEnum):
    PENDING = "PENDING"  # submitted: its model is being fetched, its process not started yet
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class ModelRef:
    """A registered model and exactly one of a version, an alias or a stage (or `latest`)."""

    name: str
    version: str | None = None
    alias: str | None = None
    stage: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version or self.stage}"


@dataclass(frozen=True)
class JobOptions:
    """How the job scores: the options of `modelhost batch run` a caller may set."""

    engine: str = "local"
    workers: int | None = None  # None: the runner's default (one per core)
    chunk_rows: int = 50_000
    input_format: str | None = None
    output_format: str | None = None
    error_threshold: int = 0
    env_manager: str = EnvManager.AUTO.value

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def runner_flags(self) -> list[str]:
        """The options as `modelhost batch run` flags (the environment is the platform's)."""
        flags = ["--engine", self.engine, "--chunk-rows", str(self.chunk_rows),
                 "--error-threshold", str(self.error_threshold)]  # fmt: skip
        if self.workers is not None:
            flags += ["--workers", str(self.workers)]
        if self.input_format is not None:
            flags += ["--input-format", self.input_format]
        if self.output_format is not None:
            flags += ["--output-format", self.output_format]
        return flags


@dataclass(frozen=True)
class JobRequest:
    """A request to start a job, checked: which model, which files (as given), how."""

    model: ModelRef
    input: str
    output: str
    options: JobOptions = field(default_factory=JobOptions)


_VERSION = re.compile(r"[1-9][0-9]*")
_MODEL_URI = (
    "a model_uri of the form models:/NAME/VERSION, models:/NAME/STAGE or models:/NAME@ALIAS, "
    "or registered_model_name with one of version, alias or stage"
)
_FIELDS = {"model_uri", "registered_model_name", "version", "alias", "stage", "input", "output",
           *JobOptions.__dataclass_fields__}  # fmt: skip


def parse_request(body: Any) -> JobRequest:
    """The request of `POST .../batch/jobs`; InvalidInput naming the field that is wrong."""
    if not isinstance(body, dict):
        raise InvalidInput(f"Send a JSON object with {_MODEL_URI}, 'input' and 'output'.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidInput(
            f"Unknown field '{unknown[0]}'. A job takes {', '.join(sorted(_FIELDS))}."
        )
    model = _model(body)
    paths = {name: _text(body, name) for name in ("input", "output")}
    for name, value in paths.items():
        if value is None:
            raise InvalidInput(
                f"Pass '{name}': a path under the platform's batch folder (`modelhost up "
                "--batch-root`); a relative path is taken under it."
            )
    return JobRequest(model, paths["input"] or "", paths["output"] or "", _options(body))


def _model(body: dict[str, Any]) -> ModelRef:
    uri = _text(body, "model_uri")
    name = _text(body, "registered_model_name")
    refs = {k: _text(body, k) for k in ("version", "alias", "stage")}
    given = [k for k, v in refs.items() if v is not None]
    if uri is not None:
        if name is not None or given:
            raise InvalidInput(
                f"Pass either 'model_uri' or 'registered_model_name' with {' | '.join(refs)}, "
                "not both."
            )
        return parse_model_uri(uri)
    if name is None:
        raise InvalidInput(f"Name the model to score with: pass {_MODEL_URI}.")
    if len(given) != 1:
        raise InvalidInput(
            f"Pass exactly one of 'version', 'alias' or 'stage' with 'registered_model_name' "
            f"(got {', '.join(given) or 'none'})."
        )
    return _ref(name, **refs)


def parse_model_uri(uri: str) -> ModelRef:
    """`models:/NAME/VERSION|STAGE|latest` or `models:/NAME@ALIAS`; nothing else (no path,
    no runs:/): a job scores a registered model version that its caller may read."""
    if not uri.startswith("models:/") or uri.startswith("models://"):
        raise InvalidInput(
            f"'model_uri' {uri!r} is not a registered model: send {_MODEL_URI}. Jobs score "
            "registered model versions only (not paths or runs:/ URIs)."
        )
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        return _ref(name, alias=alias)
    name, _, ref = rest.rpartition("/")
    if not name or not ref:
        raise InvalidInput(f"'model_uri' {uri!r} names no version: send {_MODEL_URI}.")
    if _VERSION.fullmatch(ref):
        return _ref(name, version=ref)
    return _ref(name, stage=ref)


def _ref(
    name: str, version: str | None = None, alias: str | None = None, stage: str | None = None
) -> ModelRef:
    if not name or "*" in name:
        raise InvalidInput(f"{name!r} is not a registered model name.")
    if version is not None and not _VERSION.fullmatch(version):
        raise InvalidInput(f"'version' must be a version number like 3, not {version!r}.")
    if alias is not None and not alias:
        raise InvalidInput("'alias' is empty: name an alias of the model.")
    if stage is not None:
        known = {s.lower(): s for s in (*STAGES, "latest")}
        if stage.lower() not in known:
            raise InvalidInput(
                f"{stage!r} is neither a version number nor a stage: use a version, one of "
                f"{', '.join(STAGES)} or latest, or @ALIAS for an alias."
            )
        stage = known[stage.lower()]
    return ModelRef(name, version, alias, stage)


def _options(body: dict[str, Any]) -> JobOptions:
    defaults = JobOptions()
    engine = _choice(body, "engine", ENGINES) or defaults.engine
    env_manager = _choice(body, "env_manager", tuple(m.value for m in EnvManager))
    return JobOptions(
        engine=engine,
        workers=_integer(body, "workers", 1, MAX_WORKERS),
        chunk_rows=_integer(body, "chunk_rows", 1, 10_000_000) or defaults.chunk_rows,
        input_format=_choice(body, "input_format", FORMATS),
        output_format=_choice(body, "output_format", FORMATS),
        error_threshold=_threshold(body),
        env_manager=env_manager or defaults.env_manager,
    )


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidInput(f"'{name}' must be a non-empty string, not {value!r}.")
    return value


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if value not in choices:
        raise InvalidInput(f"'{name}' must be one of {', '.join(choices)}, not {value!r}.")
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"'{name}' must be a whole number from {low} to {high}, not {value!r}.")
    return value


def _threshold(body: dict[str, Any]) -> int:
    value = body.get("error_threshold")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise InvalidInput(
            f"'error_threshold' must be the number of rows that may fail (0 or more), or -1 "
            f"to never stop, not {value!r}."
        )
    return value

"""A served model's settings: what they are, their defaults, and the one place they are checked.

`env_manager` says which Python environment its versions run in; `runtime` is what its model
servers run with (a change starts new servers, and the routes move once they are ready); `tags`
are the team's own labels and change nothing that runs; `scale_to_zero_after` lets an idle model
sleep (its servers stop; the next request wakes it) and, like tags, starts no new server.
`cpus` and `memory_mb` (part of the runtime) and `min_replicas`/`max_replicas` (its scale) place
replicas of its model server on a Ray cluster: with the local engine a model runs one server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from modelhost.config import EnvManager, ServeSettings
from modelhost.errors import InvalidInput

# Allowed ranges, inclusive (timeout: above its lower bound).
WORKERS = (1, 16)  # processes per model server, each holding every version
MAX_BATCH_SIZE = (1, 100_000)
MAX_BATCH_DELAY_MS = (0.0, 10_000.0)
TIMEOUT_S = (0.0, 86_400.0)
SCALE_TO_ZERO_AFTER_S = (1.0, 30 * 86_400.0)  # seconds without requests before a model sleeps
CPUS = (0.1, 256.0)  # logical CPUs each replica reserves on a cluster node
MEMORY_MB = (0, 4_194_304)  # memory each replica reserves on a node, in MB; 0: none (4 TB)
REPLICAS = (1, 64)  # replicas of a model's server on a cluster, each holding every version
MAX_TAGS = 50
TAG_KEY_CHARS = 250  # as MLflow's own tags
TAG_VALUE_CHARS = 5000

RUNTIME_FIELDS = (
    "workers", "max_batch_size", "max_batch_delay_ms", "timeout_s", "cpus", "memory_mb",
)  # fmt: skip
SCALE_FIELDS = ("min_replicas", "max_replicas")
FIELDS = ("env_manager", *RUNTIME_FIELDS, *SCALE_FIELDS, "scale_to_zero_after", "tags")
# What places replicas on a Ray cluster: a local engine runs one model server per model.
CLUSTER_FIELDS = ("cpus", "memory_mb", *SCALE_FIELDS)
LOCAL_ENGINE = "local"


@dataclass(frozen=True)
class Runtime:
    """What a model server runs with: worker processes, batching limits, scoring timeout."""

    workers: int = 1
    max_batch_size: int = ServeSettings.max_batch_size
    max_batch_delay_ms: float = ServeSettings.max_batch_delay_ms
    timeout_s: float = ServeSettings.timeout_s
    # What one replica reserves on a cluster node (--engine ray): logical CPUs, and memory in
    # MB (0: none reserved). Part of the runtime because a change places servers anew.
    cpus: float = 1.0
    memory_mb: int = 0

    def worker_options(self) -> list[str]:
        """The `modelhost worker` flags that run a server with these."""
        return [
            "--workers", str(self.workers),
            "--max-batch-size", str(self.max_batch_size),
            "--max-batch-delay-ms", f"{self.max_batch_delay_ms:g}",
            "--timeout", f"{self.timeout_s:g}",
        ]  # fmt: skip


Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scale:
    """How many replicas a model's server runs on a cluster: from `min_replicas` up to
    `max_replicas` as its load asks. Not part of the runtime: a change adds or removes replicas
    of the running server, it starts no new one."""

    min_replicas: int = 1
    max_replicas: int = 1


@dataclass(frozen=True)
class ServingSettings:
    """Every setting of one served model, each either set for it or the platform's default."""

    env_manager: str = EnvManager.AUTO.value
    runtime: Runtime = field(default_factory=Runtime)
    tags: Tags = ()
    scale_to_zero_after: float | None = None  # None: it never sleeps
    scale: Scale = field(default_factory=Scale)

    def to_json(self) -> dict[str, Any]:
        """As the serving API shows them."""
        runtime = self.runtime
        return {
            "env_manager": self.env_manager,
            "workers": runtime.workers,
            "max_batch_size": runtime.max_batch_size,
            "max_batch_delay_ms": _number(runtime.max_batch_delay_ms),
            "timeout_s": _number(runtime.timeout_s),
            "cpus": _number(runtime.cpus),
            "memory_mb": runtime.memory_mb,
            "min_replicas": self.scale.min_replicas,
            "max_replicas": self.scale.max_replicas,
            "scale_to_zero_after": _number_or_none(self.scale_to_zero_after),
            "tags": [{"key": key, "value": value} for key, value in self.tags],
        }

    def with_set(self, stored: Mapping[str, Any]) -> ServingSettings:
        """These (the platform's defaults) with what a model sets for itself (`parse`'s shape)."""
        runtime = replace(self.runtime, **{k: stored[k] for k in RUNTIME_FIELDS if k in stored})
        return ServingSettings(
            stored.get("env_manager", self.env_manager),
            runtime,
            stored.get("tags", self.tags),
            stored.get("scale_to_zero_after", self.scale_to_zero_after),
            replace(self.scale, **{k: stored[k] for k in SCALE_FIELDS if k in stored}),
        )


def platform_defaults(env_manager: str, timeout_s: float) -> ServingSettings:
    """What a model that sets nothing is served with: `modelhost up`'s own settings."""
    return ServingSettings(EnvManager(env_manager).value, Runtime(timeout_s=float(timeout_s)))


def parse(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a request sets, checked, by field (tags as `Tags`); InvalidInput names the
    first that is wrong and what it may be. Fields it does not give are not in the result."""
    unknown = sorted(set(fields) - set(FIELDS) - {"registered_model_name"})
    if unknown:
        raise InvalidInput(f"Unknown setting {unknown[0]!r}; the settings are {', '.join(FIELDS)}.")
    given = {k: fields[k] for k in FIELDS if k in fields}
    parsed: dict[str, Any] = {}
    if "env_manager" in given:
        parsed["env_manager"] = _env_manager(given["env_manager"])
    if "workers" in given:
        parsed["workers"] = _integer("workers", given["workers"], WORKERS, "worker processes")
    if "max_batch_size" in given:
        parsed["max_batch_size"] = _integer(
            "max_batch_size", given["max_batch_size"], MAX_BATCH_SIZE, "rows per predict call"
        )
    if "max_batch_delay_ms" in given:
        parsed["max_batch_delay_ms"] = _ranged_number(
            "max_batch_delay_ms", given["max_batch_delay_ms"], MAX_BATCH_DELAY_MS,
            "milliseconds", "how long a batch waits for more requests",
        )  # fmt: skip
    if "timeout_s" in given:
        low, high = TIMEOUT_S
        value = given["timeout_s"]
        if not _is_number(value) or not low < value <= high:
            raise InvalidInput(
                f"timeout_s must be a number of seconds above {low:g} and at most {high:g} "
                f"(how long a scoring request may take before it gets 504), not {value!r}."
            )
        parsed["timeout_s"] = float(value)
    if "cpus" in given:
        parsed["cpus"] = _ranged_number(
            "cpus", given["cpus"], CPUS, "logical CPUs",
            "what each replica reserves on a cluster node",
        )  # fmt: skip
    if "memory_mb" in given:
        parsed["memory_mb"] = _integer(
            "memory_mb", given["memory_mb"], MEMORY_MB,
            "MB each replica reserves on a cluster node (0: none)",
        )  # fmt: skip
    for key in SCALE_FIELDS:
        if key in given:
            parsed[key] = _integer(key, given[key], REPLICAS, "replicas of the model's server")
    if "scale_to_zero_after" in given:
        parsed["scale_to_zero_after"] = _scale_to_zero_after(given["scale_to_zero_after"])
    if "tags" in given:
        parsed["tags"] = _tags(given["tags"])
    return parsed


def changes(before: ServingSettings, after: ServingSettings) -> list[str]:
    """What differs, as events say it: "workers 1 → 2"."""
    was, now = before.to_json(), after.to_json()
    said = []
    for key in FIELDS:
        if was[key] == now[key]:
            continue
        if key == "tags":
            said.append(f"tags {_show_tags(before.tags)} → {_show_tags(after.tags)}")
        elif key == "scale_to_zero_after":
            said.append(f"{key} {_show_off(was[key])} → {_show_off(now[key])}")
        else:
            said.append(f"{key} {was[key]} → {now[key]}")
    return said


def check(after: ServingSettings, given: Mapping[str, Any], engine: str) -> None:
    """InvalidInput if `given` (`parse`'s shape) cannot apply on `engine` (local, ray), or
    leaves `after` (the model's settings with `given` set) with fewer replicas allowed than it
    must run."""
    if engine == LOCAL_ENGINE:
        # One replica is what the local engine runs: saying so asks for nothing it lacks.
        placed = [
            k for k in CLUSTER_FIELDS if k in given and (k not in SCALE_FIELDS or given[k] > 1)
        ]
        if placed:
            raise InvalidInput(
                f"This request sets {', '.join(placed)}, which place replicas on a Ray cluster; "
                "this modelhost runs its model servers locally. Start modelhost with "
                "`--engine ray --ray-address ADDRESS` to use them; locally, `workers` is what "
                "adds processes."
            )
    scale = after.scale
    if scale.max_replicas < scale.min_replicas:
        raise InvalidInput(
            f"max_replicas {scale.max_replicas} is below min_replicas {scale.min_replicas}; "
            "set both in one request, with max_replicas at least min_replicas."
        )


def _env_manager(value: Any) -> str:
    allowed = {m.value for m in EnvManager}
    if not isinstance(value, str) or value not in allowed:
        raise InvalidInput(
            f"env_manager must be one of {', '.join(m.value for m in EnvManager)}, not "
            f"{value!r}: auto serves a version in modelhost's own environment when that "
            "satisfies its requirements and builds one with uv otherwise, local always uses "
            "modelhost's own, uv always builds one."
        )
    return value


def _integer(key: str, value: Any, bounds: tuple[int, int], what: str) -> int:
    low, high = bounds
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 2.0 from a JavaScript number is 2
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{key} must be a whole number of {what} from {low} to {high}, "
                           f"not {value!r}.")  # fmt: skip
    return value


def _ranged_number(key: str, value: Any, bounds: tuple[float, float], what: str, why: str) -> float:
    low, high = bounds
    if not _is_number(value) or not low <= value <= high:
        raise InvalidInput(f"{key} must be a number of {what} from {low:g} to {high:g} ({why}), "
                           f"not {value!r}.")  # fmt: skip
    return float(value)


def _scale_to_zero_after(value: Any) -> float | None:
    if value is None:
        return None  # turned off: the model never sleeps
    low, high = SCALE_TO_ZERO_AFTER_S
    if not _is_number(value) or not low <= value <= high:
        raise InvalidInput(
            f"scale_to_zero_after must be a number of seconds from {low:.0f} to {high:.0f} "
            "(how long a model may go without requests before its servers stop; the next "
            f"request wakes it), or null to keep it awake, not {value!r}."
        )
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _tags(value: Any) -> Tags:
    shape = 'tags must be a list of {"key": "<name>", "value": "<text>"}'
    if not isinstance(value, list):
        raise InvalidInput(f"{shape}, not {value!r}.")
    if len(value) > MAX_TAGS:
        raise InvalidInput(f"At most {MAX_TAGS} tags, not {len(value)}.")
    tags: dict[str, str] = {}
    for tag in value:
        if not isinstance(tag, dict) or set(tag) - {"key", "value"}:
            raise InvalidInput(f"{shape}; {tag!r} is not one.")
        key, text = tag.get("key"), tag.get("value", "")
        if not isinstance(key, str) or not key.strip() or len(key) > TAG_KEY_CHARS:
            raise InvalidInput(
                f"A tag's key must be text of 1 to {TAG_KEY_CHARS} characters, not {key!r}."
            )
        if not isinstance(text, str) or len(text) > TAG_VALUE_CHARS:
            raise InvalidInput(
                f"The value of tag {key!r} must be text of at most {TAG_VALUE_CHARS} characters."
            )
        if key in tags:
            raise InvalidInput(f"Tag {key!r} is given twice; each key may appear once.")
        tags[key] = text
    return tuple(tags.items())


def _show_tags(tags: Tags) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in tags) + "}"


def _show_off(value: Any) -> str:
    return "off" if value is None else f"{value} s"


def _number_or_none(value: float | None) -> int | float | None:
    return None if value is None else _number(value)


def _number(value: float) -> int | float:
    """60.0 shows as 60, as it was most likely given."""
    return int(value) if float(value).is_integer() else value

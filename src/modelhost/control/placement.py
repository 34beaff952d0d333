"""Getting a model version ready for a model server: its artifacts fetched, its environment built.

Each version's artifacts are fetched once into `<home>/models/<sha1(name)[:12]>/<version>/`,
its requirements read from them and its environment prepared under `<home>/envs/`, on a thread
of its own, so a build never holds up the reconcile loop, other versions or other models. What
happens is written to the model's log with the version's tag, as the model servers write theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from modelhost import logs
from modelhost.config import EnvManager
from modelhost.control.environments import (
    MARKER,
    Environment,
    EnvironmentFailed,
    environment_key,
    prepare,
    stop_builds,
)
from modelhost.control.isolation import Isolation, open_tree
from modelhost.control.requirements import (
    Requirements,
    RequirementsError,
    read_requirements,
    unmet_here,
)
from modelhost.errors import ModelhostError

log = logging.getLogger("modelhost.controller")

FETCHED = ".modelhost-fetched.json"  # written last: the folder holds the version's artifacts
PREPARING_THREADS = 4  # builds, downloads: slow, and mostly waiting on disk, network and uv
_FORMATTER = logging.Formatter(logs.FORMAT)

Record = Callable[[str, str, str], None]  # (name, message, version): an event
PreparationKey = tuple[str, str, str]  # (registered model name, version, env_manager)


class PreparationState(StrEnum):
    PREPARING = "PREPARING"
    PREPARED = "PREPARED"
    FAILED = "FAILED"


class FetchFailed(ModelhostError):
    """The version's artifacts could not be fetched from the registry's artifact store."""


class Stopping(Exception):
    """modelhost is stopping: the preparation in progress gives up."""


@dataclass(frozen=True)
class Preparation:
    """One version's preparation with one env_manager: how far it got, and what it made."""

    name: str
    version: str
    manager: str
    state: PreparationState = PreparationState.PREPARING
    message: str = "Fetching the version's artifacts."
    local_path: Path | None = None
    environment: Environment | None = None
    failures: int = 0  # failed preparations of this version in a row
    retry_at: float | None = None  # when a failed preparation may be tried again (loop clock)

    @property
    def key(self) -> PreparationKey:
        return (self.name, self.version, self.manager)


@dataclass
class Placement:
    """A preparation under way: its thread updates `shown`, a new frozen value each step."""

    shown: Preparation
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class VersionLog:
    """Lines about one version, appended to its model's log in the format of every modelhost log."""

    def __init__(self, path: Path, version: str) -> None:
        self.path = path
        self.version = version

    def __call__(self, line: str, level: int = logging.INFO) -> None:
        record = logging.LogRecord("modelhost.environment", level, __file__, 0, line, None, None)
        record.version_tag = f" {logs.tag(self.version)}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(_FORMATTER.format(record) + "\n")


class Preparer:
    """Prepares versions on its own threads; `start` returns at once, `view()` shows progress."""

    def __init__(
        self,
        home: Path,
        registry_url: str,
        record: Record,
        isolation: Isolation,
        logs: Callable[[str], Path],
        changed: Callable[[], None],
    ) -> None:
        self.isolation = isolation
        self.models = home / "models"
        self.envs = home / "envs"
        self.registry_url = registry_url
        self.registry = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self.record = record  # (name, message, version) events, thread-safe
        self.logs = logs  # a model's name -> its log file
        self.changed = changed  # called on the event loop when a preparation ends
        self._pool = ThreadPoolExecutor(PREPARING_THREADS, thread_name_prefix="modelhost-prepare")
        self._placements: dict[PreparationKey, Placement] = {}
        self._stopping = False

    def view(self) -> dict[PreparationKey, Preparation]:
        return {key: placement.shown for key, placement in self._placements.items()}

    def start(
        self, name: str, version: str, manager: str, identity: str, failures: int = 0
    ) -> None:
        """Begin preparing `version` of `name`; `identity` tells its artifacts from others'."""
        self.forget((name, version, manager))
        placement = Placement(Preparation(name, version, manager, failures=failures))
        self._placements[placement.shown.key] = placement
        version_log = VersionLog(self.logs(name), version)
        placement.task = asyncio.create_task(
            self._run(placement, identity, version_log), name=f"prepare {name} {version}"
        )

    def forget(self, key: PreparationKey) -> None:
        """Drop a preparation, giving it up if it still runs."""
        placement = self._placements.pop(key, None)
        if placement is not None and placement.task is not None:
            placement.task.cancel()

    def stop(self) -> None:
        """Give up the preparations in progress; a build under way is killed at once, not left
        to run until uv's next line of output (the process waits for it as it exits)."""
        self._stopping = True
        for key in list(self._placements):
            self.forget(key)
        self._pool.shutdown(wait=False, cancel_futures=True)
        stop_builds()

    async def _run(self, placement: Placement, identity: str, version_log: VersionLog) -> None:
        loop = asyncio.get_running_loop()
        shown = placement.shown
        try:
            local_path, environment = await loop.run_in_executor(
                self._pool, self._prepare, placement, identity, version_log
            )
        except (EnvironmentFailed, RequirementsError) as e:
            self._fail(placement, e.message, version_log)
        except Stopping:
            return
        except Exception as e:  # the registry, the artifact store or the disk: say what it was
            for line in traceback.format_exc().splitlines():
                version_log(line, logging.ERROR)
            message = (
                e.message
                if isinstance(e, FetchFailed)
                else f"Could not prepare version {shown.version}: {type(e).__name__}: {e}"
            )
            self._fail(placement, message, version_log)
        else:
            placement.shown = replace(
                shown,
                state=PreparationState.PREPARED,
                message="Prepared.",
                local_path=local_path,
                environment=environment,
                failures=0,
                retry_at=None,
            )
        self.changed()

    def _fail(self, placement: Placement, message: str, version_log: VersionLog) -> None:
        loop = asyncio.get_running_loop()
        shown = placement.shown
        failures = shown.failures + 1
        delay = retry_delay(failures)
        placement.shown = replace(
            shown,
            state=PreparationState.FAILED,
            message=message,
            failures=failures,
            retry_at=loop.time() + delay,
        )
        version_log(f"Version {shown.version} failed to load: {message}", logging.ERROR)
        version_log(
            f"Trying again in {delay // 60} min, or when serving is turned on again or its "
            "env_manager changes.",
            logging.ERROR,
        )
        log.warning("Version %s of %s cannot be served: %s", shown.version, shown.name, message)

    def _prepare(
        self, placement: Placement, identity: str, version_log: VersionLog
    ) -> tuple[Path, Environment]:
        """On a preparing thread: fetch, read, build. Raises what stops the version."""
        started = time.monotonic()
        name, version = placement.shown.name, placement.shown.version
        local_path = self._fetch(name, version, identity, version_log)
        requirements = read_requirements(local_path)
        manager = EnvManager(placement.shown.manager)
        if _will_build(requirements, manager, self.envs):
            declared = requirements.source or "no requirements"
            message = (
                f"Building the Python environment the model declares ({declared}); see the "
                "version's logs."
            )
            self.record(
                name, f"Version {version}: building the Python environment it declares.", version
            )
        else:
            message = "Preparing the Python environment the model declares."
        placement.shown = replace(placement.shown, message=message)  # one assignment: safe

        def build_log(line: str) -> None:
            if self._stopping:  # raised inside the build's output loop, which then kills uv
                raise Stopping("modelhost is stopping.")
            version_log(line)

        environment = prepare(requirements, manager, self.envs, build_log, self.isolation)
        self.record(name, _environment_event(version, environment), version)
        seconds = time.monotonic() - started
        version_log(f"Version {version} is prepared in {seconds:.1f} s; handing it to its server.")
        return local_path, environment

    def _fetch(self, name: str, version: str, identity: str, version_log: VersionLog) -> Path:
        return fetch_version(
            self.models, self.registry, self.registry_url, self.isolation,
            name, version, identity, version_log,
        )  # fmt: skip


def fetch_version(
    models: Path,
    registry: MlflowClient,
    registry_url: str,
    isolation: Isolation,
    name: str,
    version: str,
    identity: str,
    version_log: Callable[[str], None],
) -> Path:
    """The version's model folder under `models`, fetched unless it already is.

    The model's folder (all its versions) is the gate its servers' group passes through.
    Batch jobs (batch/jobs_manager.py) fetch their version here too.
    """
    gate = models / hashlib.sha1(name.encode()).hexdigest()[:12]
    folder = gate / version
    gate.mkdir(parents=True, exist_ok=True)
    isolation.open_gate(gate, isolation.group(f"model:{name}"))
    fetched = _fetched(folder, identity)
    if fetched is not None:
        version_log(f"Using the artifacts of version {version} fetched before, in {folder}.")
        return fetched
    version_log(f"Fetching the artifacts of version {version} into {folder}.")
    partial = folder.with_name(f".{version}-{secrets.token_hex(4)}")
    try:
        # Resolved with our client: `models:/` URIs would be looked up in the process-wide
        # registry, which is not necessarily the one this platform serves.
        source = registry.get_model_version_download_uri(name, version)
        try:
            downloaded = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(partial), tracking_uri=registry_url
            )
        except Exception as e:
            raise FetchFailed(
                f"Could not fetch the model of version {version} from {source}: "
                f"{type(e).__name__}: {e} A version's source must be an MLflow model: a "
                "folder with an MLmodel file."
            ) from e
        model = Path(downloaded).resolve().relative_to(partial.resolve())
        record = {"identity": identity, "model": str(model)}
        (partial / FETCHED).write_text(json.dumps(record))
        if isolation.enabled:
            open_tree(partial)  # read-only to the model's servers, behind its gate
        if folder.exists() and _fetched(folder, identity) is None:
            shutil.rmtree(folder)  # half-fetched, or another model's that had this name
        try:
            os.replace(partial, folder)
        except OSError:  # another preparation of this version fetched it meanwhile
            if _fetched(folder, identity) is None:
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    fetched = _fetched(folder, identity)
    assert fetched is not None, "fetched just now"
    return fetched


def retry_delay(failures: int) -> int:
    """Seconds before a version that failed to prepare is tried again: 10 min, then hourly."""
    return 600 if failures <= 1 else 3600


def _fetched(folder: Path, identity: str) -> Path | None:
    """The model folder fetched into `folder` for `identity`; None if it is not there (whole)."""
    try:
        record = json.loads((folder / FETCHED).read_text())
    except (OSError, ValueError):
        return None
    if record.get("identity") != identity:
        return None
    return folder / record["model"]


def _will_build(requirements: Requirements, manager: EnvManager, root: Path) -> bool:
    """Whether preparing will build an environment (rather than use one that exists)."""
    if manager is EnvManager.LOCAL:
        return False
    if manager is EnvManager.AUTO and unmet_here(requirements) is None:
        return False
    return not (root / environment_key(requirements) / MARKER).is_file()


def _environment_event(version: str, environment: Environment) -> str:
    if environment.current:
        return f"Version {version} runs in modelhost's own Python environment."
    if environment.built:
        return f"Version {version}: built the Python environment {environment.key}."
    return f"Version {version} uses the Python environment {environment.key}, built before."

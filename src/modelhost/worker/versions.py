"""The model versions one server holds, each loaded and unloaded while the others serve on."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from modelhost.config import ServeSettings
from modelhost.errors import Conflict
from modelhost.logs import VERSION
from modelhost.worker import metrics
from modelhost.worker.batching import Batcher
from modelhost.worker.model import ServedModel

log = logging.getLogger("modelhost.worker")


class VersionState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass
class Version:
    """One version: where it comes from, how far it got, and once ready, its model and batcher."""

    name: str
    model_uri: str
    local_path: str | None = None  # its artifacts, fetched already; None: download them
    state: VersionState = VersionState.LOADING
    message: str = "Loading the model."
    model: ServedModel | None = None
    batcher: Batcher | None = None
    metadata: bytes = b"{}"
    _loading: asyncio.Task[None] | None = field(default=None, repr=False)
    _stop_logged: bool = field(default=False, repr=False)  # its batcher's end is logged

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.name,
            "model_uri": self.model_uri,
            "state": self.state.value,
            "message": self.message,
        }

    def stopped(self) -> tuple[str, BaseException | None] | None:
        """Why this ready version can answer no request (its batcher's loop ended), or None.

        Cheap enough for every request: one look at the batcher until it has stopped.
        """
        if self.state != VersionState.READY or self.batcher is None:
            return None
        return self.batcher.ended()


class Versions:
    """Loads versions off the event loop, so a version that loads or fails never stalls the rest."""

    def __init__(self, settings: ServeSettings, tag_logs: bool) -> None:
        self.settings = settings
        self.tag_logs = tag_logs  # mark each log line with the version it is about
        self._versions: dict[str, Version] = {}

    def get(self, name: str) -> Version | None:
        return self._versions.get(name)

    def describe(self) -> list[dict[str, Any]]:
        return [version.describe() for version in self._versions.values()]

    def fault(self, version: Version) -> str | None:
        """What keeps a ready version from answering, logged once when first seen; or None."""
        stopped = version.stopped()
        if stopped is None:
            return None
        reason, error = stopped
        if not version._stop_logged:
            version._stop_logged = True
            log.error(
                "The batcher of version %s stopped (%s); its requests get 503 and /health says "
                "UNHEALTHY until this server is restarted.",
                version.name, reason, exc_info=error,
                extra={"version": version.name} if self.tag_logs else None,
            )  # fmt: skip
        return f"The batcher of version {version.name} stopped: {reason}"

    def faults(self) -> list[str]:
        """What makes this server unhealthy: each ready version whose batcher has stopped.

        Versions loading or failed to load are not faults of the server: their states say so.
        """
        return [fault for version in self._versions.values() if (fault := self.fault(version))]

    def adopt(self, name: str, model: ServedModel) -> Version:
        """Hold a model loaded before the server started; `start()` readies it."""
        version = Version(name, model.uri, model.local_path)
        self._versions[name] = version
        self._ready(version, model, start=False)
        return version

    async def start(self) -> None:
        """Start the batchers of adopted versions, now that the event loop runs."""
        for version in self._versions.values():
            if version.batcher is not None:
                version.batcher.start()

    def load(self, name: str, model_uri: str, local_path: str | None = None) -> Version:
        """Begin loading `model_uri` as version `name`; loading it again retries a failure.

        `local_path` holds the model's artifacts when they were fetched already (the platform
        fetches each version once, to read what it needs). A registry version's artifacts never
        change, so a name holds one URI for good: another URI for a name already held is a
        conflict, to be unloaded first.
        """
        current = self._versions.get(name)
        if current is not None and current.model_uri != model_uri:
            raise Conflict(
                f"Version {name} already holds {current.model_uri}; DELETE it before loading "
                f"{model_uri} under that name."
            )
        if current is not None and current.state != VersionState.FAILED:
            return current
        version = Version(name, model_uri, local_path)
        self._versions[name] = version
        version._loading = asyncio.create_task(self._load(version))
        return version

    async def _load(self, version: Version) -> None:
        if self.tag_logs:
            VERSION.set(version.name)  # this task's own context, and its loading thread's
        log.info("Loading version %s from %s", version.name, version.model_uri)
        try:
            model = await asyncio.to_thread(ServedModel.load, version.model_uri, version.local_path)
        except Exception as e:
            log.exception("Version %s failed to load from %s", version.name, version.model_uri)
            version.state = VersionState.FAILED
            version.message = f"Could not load {version.model_uri}: {type(e).__name__}: {e}"
            return
        if self._versions.get(version.name) is not version:
            return  # unloaded while it loaded
        self._ready(version, model, start=True)
        log.info("Version %s is ready", version.name)

    def _ready(self, version: Version, model: ServedModel, *, start: bool) -> None:
        batcher = Batcher(
            model,
            self.settings.max_batch_size,
            self.settings.max_batch_delay_ms / 1000,
            metrics.observe_predict,
            version.name if self.tag_logs else None,
        )
        if start:
            batcher.start()
        version.model, version.batcher = model, batcher
        version.metadata = orjson.dumps(model.describe(), option=orjson.OPT_NON_STR_KEYS)
        version.state, version.message = VersionState.READY, "Ready."
        # What loading made lives as long as the version: keep it out of every garbage
        # collection, which would otherwise walk MLflow's and pandas' objects per request.
        gc.freeze()

    async def unload(self, name: str) -> bool:
        version = self._versions.pop(name, None)
        if version is None:
            return False
        await _stop(version)
        log.info("Version %s is unloaded", name, extra={"version": name} if self.tag_logs else None)
        return True

    async def close(self) -> None:
        for name in list(self._versions):
            await self.unload(name)


async def _stop(version: Version) -> None:
    if version._loading is not None and not version._loading.done():
        version._loading.cancel()
    if version.batcher is not None:
        await version.batcher.stop()

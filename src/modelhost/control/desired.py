"""Reading what should be served: the served models' settings, and their versions in the registry.

Read on a thread every interval (and at once when nudged), never on the event loop: a slow or
absent registry makes what is known older, and holds up nothing. What could not be read keeps
its last known value, so a registry that is away stops no model from serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from mlflow import MlflowClient

from modelhost.control.plan import DesiredModel
from modelhost.control.routes import frozen
from modelhost.control.settings import Runtime, ServingSettings
from modelhost.control.store import StateStore

log = logging.getLogger("modelhost.controller")


class DesiredReader:
    def __init__(
        self,
        store: StateStore,
        registry_url: str,
        defaults: ServingSettings,
        changed: Callable[[], None],
        interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.registry = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self.defaults = defaults  # what a model that sets nothing is served with
        self.changed = changed  # called on the event loop when what is desired has changed
        self.interval_s = interval_s
        self.latest: dict[str, DesiredModel] = {}
        self._wake = asyncio.Event()
        self._unreadable: set[str] = set()  # said once, not every second

    def nudge(self) -> None:
        """Read again now (serving turned on or off, a setting changed)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                read = await asyncio.to_thread(self.read)
            except Exception as e:  # the state store away: keep what is known
                log.warning("Could not read the served models from the state store: %s", e)
            else:
                if read != self.latest:
                    self.latest = read
                    self.changed()
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def read(self) -> dict[str, DesiredModel]:
        """On a thread: every served model as it should be served now."""
        desired = {}
        for name, stored in self.store.served().items():
            settings = self.defaults.with_set(stored)
            manager, runtime = settings.env_manager, settings.runtime
            known = self.latest.get(name)
            try:
                desired[name] = self._read_model(name, manager, runtime)
            except Exception as e:
                if name not in self._unreadable:
                    self._unreadable.add(name)
                    log.warning("Could not read %s from the registry: %s", name, e)
                if known is None:
                    desired[name] = DesiredModel(name, manager, runtime=runtime)
                else:  # serve on what was known, with the settings as they are now
                    desired[name] = DesiredModel(
                        name, manager, known.versions, known.aliases, known.identities, runtime
                    )
            else:
                if name in self._unreadable:
                    self._unreadable.discard(name)
                    log.info("Read %s from the registry again.", name)
            desired[name] = dataclasses.replace(
                desired[name], scale_to_zero_after=settings.scale_to_zero_after
            )
        return desired

    def _read_model(self, name: str, manager: str, runtime: Runtime) -> DesiredModel:
        quoted = name.replace("'", "\\'")
        found = [
            v
            for v in self.registry.search_model_versions(f"name = '{quoted}'")
            if v.current_stage != "Archived" and v.status in (None, "READY")
        ]
        versions = {v.version: v.current_stage or "None" for v in found}
        identities = {v.version: f"{v.source} {v.creation_timestamp}" for v in found}
        aliases = dict(self.registry.get_registered_model(name).aliases or {})
        served_aliases = {a: str(v) for a, v in aliases.items() if str(v) in versions}
        return DesiredModel(
            name, manager, frozen(versions), frozen(served_aliases), frozen(identities), runtime
        )

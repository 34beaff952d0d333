"""Reading what should be served: the served models' settings, and their versions in the registry.

Read on a thread every interval (and at once when nudged), never on the event loop: a slow or
absent registry makes what is known older, and holds up nothing. What could not be read keeps
its last known value, so a registry that is away stops no model from serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.entities.paged_list import PagedList

from modelhost.control.plan import DesiredModel
from modelhost.control.routes import EMPTY, frozen
from modelhost.control.settings import ServingSettings
from modelhost.control.store import StateStore

log = logging.getLogger("modelhost.controller")
T = TypeVar("T")
# Characters of the names in one search filter: MLflow's REST client sends it in the URL, and
# servers refuse request lines past a few kilobytes.
FILTER_CHARS = 2000
MODELS_PER_PAGE = 1000  # the most MLflow returns in one page of registered models
VERSIONS_PER_PAGE = 10_000  # MLflow's own page of model versions


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
        self.read_once = False  # until then, `latest` says nothing: it was never read
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
                if read != self.latest or not self.read_once:
                    self.latest, self.read_once = read, True
                    self.changed()
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def read(self) -> dict[str, DesiredModel]:
        """On a thread: every served model as it should be served now."""
        served = self.store.served()
        found, failures = self._read_registry(list(served))
        desired = {}
        for name, stored in served.items():
            settings = self.defaults.with_set(stored)
            registered: Registered | DesiredModel | None = found.get(name)
            if registered is None:
                if name not in self._unreadable:
                    self._unreadable.add(name)
                    why = failures.get(name, "it is not in the registry")
                    log.warning("Could not read %s from the registry: %s", name, why)
                registered = self.latest.get(name)  # serve on what was known, if anything
            elif name in self._unreadable:
                self._unreadable.discard(name)
                log.info("Read %s from the registry again.", name)
            desired[name] = DesiredModel(
                name,
                settings.env_manager,
                registered.versions if registered is not None else None,
                registered.aliases if registered is not None else EMPTY,
                registered.identities if registered is not None else EMPTY,
                settings.runtime,
                settings.scale_to_zero_after,
                settings.scale,
            )
        return desired

    def _read_registry(self, names: list[str]) -> tuple[dict[str, Registered], dict[str, str]]:
        """What the registry holds of each of `names`, and why any other was not read."""
        # A few searches for all the names, not two calls a model: a hundred served models
        # read one by one every second kept the registry busy on half a core.
        found: dict[str, Registered] = {}
        failures: dict[str, str] = {}
        todo = list(_chunks(names))
        while todo:
            chunk = todo.pop()
            try:
                found.update(self._read_chunk(chunk))
            except MlflowException as e:
                if e.error_code == "INVALID_PARAMETER_VALUE" and len(chunk) > 1:
                    # A name this registry's filters cannot say refuses the whole search:
                    # read each alone, so that only that name goes unread.
                    todo.extend([name] for name in chunk)
                else:
                    failures.update(dict.fromkeys(chunk, str(e)))
            except Exception as e:  # the registry away: every name of the chunk unread
                failures.update(dict.fromkeys(chunk, str(e)))
        return found, failures

    def _read_chunk(self, names: list[str]) -> dict[str, Registered]:
        among = f"name IN ({', '.join(_quoted(name) for name in names)})"
        versions: dict[str, list[ModelVersion]] = {name: [] for name in names}
        for version in _all_pages(
            lambda token: self.registry.search_model_versions(
                among,
                max_results=VERSIONS_PER_PAGE,
                order_by=["name ASC", "version_number ASC"],
                page_token=token,
            )
        ):
            if version.current_stage != "Archived" and version.status in (None, "READY"):
                versions.setdefault(version.name, []).append(version)
        # Versions carry no aliases in a search; their registered models do.
        models = _all_pages(
            lambda token: self.registry.search_registered_models(
                among, max_results=MODELS_PER_PAGE, page_token=token
            )
        )
        return {
            m.name: _registered(versions[m.name], m.aliases) for m in models if m.name in versions
        }


@dataclass(frozen=True)
class Registered:
    """What the registry holds of one served model: its servable versions and their aliases."""

    versions: Mapping[str, str]  # version -> stage
    aliases: Mapping[str, str]  # alias -> version, only aliases of servable versions
    identities: Mapping[str, str]  # version -> what its artifacts are (source, time)


def _registered(found: list[ModelVersion], aliases: dict[str, str] | None) -> Registered:
    versions = {str(v.version): v.current_stage or "None" for v in found}
    identities = {str(v.version): f"{v.source} {v.creation_timestamp}" for v in found}
    served_aliases = {a: str(v) for a, v in (aliases or {}).items() if str(v) in versions}
    return Registered(frozen(versions), frozen(served_aliases), frozen(identities))


def _quoted(name: str) -> str:
    """`name` as a string of an MLflow search filter."""
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _chunks(names: list[str]) -> Iterator[list[str]]:
    """`names` in groups whose filter stays short: it travels in a URL, which servers cap."""
    chunk: list[str] = []
    length = 0
    for name in names:
        size = len(_quoted(name)) + 2
        if chunk and length + size > FILTER_CHARS:
            yield chunk
            chunk, length = [], 0
        chunk.append(name)
        length += size
    if chunk:
        yield chunk


def _all_pages(search: Callable[[str | None], PagedList[T]]) -> Iterator[T]:
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return

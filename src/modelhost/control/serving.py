"""What the gateway may ask of the control plane, and nothing more.

The current route table (published whole by the controller), the serving settings and events
kept in the state store, turning serving on and off, where a model's log is, and on the scoring
path: noting that a model got a request, and waking a sleeping one. Every call that reaches the
registry or the database runs on a thread, off the event loop that answers scoring; turning
serving on or off nudges the controller to read it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelhost.control.routes import (
    EndpointState,
    ModelRoutes,
    RouteBoard,
    RouteTable,
    VersionState,
)
from modelhost.control.settings import FIELDS, LOCAL_ENGINE, ServingSettings, changes, check
from modelhost.control.store import StateStore
from modelhost.errors import InvalidInput, NotFound, NotReady

log = logging.getLogger("modelhost.gateway")

# How long a wake-up is followed at most (its requests each wait at most their model's timeout):
# one that takes longer is left to the controller, and its event is not written.
WAKE_WATCHED_S = 3600.0


@dataclass(frozen=True)
class Waking:
    """A sleeping model being woken for a request; requests that come meanwhile wait for it."""

    started: float  # the event loop's clock
    asleep: ModelRoutes  # its routes when the request came: which references it has
    done: asyncio.Task


class ServingControl:
    def __init__(
        self,
        store: StateStore,
        registry_url: str,
        defaults: ServingSettings,
        board: RouteBoard,
        nudge: Callable[[], None],
        log_path: Callable[[str], Path],
        engine: str = LOCAL_ENGINE,
    ) -> None:
        self.store = store
        self.registry = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self.defaults = defaults  # what a model that sets nothing is served with
        self.board = board
        self.nudge = nudge
        self.log_path = log_path  # a served model's name -> its model servers' log
        self.engine = engine  # what runs model servers: local processes, or a Ray cluster
        self._waking: dict[str, Waking] = {}

    @property
    def routes(self) -> RouteTable:
        return self.board.table

    @property
    def starting(self) -> bool:
        """Whether this node has yet to read which models it serves."""
        return self.board.starting

    async def enable(self, name: str, settings: dict[str, Any], actor: str | None) -> None:
        """Turn serving on, with `settings` (checked by control/settings.py `parse`) if any."""
        await asyncio.to_thread(self._must_exist, name)
        if settings:  # refused before serving is turned on, not after
            before = (await self.served()).get(name, self.defaults)
            check(before.with_set(settings), settings, self.engine)
        if await asyncio.to_thread(self.store.enable, name):
            await self._record(name, "Serving turned on.", actor)
        if settings:
            await self._update(name, settings, actor)
        self.nudge()

    async def disable(self, name: str, actor: str | None) -> None:
        await self.must_be_served(name)
        if await asyncio.to_thread(self.store.disable, name):
            await self._record(name, "Serving turned off.", actor)
        self.nudge()

    async def update_settings(self, name: str, settings: dict[str, Any], actor: str | None) -> None:
        """Change the settings given, keep the others; the controller applies them."""
        await self.must_be_served(name)
        if not settings:
            raise InvalidInput(f"Send at least one setting to change: {', '.join(FIELDS)}.")
        await self._update(name, settings, actor)
        self.nudge()

    def requested(self, name: str) -> None:
        """Note that served model `name` got a scoring request now: it is not idle."""
        self.board.last_request[name] = asyncio.get_running_loop().time()

    def sleeping(self, name: str) -> bool:
        """Whether served model `name` sleeps, or is being woken: a request must `wake` it."""
        routes = self.board.table.models.get(name)
        return name in self._waking or (
            routes is not None and routes.state is EndpointState.SCALED_TO_ZERO
        )

    async def wake(self, name: str, ref: str, timeout_s: float) -> float | None:
        """Wake sleeping model `name` for a request to `ref` (a version, stage or alias) and
        wait, at most `timeout_s`, for `ref`'s route to be ready; the milliseconds the wake-up
        has taken then (None if it was awake after all). NotFound if the model has no `ref` (it
        stays asleep); NotReady on timeout. Requests that come while it wakes share its wake-up."""
        loop = asyncio.get_running_loop()
        waking = self._waking.get(name)
        if waking is None:
            asleep = self.board.table.models.get(name)
            if asleep is None or asleep.state is not EndpointState.SCALED_TO_ZERO:
                return None  # awake meanwhile (or turned off): routing says what follows
            if asleep.resolve(ref) is None:
                raise NotFound(f"No served model '{name}' with a version, stage or alias '{ref}'.")
            started = loop.time()
            self.board.last_request[name] = started  # what the controller wakes it for
            done = asyncio.create_task(self._woken(name, started), name=f"waking {name}")
            waking = self._waking[name] = Waking(started, asleep, done)
            self.nudge()
        elif waking.asleep.resolve(ref) is None:
            raise NotFound(f"No served model '{name}' with a version, stage or alias '{ref}'.")
        try:
            async with asyncio.timeout(timeout_s):
                while not waking.done.done() and not _ready(self.board.table, name, ref):
                    await self.board.next_table()
        except TimeoutError:
            raise NotReady(
                f"'{name}' was asleep and is still waking up after {timeout_s:g} s (its "
                "timeout_s); send again shortly."
            ) from None
        return (loop.time() - waking.started) * 1000

    async def _woken(self, name: str, started: float) -> None:
        """Follow a wake-up until the model is ready (then say how long it took) or cannot be."""
        try:
            woke = await self._awake(name)
        finally:  # requests from now on are answered as any other
            if (waking := self._waking.get(name)) is not None and waking.started == started:
                del self._waking[name]
        if woke:
            took = (asyncio.get_running_loop().time() - started) * 1000
            try:
                await self._record(name, f"Woke up for a request in {took:.0f} ms.", None)
            except Exception:  # the database away: the requests were answered all the same
                log.exception("Could not record the wake-up of %s", name)

    async def _awake(self, name: str) -> bool:
        """Whether sleeping model `name`, being woken, is ready (False: turned off, failed, or
        still not ready after WAKE_WATCHED_S; its own events say why)."""
        try:
            async with asyncio.timeout(WAKE_WATCHED_S):
                while True:
                    routes = self.board.table.models.get(name)
                    if routes is None or routes.state is EndpointState.FAILED:
                        return False
                    if routes.state is EndpointState.READY:
                        return True
                    await self.board.next_table()
        except TimeoutError:
            log.warning("%s did not wake up within %g s of a request.", name, WAKE_WATCHED_S)
            return False

    async def served(self) -> dict[str, ServingSettings]:
        """Each served model's settings, by name, oldest enabled first: one query for all."""
        served = await asyncio.to_thread(self.store.served)
        return {name: self.defaults.with_set(stored) for name, stored in served.items()}

    async def must_be_served(self, name: str) -> ServingSettings:
        """The settings of served model `name`; NotFound if it is not served."""
        settings = (await self.served()).get(name)
        if settings is None:
            raise NotFound(f"Serving is not enabled for '{name}'.")
        return settings

    async def events(self, name: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.events, name)

    async def _update(self, name: str, settings: dict[str, Any], actor: str | None) -> None:
        before = await self.must_be_served(name)
        check(before.with_set(settings), settings, self.engine)
        if not await asyncio.to_thread(self.store.update, name, settings):
            raise NotFound(f"Serving is not enabled for '{name}'.")  # turned off meanwhile
        said = changes(before, before.with_set(settings))
        if said:
            by = f" by {actor}" if actor else ""
            await self._record(name, f"Settings changed{by}: {'; '.join(said)}.", actor)

    async def _record(self, name: str, message: str, actor: str | None) -> None:
        """An audit event, written before the call that caused it returns."""
        await asyncio.to_thread(self.store.record, name, message, actor=actor)

    def _must_exist(self, name: str) -> None:
        try:
            self.registry.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(f"Registered model '{name}' does not exist.") from None
            if e.error_code == "INVALID_PARAMETER_VALUE":  # a name the registry cannot hold
                raise InvalidInput(f"{name!r} is not a registered model's name: {e}") from None
            raise NotReady(f"The registry could not say whether '{name}' exists: {e}") from None
        except OSError as e:  # the registry unreachable
            raise NotReady(f"The registry did not answer: {e}") from None


def _ready(table: RouteTable, name: str, ref: str) -> bool:
    """Whether `ref` of model `name` names a ready version in `table`."""
    routes = table.models.get(name)
    version = routes.resolve(ref) if routes is not None else None
    return version is not None and routes.versions[version].state is VersionState.READY

"""What the gateway may ask of the control plane, and nothing more.

The current route table (published whole by the controller), the serving settings and events
kept in the state store, turning serving on and off, and where a model's log is. Every call
that reaches the registry or the database runs on a thread, off the event loop that answers
scoring; turning serving on or off nudges the controller to read it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelhost.control.routes import RouteBoard, RouteTable
from modelhost.control.settings import FIELDS, ServingSettings, changes
from modelhost.control.store import StateStore
from modelhost.errors import InvalidInput, NotFound, NotReady


class ServingControl:
    def __init__(
        self,
        store: StateStore,
        registry_url: str,
        defaults: ServingSettings,
        board: RouteBoard,
        nudge: Callable[[], None],
        log_path: Callable[[str], Path],
    ) -> None:
        self.store = store
        self.registry = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self.defaults = defaults  # what a model that sets nothing is served with
        self.board = board
        self.nudge = nudge
        self.log_path = log_path  # a served model's name -> its model servers' log

    @property
    def routes(self) -> RouteTable:
        return self.board.table

    async def enable(self, name: str, settings: dict[str, Any], actor: str | None) -> None:
        """Turn serving on, with `settings` (checked by control/settings.py `parse`) if any."""
        await asyncio.to_thread(self._must_exist, name)
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

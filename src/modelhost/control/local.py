"""The supervisor that runs model servers as processes of this machine (control/servers.py),
one per key, each watched and restarted by control/watched.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from modelhost.control.forkserver import ForkServers
from modelhost.control.isolation import Isolation
from modelhost.control.plan import describe
from modelhost.control.routes import ServerAddress, frozen
from modelhost.control.servers import ModelServerProcess
from modelhost.control.settings import Scale
from modelhost.control.supervisor import ServerKey, ServerSpec, ServerView
from modelhost.control.watched import Record, WatchedServer


class LocalSupervisor:
    def __init__(
        self,
        isolation: Isolation,
        logs: Path,
        options: list[str],
        sockets: Path,
        record: Record,
        changed: Callable[[], None],
        forks: ForkServers | None = None,
    ) -> None:
        self.isolation = isolation
        self.forks = forks  # where servers fork from; None: each starts afresh
        self.logs = logs
        self.options = options  # `modelhost worker` flags for every server (and its runtime's)
        self.sockets = sockets
        self.record = record
        self.changed = changed  # called when what view() shows has changed
        self._servers: dict[ServerKey, WatchedServer] = {}
        self._stops: set[asyncio.Task[None]] = set()  # servers being stopped

    def view(self) -> dict[ServerKey, ServerView]:
        return {key: _view(server) for key, server in self._servers.items()}

    def start(self, spec: ServerSpec) -> None:
        if spec.key in self._servers:
            return
        _, env, _ = spec.key
        server = self._servers[spec.key] = WatchedServer(
            spec, lambda: self._launch(spec), describe(env), self.record, self.changed,
            self.isolation.let_through,  # loading reads the version's files as the model user
        )  # fmt: skip
        server.run()

    def _launch(self, spec: ServerSpec) -> ModelServerProcess:
        options = [*self.options, *spec.runtime.worker_options()]
        return ModelServerProcess(
            spec.model, spec.environment, self.isolation, self.logs, options, self.sockets,
            self.forks,
        )  # fmt: skip

    def stop(self, key: ServerKey) -> None:
        server = self._servers.pop(key, None)
        if server is not None:
            task = asyncio.create_task(server.stop())
            self._stops.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._stops.discard)

    def hold(self, key: ServerKey, version: str, model_uri: str, local_path: Path) -> None:
        server = self._servers.get(key)
        if server is not None:
            server.hold(version, model_uri, local_path)

    def release(self, key: ServerKey, version: str) -> None:
        server = self._servers.get(key)
        if server is not None:
            server.release(version)

    def rescale(self, key: ServerKey, scale: Scale) -> None:
        """One process per server here (`workers` adds processes inside it): noted only."""
        server = self._servers.get(key)
        if server is not None:
            server.spec = replace(server.spec, scale=scale)

    async def close(self) -> None:
        calls = {call for server in self._servers.values() for call in server.calls_under_way()}
        for call in calls:  # a hung server's calls would only make us wait
            call.cancel()
        for key in list(self._servers):
            self.stop(key)
        await asyncio.gather(*calls, *self._stops, return_exceptions=True)


def _view(server: WatchedServer) -> ServerView:
    address = None
    if server.process is not None:
        address = ServerAddress(server.process.number, server.process.replica().socket)
    return ServerView(
        server.spec.key, server.health, address, frozen(dict(server.versions)), server.message,
        server.spec.scale,
    )  # fmt: skip

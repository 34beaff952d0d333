"""The supervisor that runs model servers as processes of this machine (control/servers.py).

Each server has a task of its own that starts the process, pings its /health, and when it
exits, says it is unhealthy or stops answering for HUNG_AFTER_S, kills it and starts it again
after a back-off. Control calls (which versions to hold) go to each server on tasks of their
own, one at a time per server: a server that hangs delays its own calls and nobody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx

from modelhost.control.forkserver import ForkServers
from modelhost.control.isolation import Isolation
from modelhost.control.plan import describe
from modelhost.control.routes import ServerAddress, frozen
from modelhost.control.servers import ModelServerProcess
from modelhost.control.supervisor import (
    Health,
    Held,
    HeldState,
    ServerKey,
    ServerSpec,
    ServerView,
)

log = logging.getLogger("modelhost.controller")

PING_S = 1.0  # between health checks of a server that is up and has nothing loading
QUICK_PING_S = 0.1  # while it starts or loads: each look is a step closer to its first answer
PING_TIMEOUT_S = 1.0
HUNG_AFTER_S = 3.0  # no answer for this long from a server that answered before: replaced
START_TIMEOUT_S = 120.0  # for the first answer of a new server (imports, a slow disk)
CONTROL_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0, 1, 2, 5, 10, 30)  # by restarts in a row
STEADY_S = 60.0  # up this long: its earlier restarts no longer count

Record = Callable[..., None]  # (name, message): an event of the model's


class _Server:
    """One key's server over its restarts: its process now, and what was last seen of it."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.process: ModelServerProcess | None = None
        self.health = Health.STARTING
        self.message = "Starting its model server."
        self.versions: dict[str, Held] = {}  # what it was told to hold, as it last said
        self.calls = asyncio.Lock()  # control calls, one at a time, in the order made
        self.watching: asyncio.Task[None] | None = None

    def view(self) -> ServerView:
        address = None
        if self.process is not None:
            address = ServerAddress(self.process.number, str(self.process.socket))
        return ServerView(
            self.spec.key, self.health, address, frozen(dict(self.versions)), self.message
        )


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
        self._servers: dict[ServerKey, _Server] = {}
        self._calls: set[asyncio.Task[None]] = set()  # control calls under way
        self._stops: set[asyncio.Task[None]] = set()  # servers being stopped

    def view(self) -> dict[ServerKey, ServerView]:
        return {key: server.view() for key, server in self._servers.items()}

    def start(self, spec: ServerSpec) -> None:
        if spec.key in self._servers:
            return
        server = self._servers[spec.key] = _Server(spec)
        server.watching = asyncio.create_task(self._watch(server), name=f"watch {spec.key}")

    def stop(self, key: ServerKey) -> None:
        server = self._servers.pop(key, None)
        if server is not None:
            self._spawn(self._stops, self._stop(server))

    def hold(self, key: ServerKey, version: str, model_uri: str, local_path: Path) -> None:
        server = self._servers.get(key)
        if server is None or server.process is None or version in server.versions:
            return
        server.versions[version] = Held(HeldState.LOADING, "Loading the model.")
        self.isolation.let_through()  # loading reads the version's files as the model user
        body = {"model_uri": model_uri, "local_path": str(local_path)}
        self._spawn(self._calls, self._call(server, server.process, "PUT", version, body))

    def release(self, key: ServerKey, version: str) -> None:
        server = self._servers.get(key)
        if server is None or server.process is None or server.versions.pop(version, None) is None:
            return
        self._spawn(self._calls, self._call(server, server.process, "DELETE", version))

    async def close(self) -> None:
        for call in self._calls:  # a hung server's calls would only make us wait
            call.cancel()
        for key in list(self._servers):
            self.stop(key)
        await asyncio.gather(*self._calls, *self._stops, return_exceptions=True)

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]], work) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(tasks.discard)

    async def _stop(self, server: _Server) -> None:
        if server.watching is not None:
            server.watching.cancel()
            await asyncio.gather(server.watching, return_exceptions=True)
        if server.process is not None:
            await server.process.stop()

    def _show(self, server: _Server, health: Health, message: str) -> None:
        server.health, server.message = health, message
        self.changed()

    async def _watch(self, server: _Server) -> None:
        """Run the server for good: start it, watch it, replace it when it fails."""
        name, env, _ = server.spec.key
        restarts = 0
        loop = asyncio.get_running_loop()
        while True:
            options = [*self.options, *server.spec.runtime.worker_options()]
            process = ModelServerProcess(
                name, server.spec.environment, self.isolation, self.logs, options, self.sockets,
                self.forks,
            )  # fmt: skip
            server.process, server.versions = process, {}
            self._show(server, Health.STARTING, "Starting its model server.")
            again = f" again (restart {restarts})" if restarts else ""
            self.record(name, f"{describe(env)} is starting{again}.")
            try:
                await _finish(asyncio.to_thread(process.start))
            except Exception as e:  # the isolation or the interpreter: say it, try again later
                log.exception("Starting the model server of %s failed", name)
                why = f"could not start: {type(e).__name__}: {e}"
            else:
                started = loop.time()
                why = await self._ping(server, process)
                if loop.time() - started >= STEADY_S:
                    restarts = 0
            killed = process.alive()  # hung, or unhealthy: it gets no grace
            if killed:
                self._show(server, Health.UNRESPONSIVE, f"Its model server {why}; replacing it.")
                self.record(name, f"{describe(env)} {why}; killing it.")
            await process.stop(grace_s=0)
            delay = RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]
            self._show(
                server,
                Health.RESTARTING,
                f"Its model server {why}{'; it was killed' if killed else ''}; restarting it.",
            )
            self.record(name, f"{describe(env)} {'was killed' if killed else why}; "
                        f"restarting in {delay} s.")  # fmt: skip
            await asyncio.sleep(delay)
            restarts += 1

    async def _ping(self, server: _Server, process: ModelServerProcess) -> str:
        """Check the server's health until it fails; why it did."""
        name, env, _ = server.spec.key
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent_since: float | None = None
        while True:
            if not process.alive():
                return f"exited with code {process.returncode}"
            try:
                answer = await process.client.get("/health", timeout=PING_TIMEOUT_S)
                shown = answer.json()
            except (httpx.TransportError, ValueError):
                now = loop.time()
                if server.health is Health.STARTING:
                    if now - started >= START_TIMEOUT_S:
                        return f"did not answer within {START_TIMEOUT_S:g} s of starting"
                else:
                    silent_since = silent_since or now
                    if now - silent_since >= HUNG_AFTER_S:
                        return f"did not answer its health checks for {HUNG_AFTER_S:g} s"
                await process.exited(QUICK_PING_S)
                continue
            silent_since = None
            if answer.status_code != 200:
                return f"says it is unhealthy: {shown.get('message', answer.text)}"
            changed = self._update(server, shown["versions"])
            if server.health is not Health.UP:
                self._show(server, Health.UP, "Its model server is up.")
                self.record(name, f"{describe(env)} is up.")
            elif changed:
                self.changed()
            loading = any(h.state is HeldState.LOADING for h in server.versions.values())
            await process.exited(QUICK_PING_S if loading else PING_S)

    @staticmethod
    def _update(server: _Server, reported: list[dict]) -> bool:
        """Take the states the server reports for the versions it was told to hold."""
        changed = False
        for shown in reported:
            version = shown["version"]
            was = server.versions.get(version)
            if was is None or (was.state is HeldState.FAILED and shown["state"] != "FAILED"):
                continue  # released meanwhile, or refused by our own call
            now = Held(HeldState(shown["state"]), shown["message"])
            if now != was:
                server.versions[version] = now
                changed = True
        return changed

    async def _call(
        self,
        server: _Server,
        process: ModelServerProcess,
        method: str,
        version: str,
        body: dict | None = None,
    ) -> None:
        """One control call; a failure is logged, becomes an event, and is never retried on
        this process (the version shows as failed; a restarted server is asked again)."""
        name, env, _ = server.spec.key
        doing = "load" if method == "PUT" else "release"
        async with server.calls:
            if server.process is not process:
                return  # replaced meanwhile: the new one is told afresh
            try:
                answer = await process.client.request(
                    method, f"/versions/{quote(version, safe='')}", json=body,
                    timeout=CONTROL_TIMEOUT_S,
                )  # fmt: skip
                answer.raise_for_status()
            except httpx.HTTPStatusError as e:
                why = f"answered {e.response.status_code}: {_message(e.response)}"
            except httpx.TransportError as e:
                why = f"did not answer: {type(e).__name__}: {e}"
            else:
                return
        log.error("Asking the model server of %s to %s version %s failed: it %s",
                  name, doing, version, why)  # fmt: skip
        self.record(name, f"{describe(env)} could not {doing} version {version}: it {why}", version)
        if method == "PUT" and server.process is process and version in server.versions:
            server.versions[version] = Held(HeldState.FAILED, f"Its model server {why}")
            self.changed()


async def _finish(work) -> None:
    """Await `work` to its end even if cancelled meanwhile (then cancel after): a process
    being started is started, so that whoever cancelled can stop it."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _message(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(response.json()["message"])
    return response.text[:200]

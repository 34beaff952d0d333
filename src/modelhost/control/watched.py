"""One model server over its restarts: started, pinged, told what to hold, replaced when it fails.

Both supervisors run their servers through this: control/local.py one per key, a process of this
machine; control/cluster.py one per replica, a process owned by a Ray actor on a cluster node.
Each has a task of its own that starts the process, pings its /health, and when it exits, says
it is unhealthy or stops answering for HUNG_AFTER_S, kills it and starts it again after a
back-off. Control calls (which versions to hold) go to it on tasks of their own, one at a time:
a server that hangs delays its own calls and nobody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx

from modelhost.control.routes import Replica
from modelhost.control.supervisor import Health, Held, HeldState, ServerSpec

log = logging.getLogger("modelhost.controller")

PING_S = 1.0  # between health checks of a server that is up and has nothing loading
QUICK_PING_S = 0.1  # while it starts or loads: each look is a step closer to its first answer
PING_TIMEOUT_S = 1.0
HUNG_AFTER_S = 3.0  # no answer for this long from a server that answered before: replaced
START_TIMEOUT_S = 120.0  # for the first answer of a new server (imports, a slow disk)
CONTROL_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0, 1, 2, 5, 10, 30)  # by restarts in a row
STEADY_S = 60.0  # up this long: its earlier restarts no longer count

Record = Callable[..., None]  # (name, message[, version]): an event of the model's


class ServerProcess(Protocol):
    """One run of a model server, wherever it runs."""

    number: int  # never reused: the gateway's key for it
    client: httpx.AsyncClient  # its control calls, once started

    def start(self) -> None:
        """Start it (blocking: run on a thread)."""

    def abandon_start(self) -> None:
        """Give up a start that waits (for a node to run on): it is being stopped."""

    async def exited(self, timeout: float) -> bool:
        """Wait up to `timeout` for it to end; whether it has."""

    def alive(self) -> bool: ...

    def exit_reason(self) -> str:
        """Why it ended, as events say it: "exited with code 1"."""

    def replica(self) -> Replica:
        """Where the gateway reaches it."""

    async def staged(self, local_path: Path) -> str:
        """The path it reads a version's artifacts from, fetched to `local_path` here."""

    async def stop(self, grace_s: float = 15) -> None:
        """Stop it (at once with `grace_s` 0); a second call waits for the first."""


class WatchedServer:
    """A server run for good: its process now, and what was last seen of it."""

    def __init__(
        self,
        spec: ServerSpec,
        launch: Callable[[], ServerProcess],
        name: str,
        record: Record,
        changed: Callable[[], None],
        before_hold: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self.launch = launch  # a new process, not started yet
        self.name = name  # how events call it: "The model server in environment X"
        self.record = record
        self.changed = changed  # called when what it shows has changed
        self.before_hold = before_hold
        self.process: ServerProcess | None = None
        self.health = Health.STARTING
        self.message = "Starting its model server."
        self.versions: dict[str, Held] = {}  # what it was told to hold, as it last said
        # Whether its last health check was answered: one that was not gets no new requests
        # where its server has other replicas, until it answers again or is replaced.
        self.answering = False
        self.calls = asyncio.Lock()  # control calls, one at a time, in the order made
        self.poked = asyncio.Event()  # told a version to hold: look at it again soon
        self.watching: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    @property
    def model(self) -> str:
        return self.spec.model

    def run(self) -> None:
        self.watching = asyncio.create_task(self._watch(), name=f"watch {self.name}")

    def hold(self, version: str, model_uri: str, local_path: Path) -> None:
        if self.process is None or version in self.versions:
            return
        self.versions[version] = Held(HeldState.LOADING, "Loading the model.")
        self.before_hold()
        self._spawn(self._call(self.process, "PUT", version, (model_uri, local_path)))
        self.poked.set()

    def release(self, version: str) -> None:
        if self.process is None or self.versions.pop(version, None) is None:
            return
        self._spawn(self._call(self.process, "DELETE", version))

    async def stop(self) -> None:
        if self.process is not None:  # one waiting for a node to run on waits no more
            self.process.abandon_start()
        if self.watching is not None:
            self.watching.cancel()
            await asyncio.gather(self.watching, return_exceptions=True)
        if self.process is not None:
            await self.process.stop()

    def calls_under_way(self) -> set[asyncio.Task[None]]:
        return set(self._calls)

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self._calls.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._calls.discard)

    def _show(self, health: Health, message: str) -> None:
        self.health, self.message = health, message
        self.changed()

    async def _watch(self) -> None:
        """Start it, watch it, replace it when it fails."""
        restarts = 0
        loop = asyncio.get_running_loop()
        while True:
            process = self.launch()
            self.process, self.versions, self.answering = process, {}, False
            self._show(Health.STARTING, "Starting its model server.")
            again = f" again (restart {restarts})" if restarts else ""
            self.record(self.model, f"{self.name} is starting{again}.")
            try:
                await _finish(asyncio.to_thread(process.start))
            except Exception as e:  # the isolation, the interpreter, the node: say it, retry
                log.exception("Starting %s of %s failed", self.name.lower(), self.model)
                why = f"could not start: {type(e).__name__}: {e}"
            else:
                started = loop.time()
                why = await self._ping(process)
                if loop.time() - started >= STEADY_S:
                    restarts = 0
            killed = process.alive()  # hung, or unhealthy: it gets no grace
            if killed:
                self._show(Health.UNRESPONSIVE, f"Its model server {why}; replacing it.")
                self.record(self.model, f"{self.name} {why}; killing it.")
            await process.stop(grace_s=0)
            delay = RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]
            self._show(
                Health.RESTARTING,
                f"Its model server {why}{'; it was killed' if killed else ''}; restarting it.",
            )
            self.record(self.model, f"{self.name} {'was killed' if killed else why}; "
                        f"restarting in {delay} s.")  # fmt: skip
            await asyncio.sleep(delay)
            restarts += 1

    async def _ping(self, process: ServerProcess) -> str:
        """Check its health until it fails; why it did."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent_since: float | None = None
        while True:
            if not process.alive():
                return process.exit_reason()
            try:
                answer = await process.client.get("/health", timeout=PING_TIMEOUT_S)
                shown = answer.json()
            except (httpx.TransportError, ValueError):
                now = loop.time()
                if self.health is Health.STARTING:
                    if now - started >= START_TIMEOUT_S:
                        return f"did not answer within {START_TIMEOUT_S:g} s of starting"
                else:
                    if silent_since is None:
                        silent_since = now
                        self.answering = False
                        self.changed()
                    if now - silent_since >= HUNG_AFTER_S:
                        return f"did not answer its health checks for {HUNG_AFTER_S:g} s"
                await process.exited(QUICK_PING_S)
                continue
            silent_since = None
            if not self.answering:
                self.answering = True
                self.changed()
            if answer.status_code != 200:
                return f"says it is unhealthy: {shown.get('message', answer.text)}"
            changed = self._update(shown["versions"])
            if self.health is not Health.UP:
                self._show(Health.UP, "Its model server is up.")
                self.record(self.model, f"{self.name} is up.")
            elif changed:
                self.changed()
            loading = any(h.state is HeldState.LOADING for h in self.versions.values())
            await self._rest(process, QUICK_PING_S if loading else PING_S)

    def _update(self, reported: list[dict]) -> bool:
        """Take the states it reports for the versions it was told to hold."""
        changed = False
        for shown in reported:
            version = shown["version"]
            was = self.versions.get(version)
            if was is None or (was.state is HeldState.FAILED and shown["state"] != "FAILED"):
                continue  # released meanwhile, or refused by our own call
            now = Held(HeldState(shown["state"]), shown["message"])
            if now != was:
                self.versions[version] = now
                changed = True
        return changed

    async def _call(
        self,
        process: ServerProcess,
        method: str,
        version: str,
        artifacts: tuple[str, Path] | None = None,
    ) -> None:
        """One control call; a failure is logged, becomes an event, and is never retried on
        this process (the version shows as failed; a restarted server is asked again)."""
        doing = "load" if method == "PUT" else "release"
        async with self.calls:
            if self.process is not process:
                return  # replaced meanwhile: the new one is told afresh
            try:
                body = None
                if artifacts is not None:
                    model_uri, local_path = artifacts
                    body = {"model_uri": model_uri, "local_path": await process.staged(local_path)}
                answer = await process.client.request(
                    method, f"/versions/{quote(version, safe='')}", json=body,
                    timeout=CONTROL_TIMEOUT_S,
                )  # fmt: skip
                answer.raise_for_status()
            except httpx.HTTPStatusError as e:
                why = f"answered {e.response.status_code}: {_message(e.response)}"
            except (httpx.TransportError, OSError) as e:
                why = f"did not answer: {type(e).__name__}: {e}"
            except Exception as e:  # staging the artifacts on its node failed
                why = f"could not get the version's files: {type(e).__name__}: {e}"
            else:
                return
        log.error("Asking %s of %s to %s version %s failed: it %s",
                  self.name.lower(), self.model, doing, version, why)  # fmt: skip
        self.record(self.model, f"{self.name} could not {doing} version {version}: it {why}",
                    version)  # fmt: skip
        if method == "PUT" and self.process is process and version in self.versions:
            self.versions[version] = Held(HeldState.FAILED, f"Its model server {why}")
            self.changed()

    async def _rest(self, process: ServerProcess, seconds: float) -> None:
        """Wait for the next health check: `seconds`, or less if the process exits (replaced at
        once) or is told to hold a version (its loading is followed closely from then on)."""
        if self.poked.is_set():
            self.poked.clear()
            seconds = QUICK_PING_S
        poked = asyncio.create_task(self.poked.wait())
        exited = asyncio.create_task(process.exited(seconds))
        try:
            await asyncio.wait((poked, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            poked.cancel()
            exited.cancel()
            await asyncio.gather(poked, exited, return_exceptions=True)


async def _finish(work) -> None:
    """Await `work` to its end even if cancelled meanwhile (then cancel after): a process
    being started is started, so that whoever cancelled can stop it."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # one given up as it was cancelled fails: so be it
            await task
        raise


def _message(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(response.json()["message"])
    return response.text[:200]

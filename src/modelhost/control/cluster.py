"""The supervisor that places model servers on a Ray cluster (`modelhost up --engine ray`).

Each server (a model's versions in one environment, with one runtime) runs as replicas: each a
`modelhost worker` owned by a Ray actor (control/replica_host.py) that reserves the model's
`cpus` and `memory_mb` on whichever node has them, spread over the nodes. Each replica is
watched and restarted like a local server (control/watched.py): one whose actor or node is lost
is placed again, on the nodes left. The gateway reaches replicas directly over TCP with each
one's secret; a route lists only the replicas that hold its version ready.

Between `min_replicas` and `max_replicas`, the server scales by the model's requests in flight
at the gateway: a replica is added when they stay above TARGET_IN_FLIGHT per ready replica for
UP_AFTER_S, and one is removed after DOWN_AFTER_S in which one fewer would have been enough.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from modelhost.control.plan import describe
from modelhost.control.replica_host import ReplicaHost, pack
from modelhost.control.routes import Replica, ServerAddress, frozen
from modelhost.control.servers import next_number, server_log
from modelhost.control.settings import Scale
from modelhost.control.supervisor import (
    Health,
    Held,
    HeldState,
    ServerKey,
    ServerSpec,
    ServerView,
)
from modelhost.control.watched import Record, WatchedServer
from modelhost.errors import ModelhostError

log = logging.getLogger("modelhost.controller")

TARGET_IN_FLIGHT = 2.0  # requests in flight per replica that a server scales to keep
UP_AFTER_S = 2.0
DOWN_AFTER_S = 30.0
SAMPLE_S = 0.25
DRAIN_S = 2.0  # a removed replica's last requests finish before it stops
PLACED_WAIT_S = 0.5  # how often a replica waiting for a node looks whether it is stopping
WAITING_LOOKS = 6  # every this many looks, whether it still waits for a node (and says so)


class ClusterUnreachable(ModelhostError):
    """`modelhost up --engine ray` could not join its Ray cluster."""


class RayEngine:
    """The connection to the Ray cluster, as this process's Ray driver."""

    def __init__(self, address: str) -> None:
        import ray

        self.ray = ray
        self.address = address
        self.actor_class: Any = None
        self._packed: dict[str, tuple[str, Any]] = {}  # local path -> (name, object ref)

    def connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address, log_to_driver=False, logging_level=logging.WARNING,
                    configure_logging=False,
                )  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ClusterUnreachable(
                    f"Could not join the Ray cluster at {self.address}: {e} Check that this "
                    "machine has the cluster's token (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or "
                    "~/.ray/auth_token) and the same Ray and Python versions as its nodes."
                ) from None
        self.actor_class = ray.remote(ReplicaHost)

    def largest_node(self) -> tuple[float, float]:
        """The most CPUs and memory (MB) any live node has."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        cpus = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
        memory = max((n["Resources"].get("memory", 0.0) for n in nodes), default=0.0)
        return cpus, memory / 2**20

    def packed(self, folder: Path) -> tuple[str, Any]:
        """A version's artifacts in the object store, put there once (blocking: on a thread)."""
        key = str(folder)
        if key not in self._packed:
            name = hashlib.sha256(key.encode()).hexdigest()[:24]
            self._packed[key] = (name, self.ray.put(pack(folder)))
        return self._packed[key]

    def shutdown(self) -> None:
        self._packed.clear()
        with contextlib.suppress(Exception):
            self.ray.shutdown()


class RayReplicaProcess:
    """One run of one replica: its actor, and the model server the actor started."""

    def __init__(self, engine: RayEngine, spec: ServerSpec, options: list[str], log_to: Path):
        self.engine = engine
        self.spec = spec
        self.options = options
        self.log_to = log_to  # the model's log here, where the node's lines are copied
        self.number = next_number()
        self.secret = secrets.token_urlsafe(32)
        self.client: httpx.AsyncClient | None = None  # once it listens
        self.host, self.port = "", 0
        self.actor: Any = None
        self._ended: concurrent.futures.Future | None = None  # its model server's exit
        self._ended_here: asyncio.Future | None = None  # the same, on the event loop
        self._abandoned = False
        self.waiting = ""  # what its start waits for, once it has waited a while
        self._stopping: asyncio.Future[None] | None = None
        self._copying: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Place the actor and start the model server (on a thread: it waits for a node)."""
        ray, spec = self.engine.ray, self.spec
        memory = spec.runtime.memory_mb * 2**20 or None
        self.actor = self.engine.actor_class.options(
            num_cpus=spec.runtime.cpus, memory=memory, scheduling_strategy="SPREAD",
            max_restarts=0, max_concurrency=4,
            # Ray runs its workers at niceness 15, and the model server would inherit it: a
            # server of a busy node would then lose the CPU to everything else there.
            runtime_env={"env_vars": {"RAY_worker_niceness": "0"}},
        ).remote(self.number)  # fmt: skip
        assert spec.model_dir is not None, "a server's spec names the artifacts to build from"
        name, packed = self.engine.packed(spec.model_dir)
        started = self.actor.start.remote(name, packed, spec.environment.current, self.options,
                                          self.secret)  # fmt: skip
        looks = 0
        while not ray.wait([started], timeout=PLACED_WAIT_S)[0]:
            if self._abandoned:
                raise RuntimeError("stopped before it was placed")
            looks += 1
            if looks % WAITING_LOOKS == 0 and self.actor_pending():
                self.waiting = (
                    f"Waiting for a node of the Ray cluster with {spec.runtime.cpus:g} CPU and "
                    f"{spec.runtime.memory_mb} MB of memory free."
                )
        self.waiting = ""
        try:
            self.host, self.port = ray.get(started)
        except ray.exceptions.RayTaskError as e:  # the node's own error, not Ray's wrapping
            raise e.cause or e from None
        self.client = httpx.AsyncClient(
            base_url=f"http://{_host(self.host)}:{self.port}",
            headers={"authorization": f"Bearer {self.secret}"},
        )
        self._ended = self.actor.wait.remote().future()

    def actor_pending(self) -> bool:
        """Whether its actor still waits for a node (rather than building, or loading)."""
        ready, _ = self.engine.ray.wait([self.actor.__ray_ready__.remote()], timeout=0)
        return not ready

    def abandon_start(self) -> None:
        self._abandoned = True

    async def exited(self, timeout: float) -> bool:
        if self._ended is None:
            await asyncio.sleep(timeout)
            return False
        self._copy_log()
        if self._ended_here is None:  # wrapped once: each wrapping leaves a callback behind
            self._ended_here = asyncio.wrap_future(self._ended)
        await asyncio.wait({self._ended_here}, timeout=timeout)
        return self._ended.done()

    def alive(self) -> bool:
        return self._ended is not None and not self._ended.done()

    def exit_reason(self) -> str:
        if self._ended is None or not self._ended.done():
            return "ended"
        error = self._ended.exception()
        if self._ended_here is not None and self._ended_here.done():
            self._ended_here.exception()  # seen: asyncio need not log it as never retrieved
        if error is None:
            return f"exited with code {self._ended.result()}"
        return f"was lost with its Ray actor or node ({type(error).__name__})"

    def replica(self) -> Replica:
        return Replica(self.number, host=self.host, port=self.port, secret=self.secret)

    async def staged(self, local_path: Path) -> str:
        name, ref = await asyncio.to_thread(self.engine.packed, local_path)
        try:
            return await asyncio.wrap_future(self.actor.stage.remote(name, ref).future())
        except self.engine.ray.exceptions.RayTaskError as e:
            raise e.cause or e from None

    def _copy_log(self) -> None:
        if self._copying is None and self.actor is not None:
            self._copying = asyncio.create_task(self._copy_lines())

    async def _copy_lines(self) -> None:
        """Copy what the model server writes on its node into the model's log here."""
        offset = 0
        with contextlib.suppress(Exception):
            while True:
                chunk = await asyncio.wrap_future(self.actor.read_log.remote(offset).future())
                if chunk:
                    offset += len(chunk)
                    with open(self.log_to, "ab") as output:
                        output.write(chunk)
                if len(chunk) < (1 << 20):
                    await asyncio.sleep(1.0)

    async def stop(self, grace_s: float = 15) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.actor is None:
            return
        if grace_s and self.alive():
            with contextlib.suppress(Exception):
                stopped = asyncio.wrap_future(self.actor.stop.remote(grace_s).future())
                await asyncio.wait_for(stopped, grace_s + 2)
        if self._copying is not None:
            await asyncio.sleep(0)  # its last lines, if they are on their way
            self._copying.cancel()
        with contextlib.suppress(Exception):
            self.engine.ray.kill(self.actor)  # and with it the model server's process group


class _Replicated:
    """One key's server: its replicas, what they are told to hold, how many it wants."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.number = next_number()  # the server's address, which its replicas share
        self.replicas: list[WatchedServer] = []
        self.told: dict[str, tuple[str, Path]] = {}  # version -> (model URI, local path)
        self.wanted = spec.scale.min_replicas
        self.failed = ""  # why it cannot run at all
        self.samples: deque[tuple[float, float]] = deque()  # (time, in flight per replica)
        self.tasks: set[asyncio.Task[None]] = set()


class RaySupervisor:
    def __init__(
        self,
        engine: RayEngine,
        logs: Path,
        options: list[str],
        record: Record,
        changed: Callable[[], None],
        in_flight: Callable[[str], int],
    ) -> None:
        self.engine = engine
        self.logs = logs
        self.options = options  # `modelhost worker` flags for every server (and its runtime's)
        self.record = record
        self.changed = changed
        self.in_flight = in_flight  # a model's scoring requests in flight at the gateway
        self._servers: dict[ServerKey, _Replicated] = {}
        self._stops: set[asyncio.Task[None]] = set()

    # The Supervisor interface
    def view(self) -> dict[ServerKey, ServerView]:
        return {key: self._view(server) for key, server in self._servers.items()}

    def start(self, spec: ServerSpec) -> None:
        if spec.key in self._servers:
            return
        server = self._servers[spec.key] = _Replicated(spec)
        self._spawn(server, self._run(server))

    def stop(self, key: ServerKey) -> None:
        server = self._servers.pop(key, None)
        if server is None:
            return
        for task in server.tasks:
            task.cancel()
        for replica in server.replicas:
            self._stop_replica(replica)

    def hold(self, key: ServerKey, version: str, model_uri: str, local_path: Path) -> None:
        server = self._servers.get(key)
        if server is None:
            return
        server.told[version] = (model_uri, local_path)
        for replica in server.replicas:
            if replica.health is Health.UP:
                replica.hold(version, model_uri, local_path)

    def release(self, key: ServerKey, version: str) -> None:
        server = self._servers.get(key)
        if server is None or server.told.pop(version, None) is None:
            return
        for replica in server.replicas:
            replica.release(version)

    def rescale(self, key: ServerKey, scale: Scale) -> None:
        server = self._servers.get(key)
        if server is None:
            return
        server.spec = replace(server.spec, scale=scale)
        server.wanted = min(max(server.wanted, scale.min_replicas), scale.max_replicas)
        if not server.failed:
            self._match(server)

    async def close(self) -> None:
        for key in list(self._servers):
            self.stop(key)
        await asyncio.gather(*self._stops, return_exceptions=True)
        await asyncio.to_thread(self.engine.shutdown)

    # Running a server's replicas
    def _spawn(self, server: _Replicated, work) -> None:
        task = asyncio.create_task(work)
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)

    async def _run(self, server: _Replicated) -> None:
        runtime = server.spec.runtime
        try:
            cpus, memory = await asyncio.to_thread(self.engine.largest_node)
        except Exception as e:  # the cluster does not answer: try as if it fits
            log.warning("Could not read the Ray cluster's nodes: %s", e)
            cpus, memory = float("inf"), float("inf")
        if runtime.cpus > cpus or runtime.memory_mb > memory:
            server.failed = (
                f"Each replica asks for {runtime.cpus:g} CPU and {runtime.memory_mb} MB of memory, "
                f"more than any node of the Ray cluster has (the largest has {cpus:g} CPU and "
                f"{memory:.0f} MB). Lower the model's cpus or memory_mb, or add a larger node."
            )
            _, env, _ = server.spec.key
            self.record(server.spec.model, f"{describe(env)} cannot be placed: {server.failed}")
            self.changed()
            return
        self._match(server)
        await self._autoscale(server)

    def _match(self, server: _Replicated) -> None:
        """Add or remove replicas until it runs as many as it wants."""
        _, env, _ = server.spec.key
        while len(server.replicas) < server.wanted:
            replica = WatchedServer(
                server.spec, lambda: self._launch(server), f"{describe(env)} (replica "
                f"{len(server.replicas) + 1})", self.record, lambda: self._changed(server),
            )  # fmt: skip
            server.replicas.append(replica)
            replica.run()
        while len(server.replicas) > server.wanted:
            self._spawn(server, self._drain(server, server.replicas.pop()))
        self.changed()

    def _launch(self, server: _Replicated) -> RayReplicaProcess:
        options = [*self.options, *server.spec.runtime.worker_options()]
        return RayReplicaProcess(
            self.engine, server.spec, options, server_log(self.logs, server.spec.model)
        )

    def _changed(self, server: _Replicated) -> None:
        """A replica changed: one that came up is told what the server holds."""
        for replica in server.replicas:
            if replica.health is Health.UP:
                for version in server.told.keys() - replica.versions.keys():
                    replica.hold(version, *server.told[version])
        self.changed()

    async def _drain(self, server: _Replicated, replica: WatchedServer) -> None:
        try:
            self.changed()  # routes leave it first; requests on their way there finish
            await asyncio.sleep(DRAIN_S)
        finally:  # stopped even if its server is stopped meanwhile
            self._stop_replica(replica)

    def _stop_replica(self, replica: WatchedServer) -> None:
        task = asyncio.create_task(replica.stop())
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _autoscale(self, server: _Replicated) -> None:
        """Sample the requests in flight per ready replica; scale within min and max."""
        name = server.spec.model
        while True:
            await asyncio.sleep(SAMPLE_S)
            scale = server.spec.scale
            if scale.max_replicas <= scale.min_replicas:
                server.samples.clear()
                continue
            now = time.monotonic()
            ready = sum(r.health is Health.UP for r in server.replicas) or 1
            in_flight = self.in_flight(name)
            server.samples.append((now, in_flight))
            while server.samples and server.samples[0][0] < now - DOWN_AFTER_S:
                server.samples.popleft()
            recent = [n for t, n in server.samples if t >= now - UP_AFTER_S]
            spread = min(recent) / ready if recent else 0.0
            full = now - server.samples[0][0] >= DOWN_AFTER_S - SAMPLE_S
            if (
                server.wanted < scale.max_replicas
                and now - server.samples[0][0] >= UP_AFTER_S - SAMPLE_S
                and spread > TARGET_IN_FLIGHT
            ):
                server.wanted += 1
                said = f"{spread:.1f} requests in flight per replica"
                self.record(name, f"Scaling up to {server.wanted} replicas: {said} "
                            f"(target {TARGET_IN_FLIGHT:g}).")  # fmt: skip
                server.samples.clear()
                self._match(server)
            elif (
                server.wanted > scale.min_replicas
                and full
                and max(n for _, n in server.samples) <= TARGET_IN_FLIGHT * (server.wanted - 1)
            ):
                server.wanted -= 1
                self.record(name, f"Scaling down to {server.wanted} "
                            f"replica{'s' if server.wanted > 1 else ''}: fewer requests in flight "
                            f"for {DOWN_AFTER_S:g} s.")  # fmt: skip
                server.samples.clear()
                self._match(server)

    def _view(self, server: _Replicated) -> ServerView:
        key, scale = server.spec.key, server.spec.scale
        if server.failed:
            return ServerView(key, Health.FAILED, None, message=server.failed, scale=scale)
        up = [
            r
            for r in server.replicas
            if r.health is Health.UP and r.answering and r.process is not None
        ]
        versions: dict[str, Held] = {}
        ready_on: dict[str, set[int]] = {}
        for version in server.told:
            seen = [r.versions[version] for r in up if version in r.versions]
            ready = [r.process.number for r in up  # type: ignore[union-attr]
                     if (h := r.versions.get(version)) and h.state is HeldState.READY]  # fmt: skip
            ready_on[version] = set(ready)
            if ready:
                versions[version] = Held(HeldState.READY, f"Ready on {len(ready)} of "
                                         f"{len(server.replicas)} replicas.")  # fmt: skip
            elif any(h.state is HeldState.LOADING for h in seen) or not seen:
                versions[version] = Held(HeldState.LOADING, "Loading the model.")
            else:
                versions[version] = seen[0]
        if up:
            health, message = Health.UP, f"{len(up)} of {len(server.replicas)} replicas are up."
        else:
            first = server.replicas[0] if server.replicas else None
            health = first.health if first is not None else Health.STARTING
            message = first.message if first is not None else "Placing its replicas."
            waiting = getattr(first.process, "waiting", "") if first is not None else ""
            message = waiting or message
            if health is Health.UP:
                health = Health.STARTING
        address = ServerAddress(
            server.number,
            replicas=tuple(r.process.replica() for r in up),  # type: ignore[union-attr]
        )
        return ServerView(
            key, health, address, frozen(versions), message, scale,
            frozen({v: frozenset(n) for v, n in ready_on.items()}),
        )  # fmt: skip


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

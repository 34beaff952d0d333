"""The route table: what the gateway needs to answer `/model/<name>/<ref>/invocations`.

The controller builds a whole new table each time it plans and publishes it in one assignment;
the gateway reads whichever table is current and never sees one half-updated. Every part is
frozen: a table that was published never changes. The gateway, for its part, notes on the board
when each model last got a scoring request, which planning reads to let idle models sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from modelhost.control.settings import Runtime

EMPTY: Mapping = MappingProxyType({})


def empty() -> Mapping:
    """The default of a mapping field: no entries (a shared read-only one)."""
    return EMPTY


class VersionState(StrEnum):
    """A served version's state, as the serving API shows it."""

    PENDING = "VERSION_STATE_PENDING"
    READY = "VERSION_STATE_READY"
    FAILED = "VERSION_STATE_FAILED"
    SCALED_TO_ZERO = "VERSION_STATE_SCALED_TO_ZERO"  # its model sleeps: no server holds it


class EndpointState(StrEnum):
    """A served model's state, as the serving API shows it."""

    PENDING = "ENDPOINT_STATE_PENDING"
    READY = "ENDPOINT_STATE_READY"
    FAILED = "ENDPOINT_STATE_FAILED"
    # Asleep after `scale_to_zero_after` without requests: its servers stopped, the next
    # request wakes it.
    SCALED_TO_ZERO = "ENDPOINT_STATE_SCALED_TO_ZERO"


@dataclass(frozen=True)
class Replica:
    """One process of a model server that the gateway sends requests to: on this machine, at
    its Unix socket; on a cluster node, at its TCP address, with the secret it was started with.
    `number` is never reused while modelhost runs (it names the gateway's connection pool), so
    a replaced process is a new replica and connections to the old one are dropped."""

    number: int
    socket: str = ""  # its Unix socket on this machine, or
    host: str = ""  # the address of the cluster node it runs on, with
    port: int = 0
    secret: str = field(default="", repr=False)  # sent as `Authorization: Bearer` over TCP


@dataclass(frozen=True)
class ServerAddress:
    """Where the gateway reaches one model server: `number` is never reused while modelhost
    runs, so a restarted server is a new address and connections to the old one are dropped.

    A server on this machine is one process at `socket`. A server placed on a cluster has any
    number of replicas, the gateway spreading requests over them; a route's address lists only
    the replicas that hold its version ready.
    """

    number: int
    socket: str = ""  # the Unix socket of a server of this machine
    replicas: tuple[Replica, ...] = ()  # for one of this machine: its process, at `socket`

    def __post_init__(self) -> None:
        if self.socket and not self.replicas:
            object.__setattr__(self, "replicas", (Replica(self.number, self.socket),))


@dataclass(frozen=True)
class VersionRoute:
    state: VersionState
    message: str
    server: ServerAddress | None = None  # set exactly when the version is ready
    # What the registry says of it (for the serving API): its stage, if any, and its aliases.
    stages: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRoutes:
    """One served model: its versions, and its stages and aliases by the version they name."""

    state: EndpointState = EndpointState.PENDING
    message: str = "Preparing the versions."
    env_manager: str = ""  # the env_manager its versions were planned with
    versions: Mapping[str, VersionRoute] = field(default_factory=empty)
    refs: Mapping[str, str] = field(default_factory=empty)  # stage or alias -> a ready version
    # What its model servers run with; its timeout_s bounds its requests at the gateway too.
    runtime: Runtime = field(default_factory=Runtime)
    # When (the controller's clock) it last became ready with nothing loading, or fell asleep:
    # awake, it has been idle since the later of this and its last request.
    since: float = 0.0

    def resolve(self, ref: str) -> str | None:
        """The version `ref` names: a version number, a stage (any case) or an alias."""
        if ref in self.versions:
            return ref
        return self.refs.get(ref) or self.refs.get(ref.capitalize())


@dataclass(frozen=True)
class RouteTable:
    models: Mapping[str, ModelRoutes] = field(default_factory=empty)

    def timeout_s(self, name: str) -> float:
        """How long a scoring request of model `name` may take: its own setting (the default
        for a model this table does not hold, turned off meanwhile)."""
        routes = self.models.get(name)
        return (routes.runtime if routes is not None else Runtime()).timeout_s

    def servers(self) -> set[int]:
        """The numbers of the servers some route points at."""
        return {
            route.server.number
            for routes in self.models.values()
            for route in routes.versions.values()
            if route.server is not None
        }

    def replicas(self) -> set[int]:
        """The numbers of the replicas some route points at."""
        return {
            replica.number
            for routes in self.models.values()
            for route in routes.versions.values()
            if route.server is not None
            for replica in route.server.replicas
        }


def frozen(mapping: dict) -> Mapping:
    """A read-only view of `mapping`, which its builder must no longer change."""
    return MappingProxyType(mapping)


class RouteBoard:
    """Where the controller publishes route tables and the gateway reads the current one."""

    def __init__(self) -> None:
        self.table = RouteTable()
        # Until the controller first read what should be served: a model missing from the
        # table may well be served (a node just started behind a balancer), not unknown.
        self.starting = True
        # Served model -> when (the event loop's clock) it last got a scoring request: written
        # by the gateway as requests come, read by planning; no lock, as both run on one loop.
        self.last_request: dict[str, float] = {}
        # Served model -> its scoring requests in flight at the gateway, which autoscaling reads.
        self.in_flight: dict[str, int] = {}
        self._published: asyncio.Event | None = None  # set by the next publish, if awaited

    def publish(self, table: RouteTable) -> None:
        self.table = table  # one assignment: a reader sees the old table or the new, whole
        if self._published is not None:
            self._published.set()
            self._published = None

    async def next_table(self) -> RouteTable:
        """The next table published (on the event loop the controller publishes from)."""
        if self._published is None:
            self._published = asyncio.Event()
        await self._published.wait()
        return self.table

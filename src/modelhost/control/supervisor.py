"""What the controller asks of whatever runs model servers, and what it sees of them.

A supervisor starts and stops model servers, tells them which versions to hold, pings them,
and restarts with back-off those that exit or stop answering; every step is an event. Its
methods return at once: the work happens on its own tasks, so a slow or hung server holds up
nothing but itself, and what came of it shows in the next `view()`. Planning (control/plan.py)
and the gateway know only these types, never which supervisor runs the servers: local
processes of this machine (control/local.py), or processes owned by Ray actors placed on the
nodes of a Ray cluster, with replicas (control/cluster.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from modelhost.control.environments import Environment
from modelhost.control.routes import ServerAddress, empty
from modelhost.control.settings import Runtime, Scale

# A server runs the versions of one registered model that share one environment, with the
# model's settings of the time it started: new settings are a new server, started beside it.
ServerKey = tuple[str, str, Runtime]  # (registered model name, environment key, its runtime)


class Health(StrEnum):
    STARTING = "STARTING"  # started, has not answered yet
    UP = "UP"  # answers its health checks
    UNRESPONSIVE = "UNRESPONSIVE"  # stopped answering, or said it is unhealthy: being replaced
    RESTARTING = "RESTARTING"  # exited; starts again when its back-off is over
    FAILED = "FAILED"  # cannot run at all (it asks for more than any node has): its message says


class HeldState(StrEnum):
    """A version's state inside its model server."""

    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Held:
    state: HeldState
    message: str


@dataclass(frozen=True)
class ServerSpec:
    """What to run: the model server of `model` in `environment`, with `runtime`."""

    model: str
    environment: Environment
    runtime: Runtime = field(default_factory=Runtime)
    scale: Scale = field(default_factory=Scale)  # replicas, where the supervisor has them
    # A version's fetched artifacts that declare the environment: a supervisor that builds it
    # elsewhere (on a cluster node) reads its requirements there.
    model_dir: Path | None = field(default=None, compare=False)

    @property
    def key(self) -> ServerKey:
        return (self.model, environment_key(self.environment), self.runtime)


@dataclass(frozen=True)
class ServerView:
    """One model server as last seen."""

    key: ServerKey
    health: Health
    address: ServerAddress | None = None  # None until a process of it has started
    # The versions it holds or was told to
    versions: Mapping[str, Held] = field(default_factory=empty)
    message: str = ""
    scale: Scale = field(default_factory=Scale)  # what it was last told to run with
    # Version -> the replicas that hold it ready, for a server with replicas (empty: the one
    # process at `address` holds what `versions` says).
    ready_on: Mapping[str, frozenset[int]] = field(default_factory=empty)

    def address_of(self, version: str) -> ServerAddress | None:
        """Where a request for `version` may go: only to replicas holding it ready."""
        if self.address is None or not self.ready_on:
            return self.address
        ready = self.ready_on.get(version, frozenset())
        return replace(self.address, replicas=tuple(
            replica for replica in self.address.replicas if replica.number in ready
        ))  # fmt: skip


class Supervisor(Protocol):
    def start(self, spec: ServerSpec) -> None:
        """Run a server for `spec` from now on, restarting it whenever it fails."""

    def stop(self, key: ServerKey) -> None:
        """Stop the server and forget it."""

    def hold(self, key: ServerKey, version: str, model_uri: str, local_path: Path) -> None:
        """Tell the server to load `version` from its fetched artifacts."""

    def release(self, key: ServerKey, version: str) -> None:
        """Tell the server to let `version` go."""

    def rescale(self, key: ServerKey, scale: Scale) -> None:
        """Run the server's replicas within `scale` from now on."""

    def view(self) -> Mapping[ServerKey, ServerView]:
        """Every server started and not stopped, as last seen."""

    async def close(self) -> None:
        """Stop every server; nothing it started is left running."""


# The key of the server that runs in the interpreter running modelhost: every version whose
# needs it satisfies shares it, whatever their requirements' own cache keys.
CURRENT = "current"


def environment_key(environment: Environment) -> str:
    """Which server of a model runs versions prepared with `environment`."""
    return CURRENT if environment.current else environment.key

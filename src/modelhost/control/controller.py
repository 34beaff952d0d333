"""The controller: what should be served, made to run, and the routes to it published.

Three parts, each with one job:
- control/desired.py reads what should be served (the served models' settings, and their
  non-archived versions, stages and aliases in the registry) on a thread;
- control/plan.py decides, as a pure function of that and of what runs, what to do next and
  the route table that follows;
- a supervisor (control/supervisor.py; control/local.py runs processes of this machine) starts,
  watches and restarts model servers and tells them which versions to hold, while
  control/placement.py prepares versions (artifacts fetched, environments built) on threads.

The controller plans again whenever one of them reports a change, and at least every
`interval_s`; carrying out a plan never waits (everything slow runs on a thread or a task of its
own), so neither planning nor the gateway it shares the event loop with is ever held up by a
registry, a database or a model server. Model code runs as control/isolation.py says.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from modelhost.config import UpSettings
from modelhost.control.desired import DesiredReader
from modelhost.control.environments import Environment
from modelhost.control.events import EventLog
from modelhost.control.forkserver import ForkServers
from modelhost.control.isolation import Isolation
from modelhost.control.local import LocalSupervisor
from modelhost.control.placement import Preparer
from modelhost.control.plan import (
    Action,
    Actual,
    Forget,
    Hold,
    Prepare,
    Record,
    Release,
    Rescale,
    StartServer,
    StopServer,
    plan,
)
from modelhost.control.routes import RouteBoard, frozen
from modelhost.control.servers import server_log
from modelhost.control.settings import platform_defaults
from modelhost.control.store import StateStore
from modelhost.control.supervisor import CURRENT, Supervisor

log = logging.getLogger("modelhost.controller")


class Controller:
    def __init__(
        self,
        settings: UpSettings,
        registry_url: str,
        store: StateStore,
        board: RouteBoard,
        isolation: Isolation,
        interval_s: float = 1.0,
    ) -> None:
        self.board = board
        self.interval_s = interval_s
        self.events = EventLog(store)
        self.logs = settings.home / "logs"
        home = settings.home.resolve()  # model code reaches its files by real paths
        # The model servers' Unix sockets: a short path (sockets allow ~100 bytes), in a folder
        # only this user may enter (0700), so no model's code can reach any server's socket.
        self.sockets = Path(tempfile.mkdtemp(prefix="modelhost-"))
        self.defaults = platform_defaults(settings.env_manager, settings.timeout_s)
        self.desired = DesiredReader(store, registry_url, self.defaults, self._replan, interval_s)
        self.preparer = Preparer(
            home, registry_url, self.events.record, isolation, self.log_path, self._replan
        )
        # The same for every server; each also gets its model's runtime (control/settings.py).
        worker_options = ["--max-body-mb", str(settings.max_body_mb)]
        # Fork servers are this machine's: servers placed on a cluster start afresh on its nodes.
        forking = settings.fork_servers and settings.engine == "local"
        self.forks = ForkServers(isolation, self.logs, forking)
        self.supervisor: Supervisor
        if settings.engine == "ray":
            from modelhost.control.cluster import RayEngine, RaySupervisor

            assert settings.ray_address is not None, "preflight checked it"
            engine = RayEngine(settings.ray_address)
            engine.connect()
            self.supervisor = RaySupervisor(
                engine, self.logs, worker_options, self.events.record, self._replan,
                lambda name: board.in_flight.get(name, 0),
            )  # fmt: skip
        else:
            self.supervisor = LocalSupervisor(
                isolation, self.logs, worker_options, self.sockets, self.events.record,
                self._replan, self.forks,
            )  # fmt: skip
        self._wake = asyncio.Event()

    def log_path(self, name: str) -> Path:
        """Where the model servers of `name` write their log (loading output, tracebacks)."""
        return server_log(self.logs, name)

    def nudge(self) -> None:
        """Read what should be served now (serving turned on or off, a setting changed), and
        plan now (a request came for a sleeping model)."""
        self.desired.nudge()
        self._replan()

    def _replan(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        # modelhost's own environment's fork server imports while the registry is read.
        own = self.forks.of(Environment(CURRENT, Path(sys.executable), built=False))
        if own is not None:
            await asyncio.to_thread(own.start)
        reading = asyncio.create_task(self.desired.run(), name="desired")
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                try:
                    self.step(loop.time())
                except Exception:  # a bug: say so, and look again at the next tick
                    log.exception("Planning failed; trying again")
                try:
                    async with asyncio.timeout(self.interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            reading.cancel()

    def step(self, now: float) -> None:
        """Plan from what is known now, publish the routes, set the actions going."""
        desired = self.desired.latest
        last_request = self.board.last_request
        for gone in last_request.keys() - desired.keys():  # serving turned off
            del last_request[gone]
        actual = Actual(
            frozen(self.preparer.view()), frozen(self.supervisor.view()), frozen(dict(last_request))
        )
        planned = plan(desired, actual, self.board.table, now)
        self.board.starting = not self.desired.read_once
        self.board.publish(planned.routes)
        for action in planned.actions:
            self._carry_out(action)

    def _carry_out(self, action: Action) -> None:
        match action:
            case Prepare(name, version, manager, identity, failures):
                self.preparer.start(name, version, manager, identity, failures)
            case Forget(key):
                self.preparer.forget(key)
            case StartServer(spec):
                self.supervisor.start(spec)
            case StopServer(key):
                self.supervisor.stop(key)
            case Hold(key, version, model_uri, local_path):
                self.supervisor.hold(key, version, model_uri, local_path)
            case Release(key, version):
                self.supervisor.release(key, version)
            case Rescale(key, scale):
                self.supervisor.rescale(key, scale)
            case Record(name, message, version):
                self.events.record(name, message, version)

    async def stop(self) -> None:
        self.preparer.stop()
        await self.supervisor.close()
        await asyncio.to_thread(self.forks.close)
        await asyncio.to_thread(self.events.close)
        shutil.rmtree(self.sockets, ignore_errors=True)

"""The reconcile loop: serving-enabled models and their non-archived versions, made to run.

Each version of a serving-enabled model is first prepared (control/placement.py: its artifacts
fetched, the Python environment it declares built or found), then held by the model's server
for that environment (control/servers.py): a model has one `modelhost worker` per environment
its versions need, usually one. The route table maps a model's versions to the number of the
server holding them (which names its Unix socket), and its stages and aliases to a ready
version; a stage or alias moves only once its new target is ready. Model code runs as
control/isolation.py says.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from modelhost.config import EnvManager, UpSettings
from modelhost.control.isolation import Isolation
from modelhost.control.placement import Placement, PlacementState, Preparer
from modelhost.control.servers import ModelServerProcess, server_log, socket_path
from modelhost.control.store import StateStore

log = logging.getLogger("modelhost.controller")

STAGES = ("Production", "Staging")
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
# While a version is on its way (preparing, its server starting, loading), look again sooner:
# each look is one step closer to its first answer.
BUSY_INTERVAL_S = 0.2
READY, PENDING, FAILED = "VERSION_STATE_READY", "VERSION_STATE_PENDING", "VERSION_STATE_FAILED"
_WORKER_STATES = {"READY": READY, "FAILED": FAILED}  # LOADING: PENDING


@dataclass
class Desired:
    """What the registry says one model should serve."""

    versions: dict[str, str]  # version -> stage
    aliases: dict[str, str]  # alias -> version
    # version -> what its artifacts are (source and creation time), to check fetched copies by
    identities: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelRoutes:
    """What the gateway needs to answer /model/<name>/<ref>/invocations."""

    state: str = "ENDPOINT_STATE_PENDING"
    message: str = "Preparing the versions."
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> state, message
    # ready version -> the number of its server (names the server's socket: socket_path)
    ports: dict[str, int] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # stage or alias -> ready version

    def resolve(self, ref: str) -> str | None:
        if ref in self.versions:
            return ref
        return self.refs.get(ref) or self.refs.get(ref.capitalize())


@dataclass
class Cluster:
    """What runs for one served model: where each version goes, and the servers holding them."""

    manager: str  # the env_manager its placements were made with
    placements: dict[str, Placement] = field(default_factory=dict)  # version -> placement
    # version -> the placement it served from before env_manager changed, until the new is ready
    previous: dict[str, Placement] = field(default_factory=dict)
    servers: dict[str, ModelServerProcess] = field(default_factory=dict)  # server key -> server
    desired: Desired | None = None  # as last read from the registry
    read_at: float = float("-inf")  # when, on the event loop's clock

    def wanted(self) -> dict[str, dict[str, Placement]]:
        """Server key -> the versions that server should hold, by version."""
        wanted: dict[str, dict[str, Placement]] = {}
        for placement in [*self.previous.values(), *self.placements.values()]:
            if placement.state is PlacementState.PREPARED and placement.key is not None:
                wanted.setdefault(placement.key, {})[placement.version] = placement
        return wanted


class Controller:
    """Reconciles every `interval_s`; the gateway reads `routes`."""

    def __init__(
        self, settings: UpSettings, registry_url: str, store: StateStore, interval_s: float = 1.0
    ) -> None:
        self.registry = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self.registry_url = registry_url
        self.store = store
        self.logs = settings.home / "logs"
        self.default_env_manager = EnvManager(settings.env_manager).value
        self.worker_options = [
            "--max-body-mb", str(settings.max_body_mb), "--timeout", str(settings.timeout_s)
        ]  # fmt: skip
        # Model code reaches its files by real paths: it may not pass where a link lies.
        home = settings.home.resolve()
        # The admin token may come as a flag; the scrub drops the gateway's variables by name
        # (the registry's secret among them, as MLFLOW_TRACKING_TOKEN) and their values.
        self.isolation = Isolation.for_platform(home, settings.model_user, [settings.admin_token])
        # The model servers' Unix sockets: a short path (sockets allow ~100 bytes), in a folder
        # only this user may enter (0700), so no model's code can reach any server's socket.
        self.sockets = Path(tempfile.mkdtemp(prefix="modelhost-"))
        self.interval_s = interval_s
        self.routes: dict[str, ModelRoutes] = {}
        self.preparer = Preparer(home, registry_url, store.record, self.isolation)
        self._clusters: dict[str, Cluster] = {}
        self._wake = asyncio.Event()

    def log_path(self, name: str) -> Path:
        """Where the model servers of `name` write their log (loading output, tracebacks)."""
        return server_log(self.logs, name)

    def env_manager(self, name: str) -> str:
        """The env_manager the versions of served model `name` run with."""
        return self.store.env_manager(name) or self.default_env_manager

    def nudge(self) -> None:
        """Reconcile now rather than at the next tick (after enable, disable or a setting)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:  # the state store may be briefly away: try next tick
                log.exception("Reconciling failed; trying again")
            self._wake.clear()
            try:
                async with asyncio.timeout(BUSY_INTERVAL_S if self._busy() else self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _busy(self) -> bool:
        """Whether some version is on its way to ready (rather than ready, failed or gone)."""
        return any(
            shown["state"] == PENDING
            for routes in self.routes.values()
            for shown in routes.versions.values()
        )

    async def stop(self) -> None:
        self.preparer.stop()
        for name in list(self._clusters):
            await self._drop(name)
        shutil.rmtree(self.sockets, ignore_errors=True)

    def socket_path(self, number: int) -> Path:
        """The Unix socket model server `number` (as in `routes`) listens on, for the gateway."""
        return socket_path(self.sockets, number)

    async def reconcile(self) -> None:
        served = await asyncio.to_thread(self.store.served)
        for name in set(self._clusters) - set(served):
            await self._drop(name)
            self.routes.pop(name, None)
            self.store.record(name, "Serving disabled: the model servers stopped.")
        for name, manager in served.items():
            try:
                await self._reconcile_model(name, manager or self.default_env_manager)
            except Exception:  # one model's trouble must not hold up the others
                log.exception("Reconciling %s failed; trying again", name)

    async def _drop(self, name: str) -> None:
        cluster = self._clusters.pop(name)
        for placement in [*cluster.placements.values(), *cluster.previous.values()]:
            if placement.task is not None:
                placement.task.cancel()
        for server in cluster.servers.values():
            await server.stop()

    async def _reconcile_model(self, name: str, manager: str) -> None:
        cluster = self._clusters.get(name)
        if cluster is None:
            cluster = self._clusters[name] = Cluster(manager)
            message = f"Serving enabled: preparing its versions (env_manager {manager})."
            self.store.record(name, message)
        elif cluster.manager != manager:
            self._change_manager(name, cluster, manager)
        routes = self.routes.setdefault(name, ModelRoutes())
        now = asyncio.get_running_loop().time()
        # The registry is read once per interval, however often servers are looked at.
        if now - cluster.read_at >= self.interval_s:
            try:
                cluster.desired = await asyncio.to_thread(self._desired, name)
                cluster.read_at = now
            except Exception as e:
                log.warning("Could not read %s from the registry: %s", name, e)
                # Keep serving what we know; servers are still looked after.
        if cluster.desired is None:
            return
        self._place(name, cluster, cluster.desired)
        wanted = cluster.wanted()
        await self._run_servers(name, cluster, wanted)
        held = await self._hold(name, cluster, wanted)
        self._publish(name, cluster, routes, held)

    def _change_manager(self, name: str, cluster: Cluster, manager: str) -> None:
        """Prepare every version again; what is prepared now serves until its successor is."""
        for version, placement in cluster.placements.items():
            if placement.task is not None:
                placement.task.cancel()
            # A previous placement still serves while this one is not ready yet: keep it.
            if placement.state is PlacementState.PREPARED:
                cluster.previous.setdefault(version, placement)
        cluster.placements = {}
        cluster.manager = manager
        self.store.record(name, f"env_manager is now {manager}: preparing the versions again.")

    def _place(self, name: str, cluster: Cluster, desired: Desired) -> None:
        """Begin preparing new versions and failed ones whose back-off is over; drop gone ones."""
        now = asyncio.get_running_loop().time()
        for version in desired.versions:
            placement = cluster.placements.get(version)
            retry = (
                placement is not None
                and placement.state is PlacementState.FAILED
                and placement.retry_at is not None
                and now >= placement.retry_at
            )
            if placement is None or retry:
                if placement is None:
                    self.store.record(name, f"Deploying version {version}.", version)
                failures = placement.failures if placement is not None else 0
                placement = cluster.placements[version] = self.preparer.start(
                    name, version, cluster.manager, desired.identities.get(version, ""),
                    self.log_path(name), failures,
                )  # fmt: skip
                assert placement.task is not None, "started"
                placement.task.add_done_callback(lambda _: self.nudge())  # hand it over now
        for version in set(cluster.placements) - set(desired.versions):
            placement = cluster.placements.pop(version)
            cluster.previous.pop(version, None)
            if placement.task is not None:
                placement.task.cancel()
            self.store.record(name, f"Version {version} is no longer served.", version)

    async def _run_servers(
        self, name: str, cluster: Cluster, wanted: dict[str, dict[str, Placement]]
    ) -> None:
        """A running server for each environment the versions need; no other."""
        for key in set(cluster.servers) - set(wanted):
            server = cluster.servers.pop(key)
            self.store.record(name, f"{server.describe()} stopped: no version needs it now.")
            await server.stop()
        for key, placements in wanted.items():
            server = cluster.servers.get(key)
            if server is not None and server.alive():
                continue
            restarts = 0
            if server is not None:  # it died: restart it, backing off
                loop = asyncio.get_running_loop()
                if server.restart_at is None:
                    code = server.process.returncode if server.process else None
                    delay = RESTART_BACKOFF_S[min(server.restarts, len(RESTART_BACKOFF_S) - 1)]
                    server.restart_at = loop.time() + delay
                    self.store.record(
                        name,
                        f"{server.describe()} exited with code {code}; restarting in {delay} s.",
                    )
                    await server.stop()
                if loop.time() < server.restart_at:
                    continue
                restarts = server.restarts + 1
            environment = next(iter(placements.values())).environment
            assert environment is not None, "a prepared placement has its environment"
            server = ModelServerProcess(
                name, environment, self.isolation, self.logs, self.worker_options, self.sockets
            )
            if restarts == 0:
                self.store.record(name, f"{server.describe()} is starting.")
            server.restarts = restarts
            server.start()
            cluster.servers[key] = server

    async def _hold(
        self, name: str, cluster: Cluster, wanted: dict[str, dict[str, Placement]]
    ) -> dict[str, dict[str, dict]]:
        """Tell each server that answers which versions to hold; what each holds, by key."""
        held_by_key: dict[str, dict[str, dict]] = {}
        for key, server in cluster.servers.items():
            if not server.alive():
                continue
            was_up = server.up
            held = await server.held()
            if held is None:
                continue  # still starting
            if not was_up:
                self.store.record(name, f"{server.describe()} is up.")
            placements = wanted.get(key, {})
            for version in placements.keys() - held.keys():
                placement = placements[version]
                assert placement.local_path is not None, "a prepared placement has its artifacts"
                await server.hold(version, f"models:/{name}/{version}", placement.local_path)
                held[version] = {"state": "LOADING", "message": "Loading the model."}
            for version in held.keys() - placements.keys():
                await server.release(version)
                del held[version]
            held_by_key[key] = held
        return held_by_key

    def _publish(
        self, name: str, cluster: Cluster, routes: ModelRoutes, held: dict[str, dict[str, dict]]
    ) -> None:
        assert cluster.desired is not None, "published after the registry was read"
        desired = cluster.desired
        versions: dict[str, dict[str, str]] = {}
        ports: dict[str, int] = {}
        for version in desired.versions:
            state, message, number = self._shown(cluster, cluster.placements.get(version), held)
            previous = cluster.previous.get(version)
            if state == READY:
                cluster.previous.pop(version, None)  # the old server lets go at the next tick
            elif previous is not None:
                old_state, _, old_number = self._shown(cluster, previous, held)
                if old_state == READY:  # serve on from where it was until the new one is ready
                    state, number = READY, old_number
                    message = f"Ready in its previous environment; in the new one: {message}"
            before = routes.versions.get(version, {}).get("state")
            if state != before and state == READY:
                self.store.record(name, f"Version {version} is ready.", version)
            elif state != before and state == FAILED:
                self.store.record(name, f"Version {version} failed: {message}", version)
            versions[version] = {"state": state, "state_message": message}
            if state == READY and number is not None:
                ports[version] = number
        ready = set(ports)
        refs = {}
        targets = dict(desired.aliases)
        for stage in STAGES:
            staged = [v for v, s in desired.versions.items() if s == stage]
            if staged:
                targets[stage] = max(staged, key=int)
        for ref, target in targets.items():
            previous_target = routes.refs.get(ref)
            # A moved stage or alias keeps its old version until the new one is ready.
            if target in ready:
                refs[ref] = target
            elif previous_target in ready:
                refs[ref] = previous_target
        routes.versions, routes.ports, routes.refs = versions, ports, refs
        routes.state, routes.message = self._endpoint_state(cluster, versions)

    @staticmethod
    def _shown(
        cluster: Cluster, placement: Placement | None, held: dict[str, dict[str, dict]]
    ) -> tuple[str, str, int | None]:
        """(state, message, server number) of one placement of a version."""
        if placement is None:
            return PENDING, "Waiting to be prepared.", None
        if placement.state is PlacementState.PREPARING:
            return PENDING, placement.message, None
        if placement.state is PlacementState.FAILED:
            return FAILED, placement.message, None
        server = cluster.servers.get(placement.key or "")
        shown = held.get(placement.key or "", {}).get(placement.version)
        if server is None or shown is None:
            return PENDING, "Starting its model server.", None
        state = _WORKER_STATES.get(shown["state"], PENDING)
        return state, shown["message"], server.number

    @staticmethod
    def _endpoint_state(cluster: Cluster, versions: dict[str, dict[str, str]]) -> tuple[str, str]:
        up = [s for s in cluster.servers.values() if s.up and s.alive()]
        if up:
            many = f"{len(up)} model servers are" if len(up) > 1 else "The model server is"
            return "ENDPOINT_STATE_READY", f"{many} up."
        if not versions:
            return "ENDPOINT_STATE_READY", "No version to serve."
        if all(v["state"] == FAILED for v in versions.values()):
            return "ENDPOINT_STATE_FAILED", "No version could be served; see list-versions."
        if cluster.servers:
            return "ENDPOINT_STATE_PENDING", "Starting the model server."
        return "ENDPOINT_STATE_PENDING", "Preparing the versions."

    def _desired(self, name: str) -> Desired:
        quoted = name.replace("'", "\\'")
        found = [
            v
            for v in self.registry.search_model_versions(f"name = '{quoted}'")
            if v.current_stage != "Archived" and v.status in (None, "READY")
        ]
        versions = {v.version: v.current_stage or "None" for v in found}
        identities = {v.version: f"{v.source} {v.creation_timestamp}" for v in found}
        aliases = dict(self.registry.get_registered_model(name).aliases or {})
        return Desired(
            versions, {a: str(v) for a, v in aliases.items() if str(v) in versions}, identities
        )

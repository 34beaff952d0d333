"""The reconcile loop: serving-enabled models and their non-archived versions, made to run.

Each serving-enabled model gets a model server process (`modelhost worker`) that is told to hold
every non-archived version. The route table it publishes maps a model's versions, stages and
aliases to a ready version; a stage or alias moves only once its new target is ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from mlflow import MlflowClient

from modelhost.config import UpSettings
from modelhost.control.store import StateStore
from modelhost.net import free_port
from modelhost.processes import stop_group

log = logging.getLogger("modelhost.controller")

STAGES = ("Production", "Staging")
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


@dataclass
class Desired:
    """What the registry says one model should serve."""

    versions: dict[str, str]  # version -> stage
    aliases: dict[str, str]  # alias -> version


@dataclass
class ModelRoutes:
    """What the gateway needs to answer /model/<name>/<ref>/invocations."""

    port: int | None = None
    state: str = "ENDPOINT_STATE_PENDING"
    message: str = "Starting the model server."
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> state, message
    refs: dict[str, str] = field(default_factory=dict)  # stage or alias -> ready version

    def resolve(self, ref: str) -> str | None:
        if ref in self.versions:
            return ref
        return self.refs.get(ref) or self.refs.get(ref.capitalize())


def server_log(logs: Path, name: str) -> Path:
    """A file of its own for any registered model name (names may hold spaces, slashes...)."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # "a b" and "a_b" stay apart
    return logs / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{digest}.log"


class ModelServerProcess:
    """One `modelhost worker` for one registered model."""

    def __init__(self, name: str, registry_url: str, logs: Path, options: list[str]) -> None:
        self.name = name
        self.registry_url = registry_url
        self.log_path = server_log(logs, name)
        self.options = options  # `modelhost worker` flags
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.client: httpx.AsyncClient | None = None
        self.restarts = 0
        self.restart_at: float | None = None  # set once it is seen dead

    def start(self) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.registry_url}
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelhost", "worker", "--port", str(self.port),
                 *self.options],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.process is not None:
            await asyncio.to_thread(stop_group, self.process, 15)


class Controller:
    """Reconciles every `interval_s`; the gateway reads `routes`."""

    def __init__(
        self, settings: UpSettings, registry_url: str, store: StateStore, interval_s: float = 1.0
    ) -> None:
        self.registry = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self.registry_url = registry_url
        self.store = store
        self.logs = settings.home / "logs"
        self.worker_options = [
            "--max-body-mb", str(settings.max_body_mb), "--timeout", str(settings.timeout_s)
        ]  # fmt: skip
        self.interval_s = interval_s
        self.routes: dict[str, ModelRoutes] = {}
        self._servers: dict[str, ModelServerProcess] = {}
        self._wake = asyncio.Event()

    def log_path(self, name: str) -> Path:
        """Where the model server of `name` writes its log (loading output, tracebacks)."""
        return server_log(self.logs, name)

    def nudge(self) -> None:
        """Reconcile now rather than at the next tick (after enable or disable)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:  # the registry or a server may be briefly away: try next tick
                log.exception("Reconciling failed; trying again")
            self._wake.clear()
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def stop(self) -> None:
        for name in list(self._servers):
            await self._servers.pop(name).stop()

    async def reconcile(self) -> None:
        enabled = await asyncio.to_thread(self.store.enabled)
        for name in set(self._servers) - set(enabled):
            await self._servers.pop(name).stop()
            self.routes.pop(name, None)
            self.store.record(name, "Serving disabled: the model server stopped.")
        for name in enabled:
            await self._reconcile_model(name)

    async def _reconcile_model(self, name: str) -> None:
        routes = self.routes.setdefault(name, ModelRoutes())
        server = self._servers.get(name)
        if server is None or not server.alive():
            await self._start(name, server, routes)
            return
        assert server.client is not None
        try:
            held = (await server.client.get("/versions")).json()["versions"]
        except httpx.TransportError:
            routes.state, routes.message = "ENDPOINT_STATE_PENDING", "The model server is starting."
            return
        if routes.port is None:
            self.store.record(name, "The model server is up.")
        routes.port = server.port
        routes.state, routes.message = "ENDPOINT_STATE_READY", "The model server is up."
        try:
            desired = await asyncio.to_thread(self._desired, name)
        except Exception as e:
            log.warning("Could not read %s from the registry: %s", name, e)
            return  # keep serving the routes we have
        held_by_name = {v["version"]: v for v in held}
        for version in desired.versions.keys() - held_by_name.keys():
            await server.client.put(
                f"/versions/{version}", json={"model_uri": f"models:/{name}/{version}"}
            )
            self.store.record(name, f"Deploying version {version}.", version)
        for version in held_by_name.keys() - desired.versions.keys():
            await server.client.delete(f"/versions/{version}")
            self.store.record(name, f"Version {version} is no longer served.", version)
        self._publish(name, routes, desired, held_by_name)

    def _publish(
        self, name: str, routes: ModelRoutes, desired: Desired, held: dict[str, dict]
    ) -> None:
        versions = {}
        for version in desired.versions:
            shown = held.get(version, {"state": "LOADING", "message": "Deploying."})
            state = {"READY": "VERSION_STATE_READY", "FAILED": "VERSION_STATE_FAILED"}.get(
                shown["state"], "VERSION_STATE_PENDING"
            )
            before = routes.versions.get(version, {}).get("state")
            if state != before and state == "VERSION_STATE_READY":
                self.store.record(name, f"Version {version} is ready.", version)
            elif state != before and state == "VERSION_STATE_FAILED":
                self.store.record(name, f"Version {version} failed: {shown['message']}", version)
            versions[version] = {"state": state, "state_message": shown["message"]}
        ready = {v for v, s in versions.items() if s["state"] == "VERSION_STATE_READY"}
        refs = {}
        targets = dict(desired.aliases)
        for stage in STAGES:
            staged = [v for v, s in desired.versions.items() if s == stage]
            if staged:
                targets[stage] = max(staged, key=int)
        for ref, target in targets.items():
            previous = routes.refs.get(ref)
            # A moved stage or alias keeps its old version until the new one is ready.
            if target in ready:
                refs[ref] = target
            elif previous in ready:
                refs[ref] = previous
        routes.versions, routes.refs = versions, refs

    def _desired(self, name: str) -> Desired:
        quoted = name.replace("'", "\\'")
        found = self.registry.search_model_versions(f"name = '{quoted}'")
        versions = {
            v.version: v.current_stage or "None"
            for v in found
            if v.current_stage != "Archived" and v.status in (None, "READY")
        }
        aliases = dict(self.registry.get_registered_model(name).aliases or {})
        return Desired(versions, {a: str(v) for a, v in aliases.items() if str(v) in versions})

    async def _start(
        self, name: str, server: ModelServerProcess | None, routes: ModelRoutes
    ) -> None:
        restarts = 0
        if server is not None:  # it died: restart it, backing off
            loop = asyncio.get_running_loop()
            if server.restart_at is None:
                code = server.process.returncode if server.process else None
                delay = RESTART_BACKOFF_S[min(server.restarts, len(RESTART_BACKOFF_S) - 1)]
                server.restart_at = loop.time() + delay
                message = f"The model server exited with code {code}; restarting in {delay} s."
                self.store.record(name, message)
                routes.port, routes.state, routes.message = None, "ENDPOINT_STATE_PENDING", message
                await server.stop()
            if loop.time() < server.restart_at:
                return
            restarts = server.restarts + 1
        else:
            self.store.record(name, "Serving enabled: starting the model server.")
        server = ModelServerProcess(name, self.registry_url, self.logs, self.worker_options)
        server.restarts = restarts
        server.start()
        self._servers[name] = server

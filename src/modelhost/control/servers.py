"""The model server processes of the platform: one `modelhost worker` per model and environment."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
from pathlib import Path

import httpx

from modelhost.control.environments import Environment
from modelhost.net import free_port
from modelhost.processes import stop_group

# The key of the server that runs in the interpreter running modelhost: every version whose
# needs it satisfies shares it, whatever their requirements' own cache keys.
CURRENT = "current"


def server_log(logs: Path, name: str) -> Path:
    """A file of its own for any registered model name (names may hold spaces, slashes...)."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # "a b" and "a_b" stay apart
    return logs / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{digest}.log"


def socket_path(sockets: Path, port: int) -> Path:
    """Where the model server on `port` also listens: a Unix socket, for the gateway."""
    return sockets / f"{port}.sock"


def server_key(environment: Environment) -> str:
    """Which server of a model runs versions prepared with `environment`."""
    return CURRENT if environment.current else environment.key


class ModelServerProcess:
    """One `modelhost worker` holding the versions of one model that share one environment.

    Every server of a model writes to the model's one log file, so the model's logs (and each
    version's lines in them) read the same however many environments it needs.
    """

    def __init__(
        self,
        name: str,
        environment: Environment,
        registry_url: str,
        logs: Path,
        options: list[str],
        sockets: Path,
    ) -> None:
        self.name = name
        self.sockets = sockets  # the folder of the servers' Unix sockets
        self.environment = environment
        self.key = server_key(environment)
        self.registry_url = registry_url
        self.log_path = server_log(logs, name)
        self.options = options  # `modelhost worker` flags
        self.port = 0
        self.socket = Path()
        self.process: subprocess.Popen[bytes] | None = None
        self.client: httpx.AsyncClient | None = None
        self.up = False  # it has answered GET /versions since it started
        self.restarts = 0
        self.restart_at: float | None = None  # set once it is seen dead

    def describe(self) -> str:
        """How events and logs name this server."""
        if self.environment.current:
            return "The model server"
        return f"The model server in environment {self.environment.key}"

    def start(self) -> None:
        self.port = free_port()
        self.socket = socket_path(self.sockets, self.port)
        self.up = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.environment.process_env({**os.environ, "MLFLOW_TRACKING_URI": self.registry_url})
        python = str(self.environment.python)
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [python, "-m", "modelhost", "worker", "--port", str(self.port),
                 "--uds", str(self.socket), *self.options],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url="http://model-server",
            timeout=10,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def held(self) -> dict[str, dict] | None:
        """The versions it holds, by name, with their states; None while it does not answer."""
        assert self.client is not None, "started"
        try:
            answer = await self.client.get("/versions")
        except httpx.TransportError:
            return None
        self.up = True
        return {v["version"]: v for v in answer.json()["versions"]}

    async def hold(self, version: str, model_uri: str, local_path: Path) -> None:
        assert self.client is not None, "started"
        await self.client.put(
            f"/versions/{version}", json={"model_uri": model_uri, "local_path": str(local_path)}
        )

    async def release(self, version: str) -> None:
        assert self.client is not None, "started"
        await self.client.delete(f"/versions/{version}")

    async def stop(self) -> None:
        self.up = False
        if self.client is not None:
            await self.client.aclose()
        if self.process is not None:
            await asyncio.to_thread(stop_group, self.process, 15)

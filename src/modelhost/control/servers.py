"""The model server processes of the platform: one `modelhost worker` per model and environment.

A model server listens on no TCP port: only on a Unix socket that the controller creates, as
the gateway's user, in a folder only that user may enter, and hands over as an open file
descriptor. The server's user never needs the socket's path, and no other model's code (nor
any other local user) can connect to it: scoring, loading code and /metrics stay behind the
gateway, which signs callers in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx

from modelhost.control.environments import Environment
from modelhost.control.isolation import Isolation
from modelhost.processes import stop_group

# The key of the server that runs in the interpreter running modelhost: every version whose
# needs it satisfies shares it, whatever their requirements' own cache keys.
CURRENT = "current"


def server_log(logs: Path, name: str) -> Path:
    """A file of its own for any registered model name (names may hold spaces, slashes...)."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # "a b" and "a_b" stay apart
    return logs / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{digest}.log"


# Each server started gets a number of its own, never reused while modelhost runs: it names the
# server's socket, and the gateway keeps a connection pool per number.
_numbers = itertools.count(1)


def socket_path(sockets: Path, number: int) -> Path:
    """Where model server `number` listens: a Unix socket, for the gateway."""
    return sockets / f"{number}.sock"


def bind_socket(path: Path) -> socket.socket:
    """A bound Unix socket at `path` that only this user may connect to.

    It is bound, not listening: the server listens once it serves, and until then connecting
    is refused at once, which is how the controller tells a starting server from a slow one.
    """
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a server that died
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)  # the folder is ours alone already; this says so twice
    except BaseException:
        listener.close()
        raise
    return listener


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
        isolation: Isolation,
        logs: Path,
        options: list[str],
        sockets: Path,
    ) -> None:
        self.name = name
        self.sockets = sockets  # the folder of the servers' Unix sockets
        self.environment = environment
        self.key = server_key(environment)
        self.isolation = isolation
        self.log_path = server_log(logs, name)
        self.options = options  # `modelhost worker` flags
        self.number = 0  # names its socket; the routes' and the gateway's key for it
        self.socket = Path()
        self.scratch: Path | None = None  # as the model user: its only writable folder
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
        self.number = next(_numbers)
        self.socket = socket_path(self.sockets, self.number)
        self.up = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        group = self.isolation.group(f"model:{self.name}")
        extra_groups: list[int] = []
        if not self.environment.current:  # a built one: its group lets the server read it
            env_group = self.isolation.group(f"env:{self.environment.key}")
            extra_groups = [env_group] if env_group is not None else []
        env = self.environment.process_env(self.isolation.environ(os.environ))
        self.scratch = self.isolation.scratch(str(self.number), group)
        if self.scratch is not None:  # HOME and TMPDIR no other model can read or write
            env.update(HOME=str(self.scratch), TMPDIR=str(self.scratch))
        python = str(self.environment.python)
        self.isolation.let_through()
        listener = bind_socket(self.socket)
        # The log is opened here, as the gateway's user, so the model's needs no logs folder.
        with listener, open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [python, "-m", "modelhost", "worker", "--fd", str(listener.fileno()),
                 *self.options],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, pass_fds=(listener.fileno(),),
                cwd=self.scratch,
                **self.isolation.process_options(group, extra_groups),
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
        self.isolation.let_through()  # loading reads the version's files as the model user
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
            self.socket.unlink(missing_ok=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

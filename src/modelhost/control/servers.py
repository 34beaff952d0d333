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
import logging
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx

from modelhost.control.environments import Environment
from modelhost.control.forkserver import Forked, ForkServers, ForkServerUnavailable
from modelhost.control.isolation import Isolation
from modelhost.control.routes import Replica
from modelhost.processes import stop_group

log = logging.getLogger("modelhost.controller")


def server_log(logs: Path, name: str) -> Path:
    """A file of its own for any registered model name (names may hold spaces, slashes...)."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # "a b" and "a_b" stay apart
    return logs / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{digest}.log"


# Each server started gets a number of its own, never reused while modelhost runs: it names the
# server's socket, and the gateway keeps a connection pool per number.
_numbers = itertools.count(1)


def next_number() -> int:
    """A number no other server or replica of this run has."""
    return next(_numbers)


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


class ModelServerProcess:
    """One run of a `modelhost worker` holding the versions of one model in one environment,
    forked by its environment's fork server (control/forkserver.py) or, where there is none,
    started as a fresh process.

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
        forks: ForkServers | None = None,
    ) -> None:
        self.name = name
        self.environment = environment
        self.isolation = isolation
        self.log_path = server_log(logs, name)
        self.options = options  # `modelhost worker` flags
        self.number = next_number()  # names its socket; the routes' and the gateway's key
        self.socket = socket_path(sockets, self.number)
        self.forks = forks  # where it forks from, if its environment has a fork server
        self.scratch: Path | None = None  # as the model user: its only writable folder
        self.process: subprocess.Popen[bytes] | Forked | None = None
        self._pidfd: int | None = None  # readable once the process has exited
        self._stopping: asyncio.Future[None] | None = None
        # Its control calls: health checks, and which versions to hold.
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url="http://model-server",
        )

    def start(self) -> None:
        """Start the process (blocking briefly: isolation may add a group first)."""
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
        options = self.isolation.process_options(group, extra_groups)
        fork_server = self.forks.of(self.environment) if self.forks is not None else None
        self.isolation.let_through()
        listener = bind_socket(self.socket)
        # The log is opened here, as the gateway's user, so the model's needs no logs folder.
        with listener, open(self.log_path, "ab") as output:
            if fork_server is not None:
                try:
                    self.process = fork_server.fork(
                        self.options, env, self.scratch, options, listener, output.fileno(),
                        title=f"mh {self.name}",
                    )  # fmt: skip
                    self._pidfd = self.process.pidfd
                    return
                except ForkServerUnavailable as e:
                    log.warning("The model server of %s starts afresh: %s", self.name, e)
            self.process = subprocess.Popen(
                [str(self.environment.python), "-m", "modelhost", "worker",
                 "--fd", str(listener.fileno()), *self.options],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, pass_fds=(listener.fileno(),),
                cwd=self.scratch, **options,
            )  # fmt: skip
            self._pidfd = os.pidfd_open(self.process.pid)

    async def exited(self, timeout: float) -> bool:
        """Wait up to `timeout` for the process to exit; whether it has (at once when it does,
        so a server that died is replaced without waiting for its next health check)."""
        pidfd = self._pidfd
        if pidfd is None:
            return not self.alive()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(pidfd, lambda: done.done() or done.set_result(True))
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(pidfd)
        return done.done()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def exit_reason(self) -> str:
        return f"exited with code {self.returncode}"

    def replica(self) -> Replica:
        return Replica(self.number, str(self.socket))

    def abandon_start(self) -> None:
        pass  # its start never waits

    async def staged(self, local_path: Path) -> str:
        return str(local_path)  # this machine's own copy

    async def stop(self, grace_s: float = 15) -> None:
        """Stop it (SIGKILL at once with `grace_s` 0: a hung server handles no SIGTERM).

        Once: a second call (the supervisor stopping a server its watch was replacing) waits
        for the first, which goes on even if its caller is cancelled.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        await self.client.aclose()
        if self.process is not None:
            await asyncio.to_thread(stop_group, self.process, grace_s)
        if isinstance(self.process, Forked):
            self.process.close()  # its pidfd, ours
        elif self._pidfd is not None:
            os.close(self._pidfd)
        self._pidfd = None
        self.socket.unlink(missing_ok=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

"""Fork servers, from `up`'s side: one per Python environment, each forking its model servers.

A fork server (worker/forkserver.py) imports what model servers need once; a model server
forked from it answers in a fraction of a second and shares those imports' memory with the
other servers of its environment. `up --no-fork-servers` starts every model server as a fresh
process instead, as does any environment that cannot have one:

- With isolation (`up` as root), a fork server runs as root until it forks: it may import only
  modelhost's own environment, which the machine's admin installed. A built environment holds
  packages model code chose (and whose build scripts ran as the model user), so its servers
  start afresh, as the model user, each in its own process.
- A fork server that cannot start (a built environment without what the server imports) is
  said in the log, and its models' servers start afresh.

The model servers it forks are its children, not `up`'s: `up` watches each through a pidfd
(readable once it exits; no pid that could be reused) and hears its exit code from the fork
server. A fork server that dies takes its servers with it (they die with their parent), and
the next server of its environment starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelhost.control.environments import Environment
from modelhost.control.isolation import Isolation
from modelhost.processes import stop_group

log = logging.getLogger("modelhost.controller")

READY_TIMEOUT_S = 120.0  # its imports: seconds, more while the machine is busy
ANSWER_TIMEOUT_S = 10.0  # for a fork: hundredths of a second
MESSAGE_BYTES = 4096


class ForkServerUnavailable(Exception):
    """This environment's fork server cannot fork: start the model server afresh."""


class Forked:
    """A model server forked by a fork server: what `subprocess.Popen` offers of it, by pidfd."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd  # readable once the process has exited
        self.returncode: int | None = None
        self._said = threading.Event()  # the fork server said how it exited

    def exited(self, code: int | None) -> None:
        self.returncode = code
        self._said.set()

    def poll(self) -> int | None:
        if not self._said.is_set() and not _readable(self.pidfd, 0):
            return None
        return self.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        if not _readable(self.pidfd, timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        self._said.wait(1.0)  # reaped by the fork server a moment after; None if it is gone
        return self.returncode

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


class ForkServer:
    """One fork server process, started on the first fork asked of it."""

    def __init__(self, environment: Environment, env: Mapping[str, str], log_path: Path) -> None:
        self.environment = environment
        self.env = dict(env)
        self.log_path = log_path
        self._lock = threading.Lock()  # one start, and one request on the socket, at a time
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._ready = threading.Event()
        self._answers: dict[int, Any] = {}  # request id -> the answer, once it came
        self._answered = threading.Condition()
        self._forked: dict[int, Forked] = {}  # pid -> its server, until it exits
        self._next = 0

    def fork(
        self,
        options: list[str],
        env: Mapping[str, str],
        cwd: Path | None,
        process_options: Mapping[str, Any],
        listener: socket.socket,
        output: int,
        title: str,
    ) -> Forked:
        """A new model server: `modelhost worker --fd <listener> *options`, writing to `output`."""
        channel = self._running()
        request = {
            "env": dict(env),
            "options": options,
            "cwd": str(cwd) if cwd else None,
            "user": process_options.get("user"),
            "group": process_options.get("group"),
            "extra_groups": list(process_options.get("extra_groups", ())),
            "umask": process_options.get("umask"),
            "title": title,
        }
        with self._lock:
            self._next += 1
            number = request["start"] = self._next
            try:
                fds = [listener.fileno(), output]
                socket.send_fds(channel, [json.dumps(request).encode()], fds)
            except OSError as e:
                raise ForkServerUnavailable(f"its fork server is gone ({e})") from None
        answer = self._answer(number)
        if "failed" in answer:
            raise ForkServerUnavailable(f"its fork server could not fork: {answer['error']}")
        return answer["forked"]

    def start(self) -> None:
        """Start the process if it does not run (it imports on its own; `fork` waits for that)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            python = str(self.environment.python)
            with theirs, open(self.log_path, "ab") as output:
                self._process = subprocess.Popen(
                    [python, "-m", "modelhost.worker.forkserver", "--fd", str(theirs.fileno())],
                    stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self.env, start_new_session=True, pass_fds=(theirs.fileno(),),
                )  # fmt: skip
            self._channel, self._ready = ours, threading.Event()
            threading.Thread(
                target=self._listen, args=(ours, self._process, self._ready),
                name="modelhost-forkserver", daemon=True,
            ).start()  # fmt: skip

    def close(self) -> None:
        """Stop it: closing our end makes it kill what it forked and exit."""
        with self._lock:
            if self._channel is not None:
                self._channel.shutdown(socket.SHUT_RDWR)
            process = self._process
        if process is not None:
            stop_group(process, grace_s=5)

    def _running(self) -> socket.socket:
        self.start()
        ready, process, channel = self._ready, self._process, self._channel
        assert process is not None and channel is not None, "started just now"
        if not ready.wait(READY_TIMEOUT_S) or process.poll() is not None:
            raise ForkServerUnavailable(
                f"its fork server did not start (see {self.log_path}); starting it afresh"
            )
        return channel

    def _answer(self, number: int) -> dict[str, Any]:
        with self._answered:
            if not self._answered.wait_for(lambda: number in self._answers, ANSWER_TIMEOUT_S):
                raise ForkServerUnavailable(
                    f"its fork server did not answer within {ANSWER_TIMEOUT_S:g} s"
                )
            return self._answers.pop(number)

    def _listen(
        self, channel: socket.socket, process: subprocess.Popen[bytes], ready: threading.Event
    ) -> None:
        """On a thread of its own: what the fork server says, until it stops."""
        try:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(channel, MESSAGE_BYTES, 1)
                except OSError:
                    data, fds = b"", []
                if not data:
                    break
                message = json.loads(data)
                if "ready" in message:
                    log.info("The fork server of %s is ready", self.environment.python)
                    ready.set()
                elif "exited" in message:
                    forked = self._forked.pop(message["exited"], None)
                    if forked is not None:
                        forked.exited(message["code"])
                else:
                    number = message.get("started") or message.get("failed")
                    if "started" in message:
                        forked = Forked(message["pid"], fds[0])
                        self._forked[forked.pid] = forked
                        message["forked"] = forked
                    with self._answered:
                        self._answers[number] = message
                        self._answered.notify_all()
        finally:
            channel.close()
            for forked in self._forked.values():  # they die with it; how, nobody can say
                forked.exited(None)
            self._forked.clear()
            if process.poll() is None:
                log.warning("The fork server of %s stopped talking", self.environment.python)


class ForkServers:
    """The fork servers of this run, by environment; None where servers start afresh."""

    def __init__(self, isolation: Isolation, logs: Path, enabled: bool = True) -> None:
        self.isolation = isolation
        self.logs = logs
        self.enabled = enabled
        self._servers: dict[Path, ForkServer] = {}
        self._lock = threading.Lock()

    def of(self, environment: Environment) -> ForkServer | None:
        if not self.enabled or (self.isolation.enabled and not environment.current):
            return None
        with self._lock:
            server = self._servers.get(environment.python)
            if server is None:
                name = "current" if environment.current else environment.key
                env = environment.process_env(self.isolation.environ(os.environ))
                server = ForkServer(environment, env, self.logs / f"fork-server-{name}.log")
                self._servers[environment.python] = server
            return server

    def close(self) -> None:
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            server.close()


def _readable(fd: int, timeout: float | None) -> bool:
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    except (OSError, ValueError):  # closed: it was waited for already
        return True

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
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelhost.control.environments import Environment
from modelhost.control.isolation import Isolation
from modelhost.control.supervisor import environment_key
from modelhost.processes import stop_group

log = logging.getLogger("modelhost.controller")

READY_TIMEOUT_S = 120.0  # its imports: seconds, more while the machine is busy
ANSWER_TIMEOUT_S = 10.0  # for a fork: hundredths of a second
MESSAGE_BYTES = 4096


class ForkServerUnavailable(Exception):
    """This environment's fork server cannot fork: start the model server afresh."""


class Forked:
    """A model server forked by a fork server: what `subprocess.Popen` offers of it, by pidfd.

    Each wait selects on a duplicate of the pidfd, so closing it while another thread waits
    can never leave that thread selecting on a number the kernel has given to another file.
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd  # readable once the process has exited; -1 once closed
        self.returncode: int | None = None
        self._said = threading.Event()  # the fork server said how it exited
        self._lock = threading.Lock()

    def exited(self, code: int | None) -> None:
        self.returncode = code
        self._said.set()

    def poll(self) -> int | None:
        if not self._said.is_set() and not self._ended(0):
            return None
        return self.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._said.is_set() and not self._ended(timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        self._said.wait(1.0)  # reaped by the fork server a moment after; None if it is gone
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Through its pidfd: never a process that took its pid after it was reaped."""
        with self._lock:
            if self.pidfd >= 0:  # else it was waited for already
                signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        with self._lock:
            if self.pidfd >= 0:
                os.close(self.pidfd)
                self.pidfd = -1

    def _ended(self, timeout: float | None) -> bool:
        with self._lock:
            if self.pidfd < 0:
                return True  # closed: it was waited for already
            pidfd = os.dup(self.pidfd)
        try:
            return bool(select.select([pidfd], [], [], timeout)[0])
        finally:
            os.close(pidfd)


class _Run:
    """One run of a fork server process, and the line to it."""

    def __init__(self, process: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self.process = process
        self.channel = channel
        self.said = threading.Event()  # it said it is ready, or it stopped talking first
        self.ready = False
        self.forked: dict[int, Forked] = {}  # pid -> a server it forked, until it exits


class ForkServer:
    """One environment's fork server, started on the first fork asked of it (or by `start`),
    and again after it dies; if one never gets ready, this environment's servers start
    afresh from then on."""

    def __init__(self, environment: Environment, env: Mapping[str, str], log_path: Path) -> None:
        self.environment = environment
        self.env = dict(env)
        self.log_path = log_path
        self._lock = threading.Lock()  # one start, and one request on the line, at a time
        self._run: _Run | None = None
        self._failed = False  # a run never got ready: its environment cannot have one
        self._answers: dict[int, Any] = {}  # request number -> the answer, once it came
        self._answered = threading.Condition()
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
        run = self._ready_run()
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
                socket.send_fds(run.channel, [json.dumps(request).encode()], fds)
            except OSError as e:
                raise ForkServerUnavailable(f"its fork server is gone ({e})") from None
        answer = self._answer(number)
        if "failed" in answer:
            raise ForkServerUnavailable(f"its fork server could not fork: {answer['error']}")
        return answer["forked"]

    def start(self) -> _Run:
        """Start the process unless it runs (it imports on its own; `fork` waits for that)."""
        with self._lock:
            if self._run is not None and self._run.process.poll() is None:
                return self._run
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            python = str(self.environment.python)
            with theirs, open(self.log_path, "ab") as output:
                process = subprocess.Popen(
                    [python, "-m", "modelhost.worker.forkserver", "--fd", str(theirs.fileno())],
                    stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self.env, start_new_session=True, pass_fds=(theirs.fileno(),),
                )  # fmt: skip
            run = self._run = _Run(process, ours)
            threading.Thread(
                target=self._listen, args=(run,), name="modelhost-forkserver", daemon=True
            ).start()
            return run

    def close(self) -> None:
        """Stop it: closing our end makes it kill what it forked and exit."""
        with self._lock:
            run = self._run
        if run is not None:
            with contextlib.suppress(OSError):
                run.channel.shutdown(socket.SHUT_RDWR)
            stop_group(run.process, grace_s=5)

    def _ready_run(self) -> _Run:
        if self._failed:
            raise ForkServerUnavailable(f"its environment's fork server failed ({self.log_path})")
        run = self.start()
        if not run.said.wait(READY_TIMEOUT_S) or not run.ready:
            self._failed = True
            run.process.kill()
            raise ForkServerUnavailable(f"its fork server did not start (see {self.log_path})")
        return run

    def _answer(self, number: int) -> dict[str, Any]:
        with self._answered:
            if not self._answered.wait_for(lambda: number in self._answers, ANSWER_TIMEOUT_S):
                raise ForkServerUnavailable(
                    f"its fork server did not answer within {ANSWER_TIMEOUT_S:g} s"
                )
            return self._answers.pop(number)

    def _listen(self, run: _Run) -> None:
        """On a thread of its own: what the fork server says, until it stops."""
        try:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(run.channel, MESSAGE_BYTES, 1)
                except OSError:
                    data, fds = b"", []
                if not data:
                    break
                message = json.loads(data)
                if "ready" in message:
                    log.info("The fork server of %s is ready", self.environment.python)
                    run.ready = True
                    run.said.set()
                elif "exited" in message:
                    forked = run.forked.pop(message["exited"], None)
                    if forked is not None:
                        forked.exited(message["code"])
                else:
                    number = message.get("started") or message.get("failed")
                    if "started" in message:
                        forked = Forked(message["pid"], fds[0])
                        run.forked[forked.pid] = forked
                        message["forked"] = forked
                    with self._answered:
                        self._answers[number] = message
                        self._answered.notify_all()
        finally:
            run.said.set()
            run.channel.close()
            for forked in run.forked.values():  # they die with it; how, nobody can say
                forked.exited(None)


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
                env = environment.process_env(self.isolation.environ(os.environ))
                log_path = self.logs / f"fork-server-{environment_key(environment)}.log"
                server = ForkServer(environment, env, log_path)
                self._servers[environment.python] = server
            return server

    def close(self) -> None:
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            server.close()

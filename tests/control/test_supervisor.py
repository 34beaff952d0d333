"""The local supervisor alone: real model server processes, no controller, no gateway.

It is told to run a server and what to hold, and must keep it running: a server that is killed,
hung (SIGSTOP) or that says it is unhealthy is replaced, each step an event, and what the
supervisor shows of it says so meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path

import httpx
import mlflow
import pytest
from support import FORK_SERVER, command_of, parent_of

from modelhost.control.environments import Environment
from modelhost.control.forkserver import ForkServers
from modelhost.control.isolation import Isolation
from modelhost.control.local import LocalSupervisor
from modelhost.control.settings import Runtime
from modelhost.control.supervisor import Health, HeldState, ServerSpec

KEY = ("iris", "current", Runtime())  # the platform's default settings
TOYS = Path(__file__).parent.parent / "toys"


@pytest.fixture(scope="module")
def saved_model(model_paths) -> Path:
    return model_paths["classifier"]


@pytest.fixture(scope="module")
def escaping(tmp_path_factory) -> Path:
    """A model whose failure escapes the batcher's `except Exception` and stops it."""
    path = tmp_path_factory.mktemp("escaping") / "model"
    mlflow.pyfunc.save_model(
        path, python_model=str(TOYS / "escaping_failure.py"), pip_requirements=["mlflow", "pandas"]
    )
    return path


@pytest.fixture(params=["fresh", "forked"])
def start(request) -> str:
    """How servers start: each a fresh process, or forked by a fork server."""
    return request.param


class Watched:
    """A supervisor with what it reported, for one test."""

    def __init__(self, home: Path, start: str) -> None:
        self.events: list[str] = []
        self.sockets = Path(tempfile.mkdtemp(prefix="modelhost-test-"))
        isolation = Isolation(home, None)
        self.forks = ForkServers(isolation, home / "logs", enabled=start == "forked")
        self.supervisor = LocalSupervisor(
            isolation, home / "logs", ["--timeout", "5"], self.sockets,
            lambda name, message, version=None: self.events.append(message), lambda: None,
            self.forks,
        )  # fmt: skip

    async def close(self) -> None:
        await self.supervisor.close()
        await asyncio.to_thread(self.forks.close)

    def check_started(self, pid: int) -> None:
        """The server of `pid` started as asked: forked by the fork server, or afresh."""
        parent = parent_of(pid)
        forked = FORK_SERVER in command_of(parent)
        assert forked == self.forks.enabled, f"server {pid}'s parent is {parent}"

    async def until(self, check, what: str, timeout_s: float = 90):
        """Wait until `check(view of KEY)` holds, looking every 50 ms."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    view = self.supervisor.view().get(KEY)
                    if view is not None and check(view):
                        return view
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"not {what} in {timeout_s} s: {view}; {self.events}") from None

    async def ready(self, version: str = "1"):
        def held(view) -> bool:
            shown = view.versions.get(version)
            return view.health is Health.UP and shown is not None and shown.state is HeldState.READY

        return await self.until(held, f"version {version} ready")


def pid_of(view) -> int:
    """The process listening on the server's socket: the one the supervisor started."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"worker" in cmdline or FORK_SERVER in cmdline) and b"--fd" in cmdline:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:") and _socket_is(target, view.address.socket):
                    return int(pid)
    raise AssertionError(f"no process serves {view.address}")


def _socket_is(target: str, path: str) -> bool:
    inode = target.removeprefix("socket:[").removesuffix("]")
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] == inode and fields[7] == path:
            return True
    return False


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=240))


def test_a_server_is_started_told_what_to_hold_and_replaced_when_killed_or_hung(
    tmp_path, saved_model, start
):
    async def scenario():
        watched = Watched(tmp_path, start)
        supervisor = watched.supervisor
        here = Environment("here", Path(sys.executable), built=False)
        try:
            supervisor.start(ServerSpec("iris", here))
            first = await watched.until(lambda v: v.health is Health.UP, "up")
            supervisor.hold(KEY, "1", "models:/iris/1", saved_model)
            assert supervisor.view()[KEY].versions["1"].state is HeldState.LOADING
            first = await watched.ready()
            watched.check_started(pid_of(first))

            os.kill(pid_of(first), signal.SIGKILL)
            await watched.until(lambda v: v.health is not Health.UP, "seen down")
            restarted = await watched.until(lambda v: v.health is Health.UP, "up again")
            assert restarted.address.number != first.address.number
            assert restarted.versions == {}  # a new process holds nothing until told
            assert any("exited with code -9; restarting in" in e for e in watched.events)

            supervisor.hold(KEY, "1", "models:/iris/1", saved_model)
            second = await watched.ready()
            hung = pid_of(second)
            watched.check_started(hung)
            os.kill(hung, signal.SIGSTOP)
            try:
                marked = await watched.until(
                    lambda v: v.health in (Health.UNRESPONSIVE, Health.RESTARTING), "marked"
                )
                assert "did not answer its health checks" in marked.message
                third = await watched.until(lambda v: v.health is Health.UP, "replaced")
                assert third.address.number != second.address.number
                assert not Path(f"/proc/{hung}").exists() or _zombie(hung)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(hung, signal.SIGCONT)
            assert any("did not answer its health checks for 3 s; killing it" in e
                       for e in watched.events)  # fmt: skip
        finally:
            await watched.close()
        assert not list(watched.sockets.iterdir())  # every socket removed with its server

    run(scenario())


def test_a_server_whose_batcher_died_says_so_and_is_replaced(tmp_path, escaping, start):
    async def scenario():
        watched = Watched(tmp_path, start)
        supervisor = watched.supervisor
        try:
            supervisor.start(ServerSpec("iris", Environment("here", Path(sys.executable), False)))
            await watched.until(lambda v: v.health is Health.UP, "up")
            supervisor.hold(KEY, "1", "models:/iris/1", escaping)
            first = await watched.ready()
            await _score(first.address.socket)  # the model escapes the batcher: it stops
            await watched.until(lambda v: v.health is not Health.UP, "replaced")
            assert any("says it is unhealthy" in e for e in watched.events), watched.events
            second = await watched.until(lambda v: v.health is Health.UP, "up again")
            assert second.address.number != first.address.number
        finally:
            await watched.close()

    run(scenario())


async def _score(socket: str) -> None:
    """A request that makes the model raise past its batcher."""
    transport = httpx.AsyncHTTPTransport(uds=socket)
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
        body = {"dataframe_records": [{"x": -1.0}]}
        # Unanswered if the server is replaced first: the point is what follows.
        with contextlib.suppress(httpx.TransportError):
            await client.post("/versions/1/invocations", json=body, timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True

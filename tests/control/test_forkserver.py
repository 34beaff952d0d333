"""Fork servers under the local supervisor: real fork servers, real model servers, no platform.

Model servers forked from one fork server are processes of their own (own process group, socket
and log) that share the fork server's imports; a fork server that dies takes its servers with
it and they come back; one that cannot start leaves its servers to start afresh.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from support import FORK_SERVER, command_of, eventually, parent_of

from modelhost.control.environments import Environment
from modelhost.control.forkserver import Forked, ForkServers
from modelhost.control.isolation import Isolation
from modelhost.control.local import LocalSupervisor
from modelhost.control.servers import ModelServerProcess, server_log
from modelhost.control.supervisor import Health, HeldState, ServerSpec
from modelhost.processes import stop_group

HERE = Environment("here", Path(sys.executable), built=False)
MODELS = ("iris-a", "iris-b")


class Servers:
    """A supervisor whose servers fork from fork servers, with what it reported."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.events: list[str] = []
        self.sockets = Path(tempfile.mkdtemp(prefix="modelhost-test-"))
        isolation = Isolation(home, None)
        self.forks = ForkServers(isolation, home / "logs")
        self.supervisor = LocalSupervisor(
            isolation, home / "logs", ["--timeout", "5"], self.sockets,
            lambda name, message, version=None: self.events.append(message), lambda: None,
            self.forks,
        )  # fmt: skip

    async def until(self, name: str, check, what: str, environment: Environment = HERE):
        """Wait until `check(view)` holds for `name`'s server; its view."""
        key = ServerSpec(name, environment).key
        try:
            async with asyncio.timeout(120):
                while True:
                    view = self.supervisor.view().get(key)
                    if view is not None and check(view):
                        return view
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"{name} not {what} in 120 s: {self.events}") from None

    async def serve(self, name: str, model: Path, environment: Environment = HERE, after: int = 0):
        """Start `name`'s server (or wait for the one after server `after`), have it hold
        version 1, and wait until it is ready; its view."""
        key = ServerSpec(name, environment).key
        if not after:
            self.supervisor.start(ServerSpec(name, environment))
        await self.until(
            name, lambda v: v.health is Health.UP and v.address.number > after, "up", environment
        )
        self.supervisor.hold(key, "1", f"models:/{name}/1", model)

        def ready(view) -> bool:
            held = view.versions.get("1")
            return held is not None and held.state is HeldState.READY

        return await self.until(name, ready, "ready", environment)

    async def close(self) -> None:
        await self.supervisor.close()
        await asyncio.to_thread(self.forks.close)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=300))


def test_servers_forked_from_one_fork_server_share_its_imports_and_nothing_else(
    tmp_path, model_paths
):
    async def scenario():
        servers = Servers(tmp_path)
        try:
            views = [await servers.serve(name, model_paths["classifier"]) for name in MODELS]
            pids = [serving(view.address.socket) for view in views]

            [fork_server] = {parent_of(pid) for pid in pids}
            assert FORK_SERVER in command_of(fork_server)
            assert len(set(pids)) == 2
            for pid, name in zip(pids, MODELS, strict=True):
                assert os.getpgid(pid) == pid  # a group of its own: stopped with its children
                log = server_log(tmp_path / "logs", name)
                assert os.readlink(f"/proc/{pid}/fd/1") == str(log)
                assert "Version 1 is ready" in log.read_text()
                memory = rollup(pid)
                # Most of what it has in memory (MLflow, pandas, scikit-learn...) is its
                # fork server's, shared; a fresh process has all of it to itself.
                assert memory["Private"] < memory["Shared"], memory
            assert {"iris-a", "iris-b"} == {comm_of(pid).removeprefix("mh ") for pid in pids}
        finally:
            await servers.close()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists()

    run(scenario())


def test_a_fork_server_that_dies_takes_its_servers_and_they_come_back(tmp_path, model_paths):
    async def scenario():
        servers = Servers(tmp_path)
        try:
            view = await servers.serve("iris-a", model_paths["classifier"])
            first = serving(view.address.socket)
            fork_server = parent_of(first)
            os.kill(fork_server, signal.SIGKILL)

            eventually(lambda: not alive(first), timeout_s=10)  # it died with its parent
            number = view.address.number
            again = await servers.serve("iris-a", model_paths["classifier"], after=number)
            assert again.address.number != view.address.number
            second = serving(again.address.socket)
            assert parent_of(second) not in (fork_server, os.getpid())  # a new fork server's
            assert FORK_SERVER in command_of(parent_of(second))
            assert any("restarting" in e for e in servers.events), servers.events
        finally:
            await servers.close()

    run(scenario())


def test_servers_start_afresh_where_a_fork_server_cannot(tmp_path, model_paths, caplog):
    # An environment whose Python runs anything but a fork server: its servers start afresh.
    folder = tmp_path / "env"
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(
        f'#!/bin/sh\ncase "$*" in *forkserver*) echo "no fork server here"; exit 3;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    broken = Environment("broken", python, built=False, path=folder)

    async def scenario():
        servers = Servers(tmp_path)
        try:
            view = await servers.serve("iris-a", model_paths["classifier"], broken)
            pid = serving(view.address.socket)
            assert parent_of(pid) == os.getpid()  # started by the supervisor itself
        finally:
            await servers.close()

    with caplog.at_level(logging.WARNING, logger="modelhost.controller"):
        run(scenario())
    assert "The model server of iris-a starts afresh: its fork server did not start" in caplog.text
    assert "no fork server here" in (tmp_path / "logs" / "fork-server-broken.log").read_text()


def test_a_fork_server_whose_platform_is_gone_stops_its_servers(tmp_path, model_paths):
    async def scenario():
        servers = Servers(tmp_path)
        try:
            view = await servers.serve("iris-a", model_paths["classifier"])
            pid = serving(view.address.socket)
            fork_server = parent_of(pid)
            # As when `up` dies: the fork server's line to it closes, nothing else is said.
            await asyncio.to_thread(servers.forks.close)
            eventually(lambda: not alive(pid) and not alive(fork_server), timeout_s=10)
        finally:
            await servers.close()

    run(scenario())


# --- what the kernel says of the processes


def serving(socket_path: str) -> int:
    """The process that listens on a server's socket."""
    inode = None
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == socket_path:
            inode = fields[6]
    assert inode is not None, f"nothing listens on {socket_path}"
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process holds {socket_path}")


def comm_of(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def rollup(pid: int) -> dict[str, int]:
    """Resident memory of `pid` in kB: what it shares with others and what is its own."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return {
        "Shared": fields["Shared_Clean"] + fields["Shared_Dirty"],
        "Private": fields["Private_Clean"] + fields["Private_Dirty"],
    }


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    # Every fork server and model server of the test is gone with it.
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if parent_of(int(proc.name)) == os.getpid():
                assert FORK_SERVER not in command_of(int(proc.name)), "a fork server was left"
        except (OSError, IndexError):
            continue


def test_a_server_stopped_twice_is_stopped_once_and_closes_nothing_else(tmp_path):
    # The supervisor may stop a server its watch stopped already: the second stop must not
    # close the pidfd again, whose number another file of `up`'s may have taken meanwhile.
    async def scenario():
        servers = Servers(tmp_path)
        process = ModelServerProcess(
            "iris-a", HERE, Isolation(tmp_path, None), tmp_path / "logs", ["--timeout", "5"],
            servers.sockets, servers.forks,
        )  # fmt: skip
        try:
            await asyncio.to_thread(process.start)
            pid, pidfd = process.process.pid, process.process.pidfd
            await process.stop(grace_s=0)
            assert not alive(pid)
            with pytest.raises(OSError):
                os.fstat(pidfd)  # closed: its number is free
            reader, writer = os.pipe()
            os.dup2(reader, pidfd)  # another file takes the number, as the next one opened may
            try:
                await process.stop(grace_s=0)
                os.write(writer, b"still open")
                assert os.read(pidfd, 10) == b"still open"
            finally:
                for fd in (reader, writer, pidfd):
                    os.close(fd)
        finally:
            await servers.close()

    run(scenario())


def test_a_server_stopped_before_it_leads_its_own_group_is_stopped(tmp_path):
    # A forked server calls setsid a moment after its fork, but `up` may stop it at once (a
    # settings change right after another): until then its pid names no group, and a stop that
    # signalled only the group waited for ever on a server that went on running.
    child = subprocess.Popen(["sleep", "600"])  # in our group, as a fork before its setsid
    forked = Forked(child.pid, os.pidfd_open(child.pid))
    stopping = threading.Thread(target=stop_group, args=(forked, 5), daemon=True)
    try:
        stopping.start()
        stopping.join(60)  # a bound for the old behaviour: it never returned
        assert not stopping.is_alive(), "the stop is still waiting"
        assert child.wait(5) == -signal.SIGTERM  # SIGTERM first, through its pidfd
    finally:
        child.kill()
        child.wait()
        forked.close()

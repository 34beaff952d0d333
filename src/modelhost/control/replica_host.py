"""What runs on a cluster node: a Ray actor that owns one replica's model server process.

The actor gets the version's artifacts through Ray's object store (nodes need no registry
credential and no shared disk), builds the model's environment on its node with uv (cached under
the node's modelhost home, one per environment key, as on a single machine), binds a TCP socket
on the node's address and starts `modelhost worker` on it, with a secret only the gateway knows.
The process is the actor's child: it asks the kernel to die with it, and shares the actor's
process group, which Ray kills when the actor ends, so a replica never outlives its actor, and
the actor never outlives the `modelhost up` that made it (Ray ends a driver's actors with it).
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

from modelhost.config import default_home
from modelhost.control.scrub import scrubbed

log = logging.getLogger("modelhost.replica")

LOG_CHUNK = 1 << 20  # at most this much of the log per read


def pack(folder: Path) -> bytes:
    """A version's artifact folder as one gzip'd tar, for the object store."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the actor's process ends, however it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ReplicaHost:
    """One replica's model server on this node (its methods run on the actor's event loop, one
    long-lived thread, which is the parent the child's death signal follows)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.home = default_home() / "node"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.home / "logs" / f"{os.getpid()}-{number}.log"

    async def start(
        self,
        name: str,
        packed: bytes,
        current: bool,
        options: list[str],
        secret: str,
    ) -> tuple[str, int]:
        """Start the model server; where it listens (this node's address, a free port)."""
        import ray  # only ever imported inside a Ray worker

        folder = Path(await self.stage(name, packed))
        python, env = await asyncio.to_thread(self._environment, folder, current)
        host = ray.util.get_node_ip_address()
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.bind((host, 0))
        port = listener.getsockname()[1]
        scratch = self.home / "scratch" / f"{os.getpid()}-{self.number}"
        scratch.mkdir(parents=True, exist_ok=True)
        env.update(HOME=str(scratch), TMPDIR=str(scratch), MODELHOST_SERVER_SECRET=secret)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with listener, open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [python, "-m", "modelhost", "worker", "--fd", str(listener.fileno()), *options],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                pass_fds=(listener.fileno(),), cwd=scratch, preexec_fn=_die_with_parent,
            )  # fmt: skip
        return host, port

    def _environment(self, folder: Path, current: bool) -> tuple[str, dict[str, str]]:
        """The interpreter and environment variables to run the model server with."""
        from modelhost.control.environments import prepare
        from modelhost.control.requirements import read_requirements

        env = scrubbed(os.environ)
        if current:  # modelhost's own environment satisfies it on the head: so it does here
            return sys.executable, env
        environment = prepare(read_requirements(folder), "uv", self.home / "envs", self._note)
        return str(environment.python), environment.process_env(env)

    def _note(self, line: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as output:
            output.write(line.rstrip("\n") + "\n")

    async def stage(self, name: str, packed: bytes) -> str:
        """This node's copy of a version's artifacts (unpacked once per node)."""
        folder = self.home / "models" / name
        if not folder.is_dir():
            await asyncio.to_thread(_unpack, packed, folder)
        return str(folder)

    async def wait(self) -> int:
        """The model server's exit code, once it exits."""
        assert self.process is not None, "started"
        while (code := self.process.poll()) is None:
            await asyncio.sleep(0.1)
        return code

    async def read_log(self, offset: int) -> bytes:
        """What the model server wrote from `offset` on (at most LOG_CHUNK)."""
        try:
            with open(self.log_path, "rb") as output:
                output.seek(offset)
                return output.read(LOG_CHUNK)
        except FileNotFoundError:
            return b""

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s` (the actor's end kills the rest)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        for _ in range(int(grace_s * 10)):
            if self.process.poll() is not None:
                return
            await asyncio.sleep(0.1)
        self.process.kill()


def _unpack(packed: bytes, folder: Path) -> None:
    partial = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
        tar.extractall(partial, filter="data")
    try:
        os.rename(partial, folder)
    except OSError:  # another replica of this node unpacked it first
        shutil.rmtree(partial, ignore_errors=True)

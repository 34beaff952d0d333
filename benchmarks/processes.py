"""What a running `modelhost up` is made of, read from /proc: its processes, memory and CPU.

Shared by the density and first-answer benchmarks. Linux only (it reads /proc).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
FORK_SERVER_MODULE = b"modelhost.worker.forkserver"


def fork_servers_available() -> bool:
    """Whether this modelhost's `up` has the `--fork-servers` flag (shared start-up)."""
    shown = subprocess.run(
        [sys.executable, "-m", "modelhost", "up", "--help"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return "--fork-servers" in shown.stdout


def serving_mode_options(forked: bool) -> list[str]:
    """`modelhost up` options for fork servers on or off; none if the flag does not exist yet."""
    if not fork_servers_available():
        return []
    return ["--fork-servers"] if forked else ["--no-fork-servers"]


def _stat_fields(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses: the fields start after its last ')'.
    text = (PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def parents() -> dict[int, int]:
    """Every process's parent."""
    found = {}
    for entry in PROC.glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):  # gone meanwhile
            found[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    return found


def descendants(root: int, parent_of: dict[int, int] | None = None) -> list[int]:
    """`root` and every process below it, each after its parent."""
    children: dict[int, list[int]] = {}
    for pid, parent in (parent_of or parents()).items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return found


def command_line(pid: int) -> list[bytes]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (0 if it is gone): shared pages split among sharers."""
    try:
        lines = (PROC / str(pid) / "smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (0 if it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


@dataclass(frozen=True)
class PlatformProcesses:
    """The processes of one `modelhost up`, by role."""

    up: int
    registry: list[int]  # the embedded MLflow server and its workers
    fork_servers: list[int]
    model_servers: list[int]  # everything else below `up`: model servers and their children

    @property
    def all(self) -> list[int]:
        return [self.up, *self.registry, *self.fork_servers, *self.model_servers]


def platform_processes(up: int) -> PlatformProcesses:
    parent_of = parents()
    below = descendants(up, parent_of)[1:]
    registry_roots = [pid for pid in below if _is_registry(command_line(pid))]
    registry = {p for root in registry_roots for p in descendants(root, parent_of)}
    # A forked model server keeps its fork server's command line: a fork server is the one
    # whose parent is not one.
    forking = {pid for pid in below if FORK_SERVER_MODULE in command_line(pid)}
    fork_servers = [pid for pid in below if pid in forking and parent_of.get(pid) not in forking]
    rest = [pid for pid in below if pid not in registry and pid not in fork_servers]
    return PlatformProcesses(up, sorted(registry), fork_servers, rest)


def _is_registry(command: list[bytes]) -> bool:
    return command[1:4] == [b"-m", b"mlflow", b"server"]


def platform_pss(up: int) -> int:
    """Proportional memory of `up` and everything below it, in bytes."""
    return sum(pss_bytes(pid) for pid in descendants(up))


@dataclass(frozen=True)
class CpuShare:
    """Share of one core each part of the platform used over a window (1.0 = a whole core)."""

    up: float
    registry: float
    model_servers: float  # fork servers included

    @property
    def total(self) -> float:
        return self.up + self.registry + self.model_servers


def idle_cpu(up: int, window_s: float) -> CpuShare:
    """CPU the platform uses over `window_s` while nobody sends it a request."""

    def sample() -> tuple[float, float, float]:
        parts = platform_processes(up)
        return (
            cpu_seconds(parts.up),
            sum(cpu_seconds(p) for p in parts.registry),
            sum(cpu_seconds(p) for p in parts.fork_servers + parts.model_servers),
        )

    before, started = sample(), time.monotonic()
    time.sleep(window_s)
    after, elapsed = sample(), time.monotonic() - started
    # A process that ended inside the window takes its seconds with it: clamp at zero.
    up_s, registry_s, servers_s = (
        max(0.0, b - a) / elapsed for a, b in zip(before, after, strict=True)
    )
    return CpuShare(up_s, registry_s, servers_s)


def model_server_of(up: int, model_log: Path) -> int | None:
    """The model server writing `model_log` (the model's own log file), if one runs."""
    target = str(model_log)
    parts = platform_processes(up)
    for pid in parts.model_servers:
        with contextlib.suppress(OSError):  # gone meanwhile
            if any(os.readlink(fd) == target for fd in (PROC / str(pid) / "fd").iterdir()):
                return pid
    return None


def kill_server(pid: int) -> None:
    """SIGKILL a model server, and its own process group when it leads one."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def ended(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet: in either case it answers nothing."""
    try:
        return _stat_fields(pid)[0] in ("Z", "X")
    except OSError:
        return True


def stop_leftovers(pids: list[int], grace_s: float = 30.0) -> None:
    """After `up` has stopped: wait for the processes it ran to end, SIGKILL any that do not."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not all(ended(pid) for pid in pids):
        time.sleep(0.2)
    left = [pid for pid in pids if not ended(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        print(f"warning: {len(left)} process(es) outlived `modelhost up`; killed them", flush=True)

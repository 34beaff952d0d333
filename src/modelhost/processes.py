"""Stopping the process groups modelhost starts: a leader and whatever it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the group of `process` (started with start_new_session), SIGKILL what lingers.

    Waits for the whole group, not only its leader: a server's children (ASGI workers) can
    outlive it, and a leader that died leaves them running.
    """
    _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(process):
        time.sleep(0.05)
    _signal(process, signal.SIGKILL)
    process.wait()


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    """To its group; to the process alone while it has no group of its own yet (a server
    forked a moment ago, before its setsid), which nothing would signal otherwise."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    process.poll()  # reap the leader, so a zombie does not count as alive
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return process.poll() is None  # no group (yet): the process itself, if it runs
    return True

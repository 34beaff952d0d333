"""The worker processes of one platform model server hold the same versions.

With `--workers N` the processes share one listening socket, so each control call (hold,
release, health) reaches whichever process accepts it. What to hold is therefore kept in a
folder they share: the process told writes it there, every process loads and unloads to match
it, and each writes how its own versions stand. /health shows a version ready only once every
live process holds it ready, so no request is routed to a process still loading it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from modelhost.worker.versions import Versions, VersionState

log = logging.getLogger("modelhost.worker")

FOLDER_ENV = "MODELHOST_WORKERS_FOLDER"  # set by the parent process for its workers
SYNC_S = 0.1  # how soon a process follows what another was told


class Replicas:
    def __init__(self, folder: Path, versions: Versions, workers: int) -> None:
        self.wanted = folder / "wanted"  # one file per version to hold: its URI and artifacts
        self.status = folder / "status"  # one file per process: how its versions stand
        self.wanted.mkdir(exist_ok=True)
        self.status.mkdir(exist_ok=True)
        self.versions = versions
        self.workers = workers
        self.mine = self.status / f"{os.getpid()}.json"
        self._shown = b""
        self._unloading: set[asyncio.Task[bool]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="replicas")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.mine.unlink(missing_ok=True)

    def want(self, name: str, model_uri: str, local_path: str | None) -> None:
        """Every process is to hold version `name`."""
        path = self._wanted(name)
        draft = path.with_suffix(f".{os.getpid()}.tmp")
        body = {"version": name, "model_uri": model_uri, "local_path": local_path}
        draft.write_bytes(orjson.dumps(body))
        os.replace(draft, path)  # whole or not at all, for the processes reading it

    def drop(self, name: str) -> bool:
        """Every process is to let version `name` go; False if none was to hold it."""
        try:
            self._wanted(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def describe(self) -> list[dict[str, Any]]:
        """Each version to hold, with its state over every live process (as /health shows)."""
        stands = self._stands()
        shown = []
        for wanted in self._read_wanted().values():
            name = wanted["version"]
            states = [by_version.get(name) for by_version in stands]
            failed = [s for s in states if s is not None and s["state"] == VersionState.FAILED]
            ready = sum(1 for s in states if s is not None and s["state"] == VersionState.READY)
            if failed:
                state, message = VersionState.FAILED, failed[0]["message"]
            elif ready >= self.workers:
                state, message = VersionState.READY, "Ready in every worker process."
            else:
                state = VersionState.LOADING
                message = f"Loading the model: ready in {ready} of {self.workers} worker processes."
            shown.append(
                {"version": name, "model_uri": wanted["model_uri"], "state": state.value,
                 "message": message}
            )  # fmt: skip
        return shown

    async def _follow(self) -> None:
        while True:
            try:
                self._sync()
            except Exception:  # a bug of ours: say so, keep following
                log.exception("Following the versions to hold failed")
            await asyncio.sleep(SYNC_S)

    def _sync(self) -> None:
        """Load what is wanted and not held, unload what is held and not wanted, say how it went."""
        wanted = self._read_wanted()
        held = {v["version"] for v in self.versions.describe()}
        for name, version in wanted.items():
            if name not in held:
                self.versions.load(name, version["model_uri"], version["local_path"])
        for name in held - wanted.keys():
            task = asyncio.create_task(self.versions.unload(name))
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)
        shown = orjson.dumps({v["version"]: v for v in self.versions.describe()})
        if shown != self._shown:
            draft = self.mine.with_suffix(".tmp")
            draft.write_bytes(shown)
            os.replace(draft, self.mine)
            self._shown = shown

    def _read_wanted(self) -> dict[str, dict[str, Any]]:
        wanted = {}
        for path in self.wanted.glob("*.json"):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):  # dropped meanwhile
                body = orjson.loads(path.read_bytes())
                wanted[body["version"]] = body
        return wanted

    def _stands(self) -> list[dict[str, dict[str, Any]]]:
        """How the versions stand in each live process (a dead one's file is left behind)."""
        stands = []
        for path in self.status.glob("*.json"):
            if path != self.mine and not _alive(int(path.stem)):
                continue
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                stands.append(orjson.loads(path.read_bytes()))
        return stands

    def _wanted(self, name: str) -> Path:
        return self.wanted / f"{name.encode().hex()}.json"  # any version name, as a file name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: the pid was reused
        return False
    return True

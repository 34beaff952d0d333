"""MLflow's tracking server, run by modelhost with its store and artifacts under the home."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

from modelhost.net import free_port
from modelhost.processes import stop_group
from modelhost.registry.guard import BODY_TIMEOUT_ENV, OWNER_ENV, SECRET_ENV

log = logging.getLogger("modelhost.registry")

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0


class EmbeddedRegistry:
    """A `mlflow server` on a private loopback port, its artifacts served by it.

    Its store is SQLite under the home unless `backend_store_uri` names another database, and
    its model files are under the home unless `artifacts_destination` says where (both shared
    by every node of several). It answers only requests that carry `secret` as a Bearer token
    (see `registry/guard.py`), and ends with the process that started it.
    """

    def __init__(
        self,
        home: Path,
        backend_store_uri: str | None = None,
        body_timeout_s: float | None = None,
        artifacts_destination: str | None = None,
    ) -> None:
        self.folder = home / "registry"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.folder / 'mlflow.db'}"
        self.artifacts_destination = artifacts_destination or str(self.folder / "artifacts")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.body_timeout_s = body_timeout_s
        # Made anew at each start and held only in memory and in the server's environment.
        self.secret = secrets.token_urlsafe(32)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the server and wait until it answers; returns its URL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--app-name", "modelhost",  # MLflow's app behind our check: registry/guard.py
            "--uvicorn-opts", "--http modelhost.registry.guard:http_protocol",
        ]  # fmt: skip
        # MLflow starts its ASGI server by name: let it find the one beside this Python.
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            # The environment, not the command line any user of the machine can read: the
            # secret, and the database URL, which may hold a password.
            SECRET_ENV: self.secret,
            "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri,
            "MLFLOW_ARTIFACTS_DESTINATION": self.artifacts_destination,
            OWNER_ENV: str(os.getpid()),
        }
        if self.body_timeout_s is not None:
            env[BODY_TIMEOUT_ENV] = str(self.body_timeout_s)
        # A registry needs none of MLflow's background jobs (GenAI evaluation): without them
        # the server starts faster and runs no pool of job consumers.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        log.info("Starting the embedded MLflow registry in %s", self.folder)
        with open(self.folder / "server.log", "ab") as output:
            self._process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        self._wait_ready()
        log.info("The registry answers on %s", self.url)
        return self.url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"The MLflow registry exited while starting; see {self.folder / 'server.log'}."
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"The MLflow registry did not answer within {START_TIMEOUT_S:g} s; "
            f"see {self.folder / 'server.log'}."
        )

    def stop(self) -> None:
        """Stop the server and every process it started, even if the server itself died."""
        process, self._process = self._process, None
        if process is not None:
            stop_group(process, STOP_GRACE_S)

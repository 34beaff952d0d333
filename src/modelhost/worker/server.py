"""Start a model server: one model on N worker processes, or the versions of one model."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import socket
import tempfile
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from modelhost.config import EnvManager, ServeSettings
from modelhost.logs import configure_logging
from modelhost.worker.model import download
from modelhost.worker.replicas import FOLDER_ENV

log = logging.getLogger("modelhost.worker")

# A platform model server listening on TCP (on a cluster node) is started with its secret here;
# it takes it out of its environment before any model code runs.
SECRET_ENV = "MODELHOST_SERVER_SECRET"


def serve(settings: ServeSettings) -> None:
    """Serve one model until interrupted, in the Python environment it declares."""
    if settings.local_path is None:
        log.info("Fetching the artifacts of %s", settings.model_uri)
        settings = dataclasses.replace(settings, local_path=download(settings.model_uri))
    if settings.env_manager != EnvManager.LOCAL:
        # Returns only if the current environment serves the model.
        _enter_model_environment(settings, settings.local_path)
    metrics_dir = None
    if settings.workers > 1:
        # Each worker writes its metrics here, so /metrics sums them whichever worker answers.
        metrics_dir = tempfile.mkdtemp(prefix="modelhost-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    log.info(
        "Serving %s on http://%s:%s/invocations with %d worker(s)",
        settings.model_uri, settings.host, settings.port, settings.workers,
    )  # fmt: skip
    try:
        _run("modelhost.worker.app:create_app", settings)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _enter_model_environment(settings: ServeSettings, local_path: str) -> None:
    """Re-run this server in the model's own environment, unless it is the current one."""
    from modelhost.control.environments import enter

    # The same settings, artifacts already fetched; `local` so the new process stays put.
    dataclasses.replace(settings, env_manager=EnvManager.LOCAL).export()
    enter(local_path, settings.env_manager, "modelhost.worker.server", os.environ, "the server")


def serve_versions(settings: ServeSettings) -> None:
    """Serve the versions of one registered model, loading and unloading them as told.

    It serves only on the socket it was handed (`settings.fd`), bound by whoever started it:
    on this machine a Unix socket `modelhost up` created (no path this process needs to reach:
    control/servers.py says why); on a cluster node a TCP socket, with a secret in
    `MODELHOST_SERVER_SECRET` that every request must then carry.
    """
    # Taken out first, so model code (and what it starts) never finds it in the environment.
    secret = os.environ.pop(SECRET_ENV, "")
    if settings.fd is None:
        raise RuntimeError("A platform model server needs --fd: `modelhost up` starts it.")
    listener = socket.socket(fileno=settings.fd)
    if listener.family != socket.AF_UNIX and not secret:
        log.warning(
            "Serving on the TCP socket %s with no %s: anyone who reaches it can score and load "
            "models.", listener.getsockname(), SECRET_ENV,
        )  # fmt: skip
    log.info(
        "Serving model versions on the socket %s with %d worker process(es)%s",
        listener.getsockname(), settings.workers, ", to bearers of its secret" if secret else "",
    )  # fmt: skip
    from modelhost.worker.app import create_platform_app

    # The app is built by this factory in each worker process. Uvicorn's supervisor sends it to
    # the processes it spawns through a pipe of its own: the secret is on no command line, in no
    # environment and in no file.
    app = functools.partial(create_platform_app, secret)
    if settings.workers == 1:
        settings.export()  # the app is built from it
        uvicorn.Server(uvicorn.Config(app, **_options(settings))).run([listener])
        return
    # Worker processes share the socket and keep what they hold alike through a folder
    # (worker/replicas.py) in this server's own temporary folder, with their metrics beside it.
    folder = tempfile.mkdtemp(prefix="modelhost-workers-")
    try:
        os.environ[FOLDER_ENV] = folder
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(folder, "metrics")
        os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        settings.export()
        config = uvicorn.Config(app, **_options(settings))
        # Uvicorn's own supervisor: it starts the processes, and replaces one that dies or hangs.
        Multiprocess(config, sockets=[listener]).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(factory: str, settings: ServeSettings) -> None:
    settings.export()  # worker processes build their app from it
    uvicorn.run(factory, **_options(settings))


def _options(settings: ServeSettings) -> dict[str, Any]:
    """How uvicorn runs a model server: the fastest parts, nothing per request it can skip."""
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "http": "httptools",
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,  # client addresses are never used: skip reading them
        "server_header": False,
        "log_level": "info",
        "timeout_graceful_shutdown": 10,
        "backlog": 4096,
    }


if __name__ == "__main__":  # how `serve` starts itself again in the model's environment
    configure_logging()
    serve(ServeSettings.from_env())

"""Start a model server: one model on N worker processes, or the versions of one model."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile

import uvicorn

from modelhost.config import ServeSettings
from modelhost.worker.model import download

log = logging.getLogger("modelhost.worker")


def serve(settings: ServeSettings) -> None:
    """Serve one model until interrupted."""
    log.info("Fetching the artifacts of %s", settings.model_uri)
    settings = dataclasses.replace(settings, local_path=download(settings.model_uri))
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


def serve_versions(settings: ServeSettings) -> None:
    """Serve the versions of one registered model, loading and unloading them as told."""
    log.info("Serving model versions on http://%s:%s/versions", settings.host, settings.port)
    _run("modelhost.worker.app:create_platform_app", dataclasses.replace(settings, workers=1))


def _run(factory: str, settings: ServeSettings) -> None:
    settings.export()  # worker processes build their app from it
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # client addresses are never used: skip reading them per request
        server_header=False,
        log_level="info",
        timeout_graceful_shutdown=10,
        backlog=4096,
    )

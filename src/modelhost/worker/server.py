"""Start the model server: download the model once, then run the ASGI server's worker processes."""

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
    settings.export()
    metrics_dir = None
    if settings.workers > 1:
        # Each worker writes its metrics here, so /metrics sums them whichever worker answers.
        metrics_dir = tempfile.mkdtemp(prefix="modelhost-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    log.info(
        "Serving %s on http://%s:%s/invocations with %d worker(s)",
        settings.model_uri,
        settings.host,
        settings.port,
        settings.workers,
    )
    try:
        uvicorn.run(
            "modelhost.worker.app:create_app",
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
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)

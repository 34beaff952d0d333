"""`modelhost up`: the registry and the gateway in front of it, started and stopped together."""

from __future__ import annotations

import logging

import uvicorn

from modelhost.config import UpSettings
from modelhost.control.controller import Controller
from modelhost.control.store import StateStore
from modelhost.gateway.app import Gateway
from modelhost.registry.embedded import EmbeddedRegistry

log = logging.getLogger("modelhost")


def run(settings: UpSettings) -> None:
    """Run until interrupted; everything started here is stopped on the way out."""
    settings.home.mkdir(parents=True, exist_ok=True)
    embedded = None
    registry_url = settings.registry_uri
    if registry_url is None or not registry_url.startswith(("http://", "https://")):
        # A database URI (or none) gets MLflow's own server in front of it, so MLflow clients
        # reach it through the gateway like any other registry.
        embedded = EmbeddedRegistry(settings.home, backend_store_uri=registry_url)
    try:
        if embedded:
            registry_url = embedded.start()
        assert registry_url is not None
        if settings.demo:
            from modelhost.demo import register_demo

            register_demo(registry_url)
        url = f"http://{settings.host}:{settings.port}"
        log.info("modelhost is up on %s; point MLflow at it: MLFLOW_TRACKING_URI=%s", url, url)
        controller = Controller(registry_url, StateStore.in_home(settings.home), settings.home)
        uvicorn.run(
            Gateway(registry_url, controller),
            host=settings.host,
            port=settings.port,
            http="httptools",
            loop="uvloop",
            lifespan="on",
            access_log=False,
            log_level="info",
            timeout_graceful_shutdown=10,
        )
    finally:
        if embedded:
            embedded.stop()

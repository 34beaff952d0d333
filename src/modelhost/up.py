"""`modelhost up`: the registry and the gateway in front of it, started and stopped together."""

from __future__ import annotations

import logging
import os

import uvicorn

from modelhost.auth.setup import auth_required, protect
from modelhost.config import UpSettings
from modelhost.control.controller import Controller
from modelhost.control.store import StateStore
from modelhost.gateway.app import Gateway
from modelhost.gateway.client_limits import ClientLimits
from modelhost.gateway.paths import Normalized
from modelhost.registry.embedded import EmbeddedRegistry

log = logging.getLogger("modelhost")


# The controller reads the registry every second, and a read that fails is simply made again
# at the next tick; MLflow's own retries (minutes of back-off) would only stall it, and keep
# Ctrl-C waiting for a registry that is gone.
REGISTRY_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def run(settings: UpSettings) -> None:
    """Run until interrupted; everything started here is stopped on the way out."""
    signing_in = auth_required(settings)  # before anything starts: it may refuse the settings
    settings.home.mkdir(parents=True, exist_ok=True)
    for name, value in REGISTRY_CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    embedded = None
    registry_url = settings.registry_uri
    if registry_url is None or not registry_url.startswith(("http://", "https://")):
        # A database URI (or none) gets MLflow's own server in front of it, so MLflow clients
        # reach it through the gateway like any other registry.
        embedded = EmbeddedRegistry(
            settings.home, backend_store_uri=registry_url, body_timeout_s=settings.body_timeout_s
        )
    try:
        if embedded:
            registry_url = embedded.start()
            # The embedded registry answers only its secret: MLflow's clients in this process
            # (the controller's, the demo's) send MLFLOW_TRACKING_TOKEN as a Bearer token.
            os.environ["MLFLOW_TRACKING_TOKEN"] = embedded.secret
        assert registry_url is not None
        store = StateStore.in_home(settings.home)
        url = f"http://{settings.host}:{settings.port}"
        if settings.demo:
            _serve_demo(registry_url, store, url, signing_in)
        log.info("modelhost is up on %s; point MLflow at it: MLFLOW_TRACKING_URI=%s", url, url)
        controller = Controller(settings, registry_url, store)
        gateway = Gateway(settings, registry_url, controller, embedded.secret if embedded else None)
        limits = ClientLimits(
            header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s
        )
        uvicorn.run(
            # One path per request, before auth judges it (gateway/paths.py).
            Normalized(protect(gateway, settings, store) if signing_in else gateway),
            host=settings.host,
            port=settings.port,
            http=limits.protocol(),  # httptools, with bounds on slow and bloated requests
            loop="uvloop",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # the peer's own address counts, never X-Forwarded-For
            server_header=False,
            log_level="info",
            timeout_graceful_shutdown=10,
        )
    finally:
        if embedded:
            embedded.stop()


def _serve_demo(registry_url: str, store: StateStore, url: str, signing_in: bool) -> None:
    from modelhost.demo import DEMO_MODEL_NAME, ONE_FLOWER, register_demo

    register_demo(registry_url)
    if store.enable(DEMO_MODEL_NAME):
        store.record(DEMO_MODEL_NAME, "Serving enabled by --demo.")
    print(
        f"\nThe demo model {DEMO_MODEL_NAME} is served. Once its version 1 is ready (seconds):\n"
        f"  curl -s {url}/model/{DEMO_MODEL_NAME}/1/invocations "
        + ('-H "Authorization: Bearer $MODELHOST_TOKEN" ' if signing_in else "")
        + f"-H 'Content-Type: application/json' \\\n    -d '{ONE_FLOWER}'\n",
        flush=True,
    )

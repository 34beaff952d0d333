"""Prometheus metrics of the model server, summed over its worker processes."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from modelhost.logs import VERSION

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

requests = Counter("modelhost_requests", "Scoring requests answered, by HTTP status.", ["status"])
errors = Counter(
    "modelhost_request_errors", "Scoring requests answered with an error, by error code.", ["code"]
)
latency = Histogram(
    "modelhost_request_duration_seconds",
    "Time from a scoring request's arrival to its answer.",
    buckets=LATENCY_BUCKETS,
)
# By version, so the gateway can show them per version (empty in `modelhost serve`).
batch_rows = Histogram(
    "modelhost_batch_rows", "Input rows per predict call.", ["version"], buckets=BATCH_BUCKETS
)
predict_seconds = Histogram(
    "modelhost_predict_duration_seconds",
    "Time spent in the model's predict.",
    ["version"],
    buckets=LATENCY_BUCKETS,
)


def observe_predict(rows: int, seconds: float) -> None:
    # The version predicted for: a platform server's batcher runs with it set (logs.VERSION).
    version = VERSION.get() or ""
    batch_rows.labels(version).observe(rows)
    predict_seconds.labels(version).observe(seconds)


def exposition() -> tuple[bytes, str]:
    """The metrics text; with several workers, the sum of what each wrote to the shared folder."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

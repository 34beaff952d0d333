"""The gateway's Prometheus metrics (`GET /metrics`): scoring as callers saw it, per version.

Named as peer servers name theirs (MLServer's `model_name` and `model_version` labels, Ray
Serve's and MLServer's `_total` counters with `status_code`, `_seconds` histograms):

- `modelhost_gateway_requests_total{model_name, model_version, status_code}`
- `modelhost_gateway_request_duration_seconds{model_name, model_version}`, from a request's
  arrival at the gateway to the end of its answer
- `modelhost_gateway_requests_in_flight{model_name}`
- `modelhost_batch_rows{model_name, model_version}` and
  `modelhost_predict_duration_seconds{model_name, model_version}`: rows per `predict` call and
  time in it, as each model server counts them

`model_version` is the version that answered (`X-Modelhost-Version`), empty when none did (an
unknown or not-ready version). Names of models that are not served are counted as
`model_name=""`, so a caller cannot make series by inventing names.

The scoring path pays a few dictionary updates per request, kept in plain dicts (the event loop
is the only writer and the only reader, so they need no lock) and turned into metric families
only when /metrics is read. The model servers' batch sizes are read at that moment too, from
each server's own /metrics over its socket, and relabelled with the model's name: the servers
count per version already (`worker/metrics.py`), so nothing is added to their path, and a
server that does not answer within `SCRAPE_TIMEOUT_S` only leaves its own series out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from modelhost.asgi import Send, respond
from modelhost.gateway.pool import ConnectionPool, UpstreamClosed

log = logging.getLogger("modelhost.gateway")

# Scoring answers in milliseconds; the tail reaches --timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip
# What the model servers count, relayed with model labels.
RELAYED = ("modelhost_batch_rows", "modelhost_predict_duration_seconds")
SCRAPE_TIMEOUT_S = 2.0
VERSION_HEADER = b"x-modelhost-version"


@dataclass(frozen=True)
class VersionCounts:
    """What one version of a served model has answered since the gateway started."""

    requests: int
    errors: int  # answers with status 400 or above
    buckets: tuple[float, ...]  # latency counts per bucket of LATENCY_BUCKETS, then above them


class GatewayMetrics:
    """Counts scoring requests; `served(name)` says whether a model name may be a label."""

    def __init__(self, served: Callable[[str], bool]) -> None:
        self._served = served
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], list[float]] = {}  # bucket counts, then the sum
        self._in_flight: dict[str, int] = {}

    def watch(self, name: str, send: Send) -> Send:
        """`send`, counting the answer it carries for a request to model `name`."""
        model = name if self._served(name) else ""
        self._in_flight[model] = self._in_flight.get(model, 0) + 1
        return _Watch(self, model, send)

    def _answered(self, model: str, version: str, status: int, seconds: float) -> None:
        self._in_flight[model] -= 1
        key = (model, version, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._latency.get((model, version))
        if histogram is None:
            histogram = self._latency[model, version] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        histogram[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram[-1] += seconds

    def version_counts(self) -> dict[tuple[str, str], VersionCounts]:
        """The counts of each (served model, version that answered), for `gateway/series.py`."""
        requests: dict[tuple[str, str], list[int]] = {}
        for (model, version, status), count in self._requests.items():
            if model and version:
                totals = requests.setdefault((model, version), [0, 0])
                totals[0] += count
                if status >= HTTPStatus.BAD_REQUEST:
                    totals[1] += count
        return {
            key: VersionCounts(total, errors, tuple(self._latency[key][:-1]))
            for key, (total, errors) in requests.items()
        }

    async def expose(self, send: Send, servers: Iterable[tuple[str, ConnectionPool]]) -> None:
        """Answer /metrics: the gateway's counts, and what each (model name, server) counted."""
        relayed = await asyncio.gather(*(_relayed(name, pool) for name, pool in servers))
        families = [*self._families(), *_merged(relayed)]
        text = generate_latest(_Families(families))
        await respond(send, HTTPStatus.OK, text, CONTENT_TYPE_PLAIN_0_0_4.encode())

    def _families(self) -> list[Metric]:
        requests = Metric(
            "modelhost_gateway_requests",
            "Scoring requests answered by the gateway, by model, version and HTTP status.",
            "counter",
        )
        for (model, version, status), count in sorted(self._requests.items()):
            labels = {"model_name": model, "model_version": version, "status_code": str(status)}
            requests.add_sample("modelhost_gateway_requests_total", labels, count)
        latency = Metric(
            "modelhost_gateway_request_duration_seconds",
            "Time from a scoring request's arrival at the gateway to the end of its answer.",
            "histogram",
        )
        for (model, version), histogram in sorted(self._latency.items()):
            labels = {"model_name": model, "model_version": version}
            cumulative = 0.0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), histogram, strict=False):
                cumulative += count
                bucket = {**labels, "le": _float_text(bound)}
                latency.add_sample(latency.name + "_bucket", bucket, cumulative)
            latency.add_sample(latency.name + "_count", labels, cumulative)
            latency.add_sample(latency.name + "_sum", labels, histogram[-1])
        in_flight = Metric(
            "modelhost_gateway_requests_in_flight",
            "Scoring requests the gateway is answering now, by model.",
            "gauge",
        )
        for model, count in sorted(self._in_flight.items()):
            in_flight.add_sample(in_flight.name, {"model_name": model}, count)
        return [requests, latency, in_flight]


class _Watch:
    """An ASGI `send` that notes the status and the version of the answer it carries."""

    __slots__ = ("_metrics", "_model", "_open", "_send", "_started", "_status", "_version")

    def __init__(self, metrics: GatewayMetrics, model: str, send: Send) -> None:
        self._metrics = metrics
        self._model = model
        self._send = send
        self._started = time.perf_counter()
        self._status = 0  # until the answer starts
        self._version = ""
        self._open = True  # until it is counted

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            for key, value in reversed(message["headers"]):  # the gateway adds it last
                if key == VERSION_HEADER:
                    self._version = value.decode("latin-1")
                    break
            await self._send(message)
            return
        await self._send(message)
        if not message.get("more_body", False) and self._open:
            self._done(self._status)

    def _done(self, status: int) -> None:
        self._open = False
        seconds = time.perf_counter() - self._started
        self._metrics._answered(self._model, self._version, status, seconds)

    def __del__(self) -> None:
        # A request whose answer did not end here (an unexpected error is answered 500 by the
        # gateway's catch-all, with its own send) still leaves the in-flight count.
        if self._open:
            self._done(self._status or HTTPStatus.INTERNAL_SERVER_ERROR)


async def _relayed(model: str, pool: ConnectionPool) -> list[Metric]:
    """What one model server counted, labelled with its model's name; nothing if it is away."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S):
            answer = await pool.request("GET", "/metrics", [], b"")
    except (UpstreamClosed, TimeoutError) as e:
        log.warning("The model server of '%s' did not give its metrics: %s", model, e)
        return []
    if answer.status != HTTPStatus.OK:
        return []
    families = []
    for family in text_string_to_metric_families(answer.body.decode()):
        if family.name not in RELAYED:
            continue
        relabelled = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            labels = dict(sample.labels)
            version = labels.pop("version", "")
            if version:  # a platform server's; each names its version
                labels.update(model_name=model, model_version=version)
                relabelled.add_sample(sample.name, labels, sample.value)
        families.append(relabelled)
    return families


def _merged(per_server: list[list[Metric]]) -> list[Metric]:
    """One family per name, holding every server's samples: those of replicas of one server
    (same name and labels) summed, as one server's worker processes are."""
    merged: dict[str, Metric] = {}
    for families in per_server:
        for family in families:
            into = merged.setdefault(family.name, family)
            if into is family:
                continue
            at = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(into.samples)}
            for sample in family.samples:
                i = at.get((sample.name, tuple(sorted(sample.labels.items()))))
                if i is None:
                    into.samples.append(sample)
                else:
                    into.samples[i] = into.samples[i]._replace(
                        value=into.samples[i].value + sample.value
                    )
    return list(merged.values())


def _float_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families

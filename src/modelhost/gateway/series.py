"""The last 15 minutes of scoring per version, for the page's plots (`metrics/series`).

A timer reads the gateway's own counters (`gateway/metrics.py`) every `interval_s` and keeps
the difference since the last reading, per (model, version), in a ring that holds `window_s`.
Nothing runs per request: the scoring path pays for the counters it has always kept, and this
costs one pass over them every few seconds. Quantiles are interpolated from the latency
histogram's bucket counts in the interval, as Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from modelhost.gateway.metrics import LATENCY_BUCKETS, GatewayMetrics, VersionCounts

log = logging.getLogger("modelhost.gateway")

INTERVAL_S = 5.0
WINDOW_S = 15 * 60.0


@dataclass(frozen=True)
class Point:
    t: int  # unix seconds at the end of the interval
    requests_per_s: float
    p50_ms: float | None  # None: no request answered in the interval
    p99_ms: float | None
    errors_per_s: float
    requests: int  # answered in the interval
    errors: int

    def shown(self) -> dict:
        return {
            "t": self.t,
            "requests_per_s": self.requests_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors_per_s": self.errors_per_s,
            "requests": self.requests,
            "errors": self.errors,
        }


class Series:
    """Rings of points per (model, version), filled by `run()` on the gateway's event loop."""

    def __init__(
        self, metrics: GatewayMetrics, interval_s: float = INTERVAL_S, window_s: float = WINDOW_S
    ) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self._points = max(1, round(window_s / interval_s))
        self._rings: dict[tuple[str, str], deque[Point]] = {}
        self._last: dict[tuple[str, str], VersionCounts] = {}
        self._last_at = time.monotonic()

    async def run(self) -> None:
        """Sample every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:  # a bug of ours: say so, and keep sampling
                log.exception("Sampling the metrics series failed; the plots miss a point.")

    def sample(self) -> None:
        """One point for every version counted so far: what it answered since the last one."""
        now = time.monotonic()
        elapsed = max(now - self._last_at, 1e-3)
        self._last_at = now
        t = int(time.time())
        counts = self.metrics.version_counts()
        for key, current in counts.items():
            before = self._last.get(key)
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = deque(maxlen=self._points)
            ring.append(_point(t, elapsed, current, before))
        self._last = counts

    def of_model(self, name: str) -> dict[str, list[dict]]:
        """Each version of model `name` that answered, with its points, oldest first."""
        return {
            version: [point.shown() for point in ring]
            for (model, version), ring in sorted(self._rings.items())
            if model == name
        }


def _point(t: int, elapsed: float, now: VersionCounts, before: VersionCounts | None) -> Point:
    if before is None:  # first seen: everything it counted came since the last sample
        before = VersionCounts(0, 0, (0,) * len(now.buckets))
    buckets = [a - b for a, b in zip(now.buckets, before.buckets, strict=True)]
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    requests, errors = now.requests - before.requests, now.errors - before.errors
    return Point(
        t=t,
        requests_per_s=round(requests / elapsed, 3),
        p50_ms=None if p50 is None else round(p50 * 1000, 3),
        p99_ms=None if p99 is None else round(p99 * 1000, 3),
        errors_per_s=round(errors / elapsed, 3),
        requests=requests,
        errors=errors,
    )


def quantile(q: float, buckets: Sequence[float], bounds: Sequence[float] = LATENCY_BUCKETS):
    """The q-quantile of observations counted per bucket (the last one above every bound), by
    linear interpolation inside its bucket, as Prometheus' `histogram_quantile`; None if none.

    As there, the first bucket starts at 0, and a rank in the open top bucket is given the
    highest finite bound.
    """
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    below = 0.0
    for index, count in enumerate(buckets):
        if below + count >= rank and count > 0:
            if index >= len(bounds):
                return bounds[-1]
            start = bounds[index - 1] if index > 0 else 0.0
            return start + (bounds[index] - start) * (rank - below) / count
        below += count
    return bounds[-1]

"""The page's latency quantiles are Prometheus' `histogram_quantile` over the interval's buckets."""

from __future__ import annotations

import pytest

from modelhost.gateway.metrics import LATENCY_BUCKETS
from modelhost.gateway.series import quantile

EMPTY = [0] * (len(LATENCY_BUCKETS) + 1)


def counts(**by_bound: int) -> list[int]:
    """Bucket counts given by upper bound (`b0_005=3`: three answers in (0.0025, 0.005]]."""
    buckets = list(EMPTY)
    for name, count in by_bound.items():
        bound = float(name[1:].replace("_", ".")) if name != "inf" else None
        index = len(LATENCY_BUCKETS) if bound is None else LATENCY_BUCKETS.index(bound)
        buckets[index] = count
    return buckets


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Linear inside the bucket that holds the rank: rank 5 of 10 in (0.0005, 0.001].
        (0.5, counts(b0_001=10), 0.00075),
        # The first bucket starts at 0.
        (0.5, counts(b0_0005=4), 0.00025),
        # Rank 9.9 of 10: 9 below in (0.002, 0.003], 0.9 of the way into (0.003, 0.005].
        (0.99, counts(b0_003=9, b0_005=1), 0.0048),
        # A rank in the open top bucket gets the highest finite bound.
        (0.99, counts(b0_001=1, inf=99), LATENCY_BUCKETS[-1]),
        # Nothing answered: no quantile.
        (0.5, EMPTY, None),
    ],
)
def test_quantile_as_prometheus_interpolates(q, buckets, expected):
    found = quantile(q, buckets)
    assert found == pytest.approx(expected) if expected is not None else found is None

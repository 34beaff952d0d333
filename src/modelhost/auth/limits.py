"""Failed sign-ins, per client address: a small burst, then one a second, then 429."""

from __future__ import annotations

import math
import time

MAX_CLIENTS = 10_000  # addresses remembered; past it, those with a full allowance are forgotten


class FailureLimiter:
    """A token bucket per address, spent only by failures: a client that signs in is never
    slowed down, and one that guesses gets `burst` tries, then `per_s` a second."""

    def __init__(self, burst: int = 10, per_s: float = 1.0) -> None:
        self.burst = burst
        self.per_s = per_s
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (allowance, at)

    def failed(self, address: str) -> float:
        """Count one failure; 0 if it may be answered now, else the seconds to wait first."""
        now = time.monotonic()
        allowance, at = self._buckets.get(address, (float(self.burst), now))
        allowance = min(float(self.burst), allowance + (now - at) * self.per_s)
        if allowance >= 1:
            self._remember(address, allowance - 1, now)
            return 0.0
        self._remember(address, allowance, now)
        return (1 - allowance) / self.per_s

    def _remember(self, address: str, allowance: float, now: float) -> None:
        if len(self._buckets) >= MAX_CLIENTS and address not in self._buckets:
            full = self.burst - 1
            self._buckets = {
                a: (left, at)
                for a, (left, at) in self._buckets.items()
                if left + (now - at) * self.per_s < full
            }
        self._buckets[address] = (allowance, now)


def retry_after(wait_s: float) -> bytes:
    return str(max(1, math.ceil(wait_s))).encode()

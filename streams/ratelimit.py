"""Token buckets for the edges: a refused request is answered 429 before anything reaches the log."""

from __future__ import annotations

import math
from collections import OrderedDict

from fastapi import HTTPException


class TokenBucket:
    """Per-key buckets of `burst` tokens refilled at `rate_per_s`; least recently used keys are forgotten."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float | None:
        """None when a token was taken for key at time `now` (seconds); else the seconds to wait."""
        return self.take_all([key], now)

    def take_all(self, keys: list[str], now: float) -> float | None:
        """One token from each key's bucket, all or none: None when taken, else the longest wait."""
        levels = {key: self._level(key, now) for key in keys}
        waits = [(1.0 - tokens) / self.rate_per_s for tokens in levels.values() if tokens < 1.0]
        for key, tokens in levels.items():
            self._buckets.pop(key, None)
            self._buckets[key] = (tokens if waits else tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return max(waits) if waits else None

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)


def rate_limited(what: str, wait_s: float) -> HTTPException:
    """The 429 answer for a refused request, with Retry-After in whole seconds (at least 1)."""
    retry_after = max(1, math.ceil(wait_s))
    return HTTPException(429, f"rate limit exceeded for {what}; retry after {retry_after} s",
                         headers={"Retry-After": str(retry_after)})

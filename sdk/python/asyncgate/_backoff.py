"""Equal-jitter exponential backoff, the gateway's own retry schedule.

The delay is a pure function of (attempt, bounds, a random unit) so that it
is tested without a clock; `Backoff` only adds the counter and the
randomness. The n-th delay is uniform in `[c/2, c]` with
`c = min(max, min * 2**n)`, like `asyncgate_proto::backoff::equal_jitter`.
Shared by the resumable watch and the worker's reconnect loop.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "equal_jitter"]


def equal_jitter(attempt: int, low: float, high: float, unit: float) -> float:
    """The delay in seconds of attempt `attempt` (0-based), `unit` in [0, 1)."""
    high = max(high, low)
    ceiling = min(high, low * (2.0 ** min(attempt, 62)))
    return ceiling / 2 + (ceiling / 2) * unit


class Backoff:
    """Hands out growing, jittered delays until `reset`."""

    def __init__(self, low: float, high: float) -> None:
        #: The first ceiling, in seconds (and, halved, the shortest delay).
        self.low = low
        #: The largest ceiling, in seconds.
        self.high = max(high, low)
        #: Delays handed out since the last reset.
        self.attempt = 0

    def next_delay(self) -> float:
        """The next delay in seconds; each call raises the ceiling."""
        delay = equal_jitter(self.attempt, self.low, self.high, random.random())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the shortest delay, after something succeeded."""
        self.attempt = 0

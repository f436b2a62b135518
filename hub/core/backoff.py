"""The one reconnect and retry policy: exponential backoff with "equal jitter".

Every loop that waits to try again uses it: the hub's services reconnecting to RabbitMQ, the
outputs retrying a write, and each simulated device reconnecting. It is a small pure object
rather than a library's retry loop because the simulator drives a thousand reconnects as
timers of one event loop, where a blocking retry wrapper cannot go.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    #: Delay ceiling of the first retry, in seconds; it doubles (times `multiplier`) per attempt...
    first_s: float
    #: ...up to this ceiling.
    max_s: float
    multiplier: float = 2.0


#: The hub's services reconnecting to the broker.
HUB_RECONNECT = BackoffPolicy(first_s=0.5, max_s=10.0)
#: An output retrying a write its server did not take (InfluxDB down, 5xx, 429).
OUTPUT_RETRY = BackoffPolicy(first_s=0.2, max_s=10.0)
#: A simulated device reconnecting to the broker.
DEVICE_RECONNECT = BackoffPolicy(first_s=0.5, max_s=30.0)


class Backoff:
    """Delays for successive attempts under one policy; `reset()` after a success."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay_s(self) -> float:
        """Half the capped exponential delay, plus a random share of the other half."""
        ceiling = min(self.policy.max_s, self.policy.first_s * self.policy.multiplier**self.attempts)
        self.attempts += 1
        return ceiling / 2.0 + self._rng.uniform(0.0, ceiling / 2.0)

    def reset(self) -> None:
        self.attempts = 0

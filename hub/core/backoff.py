"""The one reconnect and retry policy: exponential backoff with "equal" or "full" jitter.

Every loop that waits to try again uses it: the hub's services reconnecting to RabbitMQ, the
outputs retrying a write, and each simulated device reconnecting. It is a small pure object
rather than a library's retry loop because the simulator drives a thousand reconnects as
timers of one event loop, where a blocking retry wrapper cannot go.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

#: "equal": half the capped delay plus a random share of the other half (never hammers: at least
#: half the ceiling between attempts); "full": anywhere between 0 and the capped delay (spreads
#: a crowd of clients that lost the same broker over the whole interval, the widest spread).
Jitter = Literal["equal", "full"]


@dataclass(frozen=True)
class BackoffPolicy:
    #: Delay ceiling of the first retry, in seconds; it doubles (times `multiplier`) per attempt...
    first_s: float
    #: ...up to this ceiling.
    max_s: float
    multiplier: float = 2.0
    jitter: Jitter = "equal"


#: The hub's services reconnecting to the broker. The goal is to consume again within 2 s of the
#: broker answering, so no wait between attempts may exceed 1 s, leaving ~1 s to connect, declare
#: and subscribe: a broker that has just started is slow to answer while it recovers its quorum
#: queues and starts its plugins (`python -m bench.chaos` saw 2.5 s with a cap of 1.5 s on two busy
#: cores). The first retry comes after 0.1-0.2 s. Equal jitter: a hub process has
#: a handful of connections (one per service), too few to stampede, and a floor of half the
#: ceiling keeps a down broker from being polled in a tight loop.
HUB_RECONNECT = BackoffPolicy(first_s=0.2, max_s=1.0)
#: An output retrying a write its server did not take (InfluxDB down, 5xx, 429). A stop does not
#: wait for it: the wait is cut short and the batch left unacked (see `Consumer.sleep`).
OUTPUT_RETRY = BackoffPolicy(first_s=0.2, max_s=10.0)
#: A simulated device reconnecting to the broker. The goal is every device back within 5 s of
#: the broker answering: the cap of 4 s leaves ~1 s to connect. Full jitter: a thousand devices
#: lose the broker at the same instant, and a uniform draw over [0, ceiling] spreads their
#: reconnects over the whole interval instead of over its upper half (no stampede on return).
DEVICE_RECONNECT = BackoffPolicy(first_s=0.5, max_s=4.0, jitter="full")


class Backoff:
    """Delays for successive attempts under one policy; `reset()` after a success."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay_s(self) -> float:
        """The capped exponential delay with the policy's jitter (see `Jitter`); never above `max_s`."""
        ceiling = min(self.policy.max_s, self.policy.first_s * self.policy.multiplier ** min(self.attempts, 64))
        self.attempts += 1
        if self.policy.jitter == "full":
            return self._rng.uniform(0.0, ceiling)
        return ceiling / 2.0 + self._rng.uniform(0.0, ceiling / 2.0)

    def reset(self) -> None:
        self.attempts = 0

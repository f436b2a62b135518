"""When to try the broker again: exponential backoff with jitter, so a fleet does not reconnect in lockstep.

(tenacity's wait strategies want a blocking retry loop around a call; here one scheduler
drives every device's reconnect as a timer, so the policy is this small pure object.)
"""

from __future__ import annotations

import random

RECONNECT_FIRST_DELAY_S = 0.5
RECONNECT_MAX_DELAY_S = 30.0
RECONNECT_MULTIPLIER = 2.0


class Backoff:
    def __init__(
        self,
        rng: random.Random,
        first_s: float = RECONNECT_FIRST_DELAY_S,
        max_s: float = RECONNECT_MAX_DELAY_S,
        multiplier: float = RECONNECT_MULTIPLIER,
    ) -> None:
        self._rng, self.first_s, self.max_s, self.multiplier = rng, first_s, max_s, multiplier
        self.attempts = 0

    def next_delay_s(self) -> float:
        """Half the capped exponential delay, plus a random share of the other half ("equal jitter")."""
        ceiling = min(self.max_s, self.first_s * self.multiplier**self.attempts)
        self.attempts += 1
        return ceiling / 2.0 + self._rng.uniform(0.0, ceiling / 2.0)

    def reset(self) -> None:
        self.attempts = 0

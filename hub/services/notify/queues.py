"""The notification queues (docs/contract.md, "Notifications").

- `hub.notify`: every alarm transition (`alarms.#` on `iot`), and the escalation timers when
  their delay is over; one router consumes it at a time (single-active-consumer: it holds the
  transitions escalations wait on).
- `hub.notify.<channel>`: the deliveries of one channel, consumed by competing workers, one
  unacked delivery each (prefetch 1).
- `hub.notify.<channel>.retry.<ms>`: a failed delivery waits there `ms`, then returns to its channel's queue.
- `hub.notify.escalate.<ms>`: an escalation's timer waits there `ms`, then goes to `hub.notify`.

A delay queue's name carries its delay, because a queue's TTL cannot change once it exists:
other delays in the settings or the file make other queues (the old ones drain by themselves).
"""

from __future__ import annotations

from hub.runtime.topology import HubQueue, delay_queue

ROUTER_QUEUE = "hub.notify"
#: What `hub.notify` is bound to on `iot`.
ALARMS_PATTERN = "alarms.#"
#: Transitions the router may hold at once (escalations waiting), as the commands queue's window.
ROUTER_PREFETCH = 20_000
#: One delivery at a time per worker: a slow receiver holds up only its own worker.
CHANNEL_PREFETCH = 1

ROUTER = HubQueue(ROUTER_QUEUE, (ALARMS_PATTERN,), prefetch=ROUTER_PREFETCH, single_active=True)


def channel_queue(channel: str) -> HubQueue:
    """Competing consumers (not single-active): any worker takes any delivery."""
    return HubQueue(f"{ROUTER_QUEUE}.{channel}", (), prefetch=CHANNEL_PREFETCH)


def retry_queue(channel: str, delay_ms: int) -> HubQueue:
    return delay_queue(f"{ROUTER_QUEUE}.{channel}.retry.{delay_ms}", delay_ms, channel_queue(channel).name)


def escalation_queue(delay_ms: int) -> HubQueue:
    return delay_queue(f"{ROUTER_QUEUE}.escalate.{delay_ms}", delay_ms, ROUTER_QUEUE)

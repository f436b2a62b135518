"""The hub's services in one process, each in its own thread, and a clean stop.

SIGTERM/SIGINT stop cleanly: open batches are written and acked first; SIGKILL loses nothing
either, the broker redelivers. A service that dies stops the hub with its error.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from prometheus_client import disable_created_metrics

from hub.core.config import Settings
from hub.core.errors import HubError
from hub.runtime.health import Monitor
from hub.runtime.middleware import Middleware, Stats, default_middleware
from hub.runtime.runner import Runner

log = logging.getLogger("hub")

#: How long a clean stop may take, all threads together, before the rest are abandoned. The hub
#: promises to exit within 5 s of SIGTERM: open batches are written and acked if the outputs
#: answer at once; a write retry or reconnect wait is cut short by the stop event (the batch is
#: left unacked, and the broker redelivers it); a thread still busy past this (an output that
#: hangs rather than refuses) is a daemon and abandoned, its deliveries unacked, nothing lost.
STOP_GRACE_S = 4.0


def run_hub(
    settings: Settings,
    build: Callable[[threading.Event, Sequence[Middleware]], Sequence[Runner]],
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Run what `build` makes of the stop event and the hub's middleware (every signal of every
    runner to Prometheus, `hub_stats` and the log), each in its thread, with the monitor."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    stop = threading.Event()
    stats = Stats()
    services = build(stop, default_middleware(stats))
    names = [s.name for s in services]
    monitor = Monitor(settings, services, stats, stop)
    if settings.metrics_port is not None:
        monitor.serve_http(settings.metrics_port)
    failures: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run_target() -> None:
            try:
                target()
            except BaseException as exc:  # a service that cannot go on (bad config) stops the hub
                failures.append(exc)

        return run_target

    threads = [threading.Thread(target=guarded(s.run), name=s.name, daemon=True) for s in services]
    threads.append(threading.Thread(target=monitor.run, name="monitor", daemon=True))

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("event=stopping signal=%d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for thread in threads:
        thread.start()
    log.info("event=started services=%s", ",".join(names))
    on_ready()
    while not stop.wait(0.5):
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            log.error("event=service_died services=%s", ",".join(dead))
            stop.set()
    deadline = time.monotonic() + STOP_GRACE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threads if t.is_alive()]
    if left:
        log.warning("event=stop_abandoned threads=%s after_s=%.1f", ",".join(left), STOP_GRACE_S)
    monitor.close()
    log.info("event=stopped")
    for failure in failures:
        if isinstance(failure, HubError):
            raise failure
    if failures:
        raise HubError(f"a service stopped unexpectedly: {failures[0]!r}")

"""The logs service: devices' log lines from queue `hub.logs` (`logs.#`) into `device_logs`.

- `limiter.py`: a token bucket per device, and the summary of what it dropped (pure);
- `stored.py`: a log line, or a summary, as a point of `device_logs`;
- `rules.py`: the hook where log rules ("3 error lines in 1 minute") see each stored line;
- `service.py`: the handler its runner drives.
"""

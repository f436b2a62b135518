"""Telemetry, consumed once: each reading is stored, judged by the rules and, beside presence, a
sign of life, from one delivery of one partition queue `hub.telemetry.<p>`.

- `stage`: the pure composition: a decoded reading -> its point, the rules' decisions, their points;
- `service`: the `TelemetryHandler`: a delivery in, its `Effects` out (its runner publishes,
  batches, writes, acks and counts).

The decisions stay where they were: `hub.services.store` (judge, points), `hub.services.rules`
(engine), `hub.services.presence.signs` (signs of life).
"""

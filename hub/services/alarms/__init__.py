"""Alarms: one per alarm type and device, with a lifecycle (raised, escalated, acked, cleared).

- `lifecycle`: the pure state machine (`AlarmBook`): trips, conditions and acks in, `Change`s out;
- `transitions`: what a change becomes: an `alarms` point, an `alarms.<severity>.…` message;
- `rebuild`: a telemetry handler's rule and alarm state, rebuilt from what was stored.

The telemetry handler drives it: every reading of a device lands in one partition, so the
partition's handler owns the device's alarms.
"""

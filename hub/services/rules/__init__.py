"""Rules and analytics: rolling per-device statistics and the rules users write in YAML.

- `model`: the rules file's schema (msgspec), `loader`: reading and validating it;
- `stats`: rolling window statistics per (device, sensor);
- `engine`: the pure decision: a reading in, alerts and commands out (with cooldowns);
- `alerts`: an alert as stored (`alerts` point);

The telemetry service (`hub.services.telemetry`) runs the engine on every reading of its partitions.
"""

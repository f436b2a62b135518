"""Rules and analytics: rolling per-device statistics and the rules users write in YAML.

- `model`: the rules file's schema (msgspec), `loader`: reading and validating it;
- `stats`: rolling window statistics per (device, sensor);
- `engine`: the pure decision: a reading in, alerts and commands out (with cooldowns);
- `service`: the pika shell on queue `hub.rules`.
"""

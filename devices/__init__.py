"""Simulated IoT devices that speak MQTT (paho-mqtt) and STOMP (stomp.py).

- `devices.sim` — the command line (`python -m devices.sim`, `iot-sim`).
- `devices.fleet.Fleet` — the in-process API: a fleet of devices behind one event loop.
- `devices.models` — the physics of each kind (pure); `devices.faults` — spikes, stuck sensors, dropouts.
- `devices.device` — one device without I/O: identity, seq, commands and acks; `devices.outbox` — its buffer.
- `devices.mqtt_link`, `devices.stomp_link` — the thin protocol adapters; when to reconnect is
  `DEVICE_RECONNECT` of `hub.core.backoff`.
"""

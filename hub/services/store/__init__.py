"""The store: telemetry from queue `hub.store` into InfluxDB, batched, acked only once written.

- `lineprotocol` turns a `Reading` (and the hub's own points) into InfluxDB line protocol;
- `batch` decides when a batch is due and which delivery tag acks it;
- `writers` writes lines through the 1.x HTTP API or the v2 API (influxdb-client);
- `consumer` is the thin pika shell around them.
"""

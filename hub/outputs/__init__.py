"""Where the hub's points go: outputs registered by name, chosen by IOT_OUTPUTS, fed together.

- `base.Output`: the interface (`write(points)`, `ping`, `close`);
- `influxdb_v1`, `influxdb_v2`, `jsonl`: the outputs; `lineprotocol`: InfluxDB's encoding;
- `registry`: names -> outputs; `fanout.OutputSet`: every output gets every batch, each with its own retry.
"""

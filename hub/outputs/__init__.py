"""Where the hub's points go, and how they are read back: outputs registered by name, chosen by
IOT_OUTPUTS, fed together; beside each, its reader.

- `base.Output`: the interface (`write(points)`, `ping`, `close`); `base.Reader`: the read side
  (the devices' recorded states, the newest readings, the command history);
- `influxdb_v1`, `influxdb_v2`, `jsonl`: the outputs and their readers; `lineprotocol`: InfluxDB's encoding;
- `registry`: names -> outputs and readers; `fanout.OutputSet`: every output gets every batch, each with its own retry.
"""

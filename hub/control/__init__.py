"""Control from the command line: send commands to devices, see the fleet, tail the exchange.

- `send`: `CommandSender` publishes `Command`s (confirmed, mandatory) and waits for `Ack`s.
- `fleet`: `read_fleet()` builds the fleet view from what the hub wrote to InfluxDB.
- `tail`: a readable line for any message that crosses exchange `iot`.
- `cli`: the click commands `send`, `devices` and `tail` of `python -m hub`.
"""

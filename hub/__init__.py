"""IoT telemetry hub: the wire contract, configuration, the native stack and the hub services."""

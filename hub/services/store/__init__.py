"""The store's decisions: what a reading is stored as, and what the models make of it.

- `readings`: the `Point` a reading is stored as (tagged with the protocol it came in on);
- `judge`: a reading its kind's model does not expect: refused, flagged or stored.

The telemetry service (`hub.services.telemetry`) applies them; batching and retries come from `hub.runtime`.
"""

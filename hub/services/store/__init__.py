"""The store: telemetry from queue `hub.store` into the outputs, batched, acked only once written.

- `readings`: the protocol a reading came in on, and the `Point` it is stored as;
- `service`: the `StoreService` (validation, batching and retries come from `hub.runtime`).
"""

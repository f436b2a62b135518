"""Notifications: alarm transitions (`alarms.<severity>.<site>.<kind>.<device>`) sent to people.

- `config`: the notification file (channels, routes, escalations), validated with line numbers;
- `topic`: AMQP topic patterns (`*`, `#`) over routing keys;
- `message`: the alarm transition as received, and the notification body every channel sends;
- `plan`: the decisions without I/O: which channels a transition goes to, the escalations it
  starts or cancels, the retry schedule of a delivery;
- `queues`: the notification queues (a durable queue per channel, its retry and the escalation delays);
- `router` and `worker`: the two handlers the runner drives (the router decides, a worker delivers);
- `senders`: the thin adapters (webhook over HTTP, email over SMTP).
"""

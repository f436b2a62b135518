"""`python -m hub demo`: the whole system live in one terminal, stopped cleanly.

- `app`: the `demo` command and the `Demo` run that ties the pieces together;
- `stack_handle`: the stack (docker compose or native) and whether the demo stops it;
- `children`: the hub and the simulator as child processes that die with the demo;
- `readiness`: waiting until the hub works and the devices are online;
- `scenario`: the CLI commands the demo sends, and their outcomes;
- `activity`: what InfluxDB says is happening;
- `view`: the live view, the plain status line and the final summary;
- `signals`: Ctrl-C, SIGTERM and SIGHUP as one clean stop.
"""

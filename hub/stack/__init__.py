"""The native stack: a project-local RabbitMQ node and `influxd`, started, checked and stopped.

`Stack(settings).up()` is what `python -m hub stack up` and the test harness both call.
"""

from hub.stack.stack import Stack, StackStatus

__all__ = ["Stack", "StackStatus"]

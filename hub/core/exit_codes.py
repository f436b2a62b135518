"""The exit codes of `python -m hub send|devices|tail|demo`, one meaning each across the tool.

2, 3, 4 and 5 are the codes of `hub.core.errors` (usage, stack, broker, InfluxDB), so a script
reads the same number for the same trouble whichever command it ran.
"""

from __future__ import annotations

from enum import IntEnum

from hub.core.errors import BrokerUnavailable, ConfigError, StackError, StorageUnavailable


class ExitCode(IntEnum):
    OK = 0
    #: The device answered, but not `ok`: `error`, `unsupported` or `expired`.
    DEVICE_REFUSED = 1
    #: Bad arguments or settings (click's usage errors use 2 as well).
    USAGE = ConfigError.exit_code
    #: The native stack could not be started or stopped (`demo`).
    STACK = StackError.exit_code
    #: RabbitMQ cannot be reached or refused the credentials.
    BROKER_UNREACHABLE = BrokerUnavailable.exit_code
    #: InfluxDB cannot be reached or refused the query.
    INFLUX_UNREACHABLE = StorageUnavailable.exit_code
    #: No device is subscribed to the command's routing key (unknown, or offline and gone).
    UNKNOWN_DEVICE = 6
    #: The device is subscribed but did not answer before the timeout.
    TIMEOUT = 7
    #: Interrupted with Ctrl-C or SIGTERM where that is not the normal way to stop (128 + SIGINT).
    INTERRUPTED = 130


#: The table printed in `--help` (\b keeps click from rewrapping it).
EXIT_CODES_HELP = """\b
Exit codes:
  0  ok (every device answered ok)
  1  a device answered error, unsupported or expired
  2  usage error (bad device name, command or key=value)
  4  RabbitMQ unreachable or credentials refused
  5  InfluxDB unreachable (only when the fleet is read: --site/--kind/--all)
  6  unknown device: no device is subscribed to its commands
  7  timeout: the device did not answer in time"""

DEVICES_EXIT_CODES_HELP = """\b
Exit codes:
  0  ok (also when no device matches)
  2  usage error
  5  InfluxDB unreachable, or it has no database IOT_INFLUX_DB"""

TAIL_EXIT_CODES_HELP = """\b
Exit codes:
  0  stopped by Ctrl-C, --count or --for
  2  bad routing pattern
  4  RabbitMQ unreachable or credentials refused"""

LOGS_EXIT_CODES_HELP = """\b
Exit codes:
  0  ok (also when no line matches), or -f stopped by Ctrl-C or --for
  2  usage error (bad name, level or --since), or the outputs cannot be read back (jsonl only)
  4  RabbitMQ unreachable or credentials refused (-f)
  5  InfluxDB unreachable, or it has no database IOT_INFLUX_DB"""

ALARMS_EXIT_CODES_HELP = """\b
Exit codes:
  0  ok (also when no alarm matches)
  2  usage error; an unknown alarm id, or a cleared one (ack: nothing sent)
  4  RabbitMQ unreachable or credentials refused (ack)
  5  InfluxDB unreachable, or it has no database IOT_INFLUX_DB"""

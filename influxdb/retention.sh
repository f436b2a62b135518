#!/bin/sh
# docker compose's service influxdb-retention: InfluxDB's retention policies and roll-up queries,
# as `python -m hub stack up` sets them. It runs, as InfluxDB's admin, the statements that
# `python -m hub stack certs` renders from IOT_RETENTION_* into .stack/compose/retention.iql
# (hub/core/retention.py), one a line. A line starting with `?` may fail (a policy that exists
# already, a query not made yet): the next line does the work then. Safe to run again.
#
#   usage: retention.sh [STATEMENTS_FILE]   (INFLUX_URL, INFLUXDB_ADMIN_USER, INFLUXDB_ADMIN_PASSWORD)
set -eu
url="${INFLUX_URL:-http://influxdb:8086}"
statements="${1:-/retention/retention.iql}"
# The admin's password goes to curl in a private file, not on its command line.
umask 077
login="$(mktemp)"
trap 'rm -f "$login"' EXIT
printf 'user = "%s:%s"\n' "$INFLUXDB_ADMIN_USER" "$INFLUXDB_ADMIN_PASSWORD" > "$login"
while IFS= read -r line <&3; do
    case "$line" in '' | '#'*) continue ;; esac
    may_fail=no
    case "$line" in '?'*) may_fail=yes; line="${line#?}" ;; esac
    answer="$(curl -sS -K "$login" -X POST "$url/query" --data-urlencode "q=$line")" || {
        echo "retention: cannot reach InfluxDB at $url" >&2
        exit 1
    }
    case "$answer" in
        *'"error"'*)
            if [ "$may_fail" = no ]; then
                echo "retention: InfluxDB refused: $line: $answer" >&2
                exit 1
            fi
            ;;
    esac
done 3< "$statements"
echo "retention: policies and roll-up queries set from $statements"

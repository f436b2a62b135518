"""The dashboards people open, checked against real data that went devices -> broker -> hub -> InfluxDB.

One hub (`python -m hub run`) and two simulated fleets (two sites, both protocols, every kind)
fill the session's InfluxDB; then every query of every Chronograf dashboard file runs against
it with its template variables rendered the way Chronograf renders them, and the local page of
`python -m hub dashboard` is driven in headless Chromium.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from devices.fleet import Fleet
from hub.clients.influx import Series
from hub.core.config import Settings
from hub.core.contract import EXCHANGE
from hub.core.errors import InvalidIdentifier
from hub.core.models import default_models
from hub.core.retention import RetentionPlan
from hub.dashboard import queries
from hub.dashboard.server import make_server
from hub.stack.packages import ensure_packages
from hub.stack.processes import free_port
from tests.support import (
    REPO,
    amqp_connection,
    fleet_credentials,
    hub_process,
    influx_query,
    settings_environment,
    started_stack,
    wait_until,
)

DASHBOARDS = REPO / "dashboards"
#: Chronograf's own rule for :interval: (ui/src/tempVars/utils/replace.ts): the range over 360 points.
POINTS_PER_GRAPH = 360
#: The range the queries are rendered with, like Chronograf's "Past 15m".
DASHBOARD_RANGE_MS = 15 * 60 * 1000
#: Template and value types Chronograf accepts (server/templates.go ValidTemplateRequest).
TEMPLATE_TYPES = {"constant", "csv", "fieldKeys", "tagKeys", "tagValues", "measurements", "databases", "map"}
TEMPLATE_TYPES |= {"influxql", "text", "flux"}
VALUE_TYPES = {"csv", "map", "fieldKey", "tagKey", "tagValue", "measurement", "database", "constant", "influxql"}
CELL_TYPES = {"line", "line-stacked", "line-stepplot", "line-plus-single-stat", "single-stat", "gauge", "bar", "table"}
BUILTIN_VARIABLES = {":dashboardTime:", ":upperDashboardTime:", ":interval:"}
#: A queue bound to alerts.# while the test runs: a dashboard-side listener, so alerts are routable.
ALERT_LISTENER_MAX_LENGTH = 10_000
ALERT_LISTENER_EXPIRES_MS = 10 * 60 * 1000

#: Rules that fire at once and once per device, so alerts of every severity and rule-sent
#: commands (with the devices' acks) are in the data after a few seconds.
TEST_RULES = {
    "rules": [
        {"name": "env-reported", "type": "threshold", "kind": "environment", "sensor": "temperature",
         "above": -100.0, "severity": "info", "message": "environment reported", "cooldown_s": 3600},
        {"name": "thermostat-seen", "type": "threshold", "kind": "thermostat", "sensor": "temperature",
         "above": -100.0, "severity": "warning", "message": "lowering the setpoint", "cooldown_s": 3600,
         "action": {"command": "set_setpoint", "args": {"value": 18.0}}},
        {"name": "power-seen", "type": "threshold", "kind": "power_meter", "sensor": "power",
         "above": -1.0, "severity": "critical", "message": "relay off", "cooldown_s": 3600,
         "action": {"command": "set_relay", "args": {"on": False}}},
        {"name": "air-seen", "type": "threshold", "kind": "air_quality", "sensor": "co2",
         "above": 0.0, "severity": "warning", "message": "ventilation on", "cooldown_s": 3600,
         "action": {"command": "set_ventilation", "args": {"on": True}}},
    ]
}  # fmt: skip


@dataclass(frozen=True)
class Device:
    device: str
    site: str
    kind: str


@dataclass(frozen=True)
class FleetData:
    settings: Settings
    devices: list[Device]
    stopped: Device


# --- filling InfluxDB through the hub --------------------------------------------------------


def count(settings: Settings, query: str) -> int:
    series = influx_query(settings, query)
    return int(series[0]["values"][0][1]) if series else 0


@contextmanager
def alert_listener(settings: Settings) -> Iterator[None]:
    """A queue on alerts.# while the test runs, like a dashboard listening for alerts.

    The hub publishes alerts as mandatory messages, so without one they are unroutable. The
    queue is bounded, and expires by itself should the test die before deleting it.
    """
    arguments = {"x-max-length": ALERT_LISTENER_MAX_LENGTH, "x-expires": ALERT_LISTENER_EXPIRES_MS}
    with amqp_connection(settings) as connection:
        channel = connection.channel()
        queue = channel.queue_declare("", arguments=arguments).method.queue
        channel.queue_bind(queue, EXCHANGE, routing_key="alerts.#")
    try:
        yield
    finally:
        with amqp_connection(settings) as connection:
            connection.channel().queue_delete(queue)


@pytest.fixture(scope="module")
def dashboard_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of this module's own: the fleet counts must see only the devices filled here
    (other tests reuse device ids such as env-0001 at other sites)."""
    settings, the_stack = started_stack(tmp_path_factory)
    try:
        yield settings
    finally:
        the_stack.down()


@pytest.fixture(scope="module")
def fleet_data(dashboard_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetData]:
    """Two sites of simulated devices talking to a real hub; still running while the module's tests run."""
    stack = dashboard_stack
    tmp = tmp_path_factory.mktemp("dashboards")
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(TEST_RULES))
    fleet_credentials(stack, 4, kinds=["environment", "thermostat"], site="plant-a")
    fleet_credentials(stack, 4, kinds=["power_meter", "air_quality"], site="plant-b")
    with ExitStack() as running:
        running.enter_context(alert_listener(stack))
        hub = running.enter_context(hub_process(stack, tmp, IOT_RULES_FILE=str(rules)))
        plant_a = running.enter_context(
            Fleet(stack, count=4, kinds=["environment", "thermostat"], site="plant-a", seed=1, interval_s=0.5)
        )
        plant_b = running.enter_context(
            Fleet(stack, count=4, kinds=["power_meter", "air_quality"], site="plant-b", seed=2, interval_s=0.5)
        )
        devices = [Device(d.device_id, d.site, d.kind) for fleet in (plant_a, plant_b) for d in fleet.devices]
        for device in devices:
            wait_until(
                partial(count, stack, f"SELECT count(seq) FROM {device.kind} WHERE device = '{device.device}'"), 30
            )
        ours = '"device" =~ /^(' + "|".join(d.device for d in devices) + ")$/"
        wait_until(lambda: count(stack, f"SELECT count(rtt_ms) FROM commands WHERE status = 'ok' AND {ours}") >= 4, 30)
        severities = f'SELECT count("id") FROM alerts WHERE {ours} GROUP BY severity'
        wait_until(lambda: len(influx_query(stack, severities)) == 3, 30)
        stopped = next(d for d in devices if d.kind == "environment")
        plant_a.stop_device(stopped.device)
        offline = f"SELECT count(state) FROM device_status WHERE state = 'offline' AND device = '{stopped.device}'"
        wait_until(lambda: count(stack, offline), 30)
        # The hub's rates are derivatives of `hub_stats`, written every 10 s: they need two points.
        instance = f"{socket.gethostname()}-{hub.pid}"
        stats = f"SELECT count(stored) FROM hub_stats WHERE service = 'telemetry' AND instance = '{instance}'"
        wait_until(lambda: count(stack, stats) >= 2, 30)
        yield FleetData(stack, devices, stopped)


# --- Chronograf's dashboard files, read the way Chronograf reads them ------------------------


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.dashboard"))


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def cell_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(cell["name"], query["query"]) for cell in board["cells"] for query in cell["queries"]]


def render_value(query: str, variable: str, value: str, value_type: str) -> str:
    """Chronograf's renderTemplate: quoted by value type, but bare inside a /regex/."""
    query = re.sub(r"(=~|!~)\s*/([^/]*)/", lambda m: m.group(0).replace(variable, value), query)
    if value_type in {"tagKey", "fieldKey", "measurement", "database"}:
        return query.replace(variable, f'"{value}"')
    if value_type == "tagValue":
        return query.replace(variable, f"'{value}'")
    return query.replace(variable, value)


def render(query: str, choices: dict[str, tuple[str, str]], range_ms: int = DASHBOARD_RANGE_MS) -> str:
    for variable, (value, value_type) in choices.items():
        query = render_value(query, variable, value, value_type)
    query = query.replace(":dashboardTime:", f"now() - {range_ms // 1000}s")
    query = query.replace(":upperDashboardTime:", "now()")
    return query.replace(":interval:", f"{round(range_ms / POINTS_PER_GRAPH)}ms")


def template_query(template: dict[str, Any]) -> str:
    """Chronograf's templateInternalReplace: a built-in template's meta query with its db/measurement/key."""
    query = template["query"]
    text: str = query["influxql"]
    if template["type"] == "influxql":
        return text
    return (
        text.replace(":database:", f'"{query["db"]}"')
        .replace(":measurement:", f'"{query["measurement"]}"')
        .replace(":tagKey:", f'"{query["tagKey"]}"')
    )


def template_values(settings: Settings, template: dict[str, Any], choices: dict[str, tuple[str, str]]) -> list[str]:
    """The dropdown of a query-backed template, given the choices made for the templates it uses."""
    series = influx_query(settings, render(template_query(template), choices))
    return sorted({row[-1] for one in series for row in one["values"]})


def hydrate(settings: Settings, board: dict[str, Any], device: Device) -> dict[str, tuple[str, str]]:
    """Choose the dashboard's template values for `device`, resolving dependencies like Chronograf.

    Query-backed templates are resolved from the data (their queries run too, so a broken
    template query fails here); the device's own site/device/kind is picked from each dropdown,
    which must offer it. Text and constant templates keep their default.
    """
    own = {"site": device.site, "device": device.device, "kind": device.kind}
    choices: dict[str, tuple[str, str]] = {}
    pending = list(board["templates"])
    while pending:
        ready = [t for t in pending if not set(re.findall(r":\w+:", json.dumps(t.get("query", {})))) - _known(choices)]
        assert ready, f"{board['name']}: templates depend on each other in a cycle or on undefined ones"
        for template in ready:
            pending.remove(template)
            name = template["tempVar"].strip(":")
            value_type = template["values"][0]["type"]
            if template.get("query", {}).get("influxql"):
                offered = template_values(settings, template, choices)
                assert own[name] in offered, f"{board['name']} {template['tempVar']} offers {offered}, not {own[name]}"
                choices[template["tempVar"]] = (own[name], value_type)
            else:
                [default] = [v["value"] for v in template["values"] if v.get("selected")]
                choices[template["tempVar"]] = (default, value_type)
    return choices


def values_in(series: list[dict[str, Any]]) -> int:
    """How many non-null values (time excluded) the series hold: what a chart would draw."""
    return sum(v is not None for one in series for row in one["values"] for v in row[1:])


def _known(choices: dict[str, tuple[str, str]]) -> set[str]:
    return set(choices) | {":database:", ":measurement:", ":tagKey:"}


# --- the files --------------------------------------------------------------------------------


def test_every_dashboard_file_is_a_chronograf_dashboard() -> None:
    files = dashboard_files()
    assert {f.name for f in files} == {
        "fleet-overview.dashboard",
        "device-detail.dashboard",
        "alerts.dashboard",
        "hub-health.dashboard",
    }
    ids = set()
    for path in files:
        board = load(path)
        assert isinstance(board["id"], int) and board["id"] < 0, f"{path.name}: file dashboards use negative ids"
        ids.add(board["id"])
        assert board["name"] and board["organization"] == "default", path.name
        cell_ids = [cell["i"] for cell in board["cells"]]
        assert len(set(cell_ids)) == len(cell_ids), f"{path.name}: cell ids repeat"
        defined = {t["tempVar"] for t in board["templates"]}
        assert len(defined) == len(board["templates"]), f"{path.name}: a template variable is defined twice"
        for template in board["templates"]:
            assert template["type"] in TEMPLATE_TYPES, template
            assert template["values"] and all(v["type"] in VALUE_TYPES for v in template["values"]), template
            assert sum(v.get("selected", False) for v in template["values"]) == 1, template
            if template["type"] in {"influxql", "tagValues"}:
                assert template["query"]["influxql"], template
        for cell in board["cells"]:
            assert cell["type"] in CELL_TYPES, f"{path.name} {cell['name']}: {cell['type']}"
            assert cell["x"] >= 0 and cell["x"] + cell["w"] <= 12 and cell["h"] > 0, cell["name"]
            assert cell["queries"], f"{path.name} {cell['name']} has no query"
            for query in cell["queries"]:
                assert query["type"] == "influxql" and query["queryConfig"]["rawText"] == query["query"]
                used = set(re.findall(r":\w+:", query["query"]))
                assert used <= defined | BUILTIN_VARIABLES, f"{path.name} {cell['name']}: {used - defined}"
                named = ('"telemetry"."autogen".', '"telemetry".":resolution:".')
                assert any(n in query["query"] for n in named), f"{cell['name']}: name the database explicitly"
    assert len(ids) == len(files), "two dashboards share an id"


def test_device_readings_cover_every_numeric_sensor_of_the_models() -> None:
    """The device dashboard lists sensors by name; a sensor added to the shipped models must be added there."""
    numeric = set(default_models().sensor_names("number"))
    for _name, query in cell_queries(load(DASHBOARDS / "device-detail.dashboard")):
        if '":kind:"' not in query:  # a cell of one kind's sensors (the thermostat's)
            continue
        for listed in re.findall(r"mean\(/\^(?:\(mean_\)\?)?\(([^)]*)\)\$/\)", query):
            assert set(listed.split("|")) == numeric


def test_the_device_dashboard_reads_the_resolution_chosen() -> None:
    """Chronograf cannot pick a retention policy by range: a `:resolution:` choice, raw by default, names
    the policies the stack sets up; the readings cells match a sensor's raw field and its roll-up mean."""
    board = load(DASHBOARDS / "device-detail.dashboard")
    [template] = [t for t in board["templates"] if t["tempVar"] == ":resolution:"]
    offered = [v["value"] for v in template["values"]]
    assert offered == [resolution.rp or "autogen" for resolution, _kept in RetentionPlan(db="telemetry").resolutions]
    assert [v["value"] for v in template["values"] if v["selected"]] == ["autogen"]
    readings = [q for name, q in cell_queries(board) if name.startswith(("Readings of", "Timeline"))]
    assert readings and all(":resolution:" in q and "mean(/^(mean_)?(" in q for q in readings if "mean(" in q)


def test_chronograf_connects_to_the_compose_influxdb_and_loads_these_files() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    chronograf = compose["services"]["chronograf"]
    assert chronograf["image"] == "chronograf:1.10"
    flags = " ".join(chronograf["command"])
    [resources] = re.findall(r"--resources-path=(\S+)", flags)
    assert f"./dashboards:{resources}:ro" in chronograf["volumes"]
    assert "--influxdb-url" not in flags, "a second source would duplicate the one in dashboards/influxdb.src"
    assert chronograf["healthcheck"]["test"] and any(
        str(v).startswith("chronograf-data:") for v in chronograf["volumes"]
    )

    [source_file] = DASHBOARDS.glob("*.src")
    source = json.loads(source_file.read_text())
    influx_port = compose["services"]["influxdb"]["ports"][0].split(":")[-1]
    assert source["url"] == f"http://influxdb:{influx_port}"
    assert source["type"] == "influx" and source["default"] is True and source["organization"] == "default"
    assert isinstance(source["id"], str) and source["id"].isdigit(), "Chronograf reads a source id as a string"
    assert source["telegraf"] == compose["services"]["influxdb"]["environment"]["INFLUXDB_DB"] == "telemetry"


# --- the queries, against the data the hub stored ---------------------------------------------


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_every_query_of_the_dashboard_runs_and_returns_series(fleet_data: FleetData, path: Path) -> None:
    """Each query is run for one device of every kind (what a user picks in the dropdowns): it must
    parse every time, and return series for at least one of them (thermostat cells are empty for
    a power meter, but never for every device)."""
    board = load(path)
    answered: dict[tuple[str, str], int] = {}
    tried: dict[str, list[str]] = {}
    kinds = sorted({d.kind for d in fleet_data.devices})
    picks = [next(d for d in fleet_data.devices if d.kind == k and d != fleet_data.stopped) for k in kinds]
    for device in picks:
        choices = hydrate(fleet_data.settings, board, device)
        for name, query in cell_queries(board):
            rendered = render(query, choices)
            tried.setdefault(name, []).append(rendered)
            series = influx_query(fleet_data.settings, rendered)
            answered[(name, query)] = answered.get((name, query), 0) + values_in(series)
    empty = [name for (name, _query), n in answered.items() if n == 0]
    assert not empty, f"{path.name}: no series with values for {[(n, tried[n][-1]) for n in empty]}"


def test_device_detail_variables_follow_the_chosen_device(fleet_data: FleetData) -> None:
    board = load(DASHBOARDS / "device-detail.dashboard")
    for device in fleet_data.devices:
        choices = hydrate(fleet_data.settings, board, device)
        assert choices[":kind:"][0] == device.kind
        readings_query = render(cell_queries(board)[0][1], choices)
        [series] = influx_query(fleet_data.settings, readings_query)
        assert series["name"] == device.kind
        fields = {c.removeprefix("mean_") for c in series["columns"][1:]}
        assert "seq" not in fields and fields <= set(default_models().kinds[device.kind].sensors)


def last_states(settings: Settings) -> dict[str, str]:
    """Each device's last presence state, computed here from the raw transitions."""
    series = influx_query(settings, 'SELECT "state" FROM "device_status" GROUP BY "device"')
    return {s["tags"]["device"]: s["values"][-1][1] for s in series}


def test_fleet_overview_counts_online_and_offline_devices(fleet_data: FleetData) -> None:
    board = load(DASHBOARDS / "fleet-overview.dashboard")
    queries = dict(cell_queries(board))
    states = last_states(fleet_data.settings)
    assert states[fleet_data.stopped.device] == "offline"
    assert all(states[d.device] == "online" for d in fleet_data.devices if d != fleet_data.stopped)
    online = influx_query(fleet_data.settings, render(queries["Devices online now"], {}))
    offline = influx_query(fleet_data.settings, render(queries["Devices offline now"], {}))
    assert online[0]["values"][0][1] == list(states.values()).count("online")
    assert offline[0]["values"][0][1] == list(states.values()).count("offline")
    by_site = influx_query(fleet_data.settings, render(queries["Devices online by site and protocol"], {}))
    assert {(s["tags"]["site"], s["tags"]["protocol"]) for s in by_site} >= {
        (site, protocol) for site in ("plant-a", "plant-b") for protocol in ("mqtt", "stomp")
    }
    assert sum(s["values"][0][1] for s in by_site) == online[0]["values"][0][1]
    success = influx_query(fleet_data.settings, render(queries["Command success rate (%)"], {}))
    assert 0 < success[0]["values"][0][1] <= 100


def test_alerts_filters_narrow_to_one_site(fleet_data: FleetData) -> None:
    board = load(DASHBOARDS / "alerts.dashboard")
    [by_site] = [q for n, q in cell_queries(board) if n == "Alerts by site"]
    every_kind = (".*", "constant")

    def sites(site: str) -> set[str]:
        rendered = render(by_site, {":site:": (site, "constant"), ":kind:": every_kind})
        return {s["tags"]["site"] for s in influx_query(fleet_data.settings, rendered)}

    assert sites(".*") >= {"plant-a", "plant-b"}
    assert sites("plant-b") == {"plant-b"}


# --- the local page of `python -m hub dashboard`, in headless Chromium ---------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Virtual time the page gets to load, fetch its JSON and draw (a poll every 5 s fits twice).
VIRTUAL_TIME_BUDGET_MS = 12_000
SCREENSHOT_WINDOW = "1280,2300"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Drawn:
    """One series a chart drew: the chart (figure id, else its title), the series, its points."""

    chart: str
    series: str
    points: int


class PageReader(HTMLParser):
    """Reads the DOM Chromium dumps: the drawn series and the text of elements with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn: list[Drawn] = []
        self.texts: dict[str, str] = {}
        self._chart = ""
        self._open_id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure":
            self._chart = a.get("id", "")
        if tag == "svg" and not self._chart:
            self._chart = a.get("aria-label", "")
        if "data-series" in a:
            self.drawn.append(Drawn(self._chart, a["data-series"], int(a["data-points"])))
        self._open_id = a.get("id")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._chart = ""

    def handle_data(self, data: str) -> None:
        if self._open_id:
            self.texts[self._open_id] = self.texts.get(self._open_id, "") + data


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium, installed when missing (as root on Debian; else the error says how)."""
    ensure_packages({"chromium": CHROMIUM})
    return CHROMIUM


@pytest.fixture(scope="module")
def page_url(fleet_data: FleetData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m hub dashboard` on a free port, reading the module's InfluxDB."""
    port = free_port()
    log = tmp_path_factory.mktemp("page") / "dashboard.log"
    environment = settings_environment(fleet_data.settings)
    with open(log, "wb") as out:
        argv = [sys.executable, "-m", "hub", "dashboard", "--port", str(port)]
        process = subprocess.Popen(argv, cwd=REPO, env=environment, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: http_get(url)[0] == 200 or process.poll() is not None, 15)
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except OSError:
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def run_chromium(chromium: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_local_page_draws_the_fleet_and_a_thermostat_with_data(
    fleet_data: FleetData, page_url: str, chromium: Path, tmp_path: Path
) -> None:
    thermostat = next(d for d in fleet_data.devices if d.kind == "thermostat")
    result = run_chromium(
        chromium,
        tmp_path / "profile",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        "--dump-dom",
        f"{page_url}#device={thermostat.device}&range=15m",
    )
    page = PageReader()
    page.feed(result.stdout)
    assert page.texts.get("status", "").startswith("updated"), page.texts.get("status")

    def points(chart: str) -> dict[str, int]:
        return {d.series: d.points for d in page.drawn if d.chart == chart}

    kinds = {d.kind for d in fleet_data.devices}
    assert kinds <= {s for s, n in points("chart-rate").items() if n > 0}
    assert {"info", "warning", "critical"} <= {s for s, n in points("chart-alerts").items() if n > 0}
    assert points("chart-rtt").get("p95", 0) > 0
    celsius = points("temperature vs setpoint (°C)") or points("setpoint vs temperature (°C)")
    assert celsius.get("temperature", 0) > 0 and celsius.get("setpoint", 0) > 0, page.drawn
    assert points("heating (1 = on)").get("heating", 0) > 0

    states = last_states(fleet_data.settings)
    assert page.texts["tile-online"] == str(list(states.values()).count("online"))
    assert page.texts["tile-offline"] == str(list(states.values()).count("offline"))
    assert float(page.texts["tile-rate"]) > 0
    assert thermostat.device in page.texts["device-identity"] or "thermostat" in page.texts["device-identity"]


def test_local_page_screenshot_is_a_png(fleet_data: FleetData, page_url: str, chromium: Path, tmp_path: Path) -> None:
    power_meter = next(d for d in fleet_data.devices if d.kind == "power_meter")
    shot = tmp_path / "dashboard.png"
    run_chromium(
        chromium,
        tmp_path / "profile",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        f"--screenshot={shot}",
        f"--window-size={SCREENSHOT_WINDOW}",
        "--hide-scrollbars",
        f"{page_url}#device={power_meter.device}&range=5m",
    )
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000


def test_local_page_endpoints_follow_new_readings(fleet_data: FleetData, page_url: str) -> None:
    """What the page polls moves on: a device's latest point is newer a few seconds later."""
    device = next(d for d in fleet_data.devices if d != fleet_data.stopped)

    def latest() -> int:
        status, body = http_get(f"{page_url}api/device?device={device.device}&range=5m")
        assert status == 200, body
        return int(max(p[0] for r in body["readings"] for p in r["points"]))

    first = latest()
    wait_until(lambda: latest() > first, 15, 0.5)


def test_local_page_refuses_what_could_reach_influxql(page_url: str) -> None:
    for bad in ("x'%20OR%20'1'='1", "a%22b", "a/b", "A"):
        status, body = http_get(f"{page_url}api/device?device={bad}")
        assert status == 400 and "not allowed" in body["error"], (bad, body)
    status, body = http_get(f"{page_url}api/overview?range=2y")
    assert status == 400 and "5m" in body["error"]
    status, body = http_get(f"{page_url}api/device?device=never-seen-0001")
    assert status == 404 and "never-seen-0001" in body["error"]


def test_local_page_says_when_influxdb_is_unreachable(stack: Settings) -> None:
    unreachable = stack.model_copy(update={"influx_url": f"http://127.0.0.1:{free_port()}"})
    server = make_server(unreachable, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, body = http_get(f"http://127.0.0.1:{server.server_port}/api/overview")
        assert status == 503 and "cannot reach InfluxDB" in body["error"]
    finally:
        server.shutdown()
        server.server_close()


# --- the page's pure core ----------------------------------------------------------------------


def test_page_success_rate_counts_outcomes_not_sends() -> None:
    w = queries.window("15m")
    presence = [
        Series("device_status", {"device": "a", "site": "s1", "kind": "k", "protocol": "mqtt"}, [{"state": "online"}]),
        Series("device_status", {"device": "b", "site": "s1", "kind": "k", "protocol": "mqtt"}, [{"state": "offline"}]),
    ]
    commands = [
        Series("commands", {"status": status}, [{"time": 0, "commands": n}])
        for status, n in (("sent", 10), ("ok", 3), ("timeout", 1))
    ]
    shaped = queries.overview(w, [presence, [], [], commands, []], now_ms=0)
    assert shaped["command_success_pct"] == 75.0
    assert (shaped["online"], shaped["offline"]) == (1, 1)
    assert shaped["by_site_protocol"] == [{"site": "s1", "protocol": "mqtt", "online": 1, "offline": 1}]


def test_page_windows_come_from_a_fixed_list_only() -> None:
    assert [queries.window(name).interval_s for name in ("5m", "24h")] == [3, 720]
    for bad in ("2y", "15m; DROP DATABASE telemetry"):
        with pytest.raises(queries.UnknownRange):
            queries.window(bad)
    assert queries.window(None).name == queries.DEFAULT_RANGE
    with pytest.raises(InvalidIdentifier):
        queries.device_statements("env-0001", 'environment" ; DROP', queries.window("5m"))

// The local dashboard: polls the JSON endpoints and draws the charts as plain SVG.
// No libraries and no innerHTML: every value from the database goes in as text.
"use strict";

const POLL_MS = 5000;
const RANGE_S = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000, "1y": 31536000 };
// The server reads readings at the resolution that fits the range (raw points, 1-minute or 1-hour roll-ups).
const RESOLUTION_TEXT = { raw: "raw readings", "1m": "1-minute roll-ups", "1h": "1-hour roll-ups" };
const PALETTE = ["#2f6fe0", "#e0672f", "#2a9d5c", "#9b3fd1", "#d1a13f", "#3fb6d1", "#d13f7a", "#5c6b7a"];
const SEVERITY_COLOURS = { info: "#3fb6d1", warning: "#e0a02f", critical: "#d93b3b" };
const SVG_NS = "http://www.w3.org/2000/svg";
// Readings reach InfluxDB a moment after they are taken (broker, hub batch): a bucket younger
// than its interval plus this is still filling up.
const INGEST_LAG_MS = 2000;
// Series with this few points also get a dot per point, so a lone value is visible.
const DOTS_UP_TO = 40;
const W = 560, H = 200, LEFT = 48, RIGHT = 10, TOP = 24, BOTTOM = 22;

const state = { range: "15m", device: "", timer: null };

function el(tag, attrs = {}, text = "") {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== "") node.textContent = text;
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function niceNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  return abs >= 100 ? value.toFixed(0) : abs >= 10 ? value.toFixed(1) : value.toFixed(2);
}

// A time-series chart: series = [{name, points: [[ms, value], ...], colour?}], markers = [{t, kind, label}].
function chart(title, unit, series, options = {}) {
  const now = options.now || Date.now();
  const from = now - RANGE_S[state.range] * 1000;
  const caption = unit ? `${title} (${unit})` : title;
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": caption, class: "chart-svg" });
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  const x = (t) => LEFT + ((t - from) / (now - from)) * (W - LEFT - RIGHT);
  let low = Math.min(0, ...values), high = Math.max(...values, options.minHigh ?? 1);
  if (high === low) high = low + 1;
  high += (high - low) * 0.08;
  const y = (v) => H - BOTTOM - ((v - low) / (high - low)) * (H - TOP - BOTTOM);

  for (const v of [low, (low + high) / 2, high]) {
    svg.appendChild(el("svg:line", { x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v), class: "axis" }));
    svg.appendChild(el("svg:text", { x: LEFT - 4, y: y(v) + 3, "text-anchor": "end", class: "tick" }, niceNumber(v)));
  }
  for (const t of [from, (from + now) / 2, now]) {
    const anchor = t === from ? "start" : t === now ? "end" : "middle";
    svg.appendChild(el("svg:text", { x: x(t), y: H - 6, "text-anchor": anchor, class: "tick" }, clock(t)));
  }
  for (const m of options.markers || []) {
    if (m.t < from) continue;
    const mark = el("svg:line", { x1: x(m.t), x2: x(m.t), y1: TOP, y2: H - BOTTOM, class: `${m.kind}-mark` });
    mark.appendChild(el("svg:title", {}, m.label));
    svg.appendChild(mark);
  }
  if (!values.length) {
    svg.appendChild(el("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "no-data" }, "no data in this range"));
  }
  let legendX = LEFT;
  const legendY = 12;
  series.forEach((s, i) => {
    const colour = s.colour || PALETTE[i % PALETTE.length];
    const inRange = s.points.filter((p) => p[0] >= from);
    if (options.bars) {
      const width = Math.max(1, ((options.intervalS || 1) * 1000 / (now - from)) * (W - LEFT - RIGHT) / series.length);
      const group = el("svg:g", { class: "bars", "data-series": s.name, "data-points": inRange.length, fill: colour });
      for (const [t, v] of inRange) {
        if (!v) continue;
        group.appendChild(el("svg:rect", { x: x(t) + i * width, y: y(v), width, height: y(low) - y(v) }));
      }
      svg.appendChild(group);
    } else {
      const step = options.step;
      let d = "";
      inRange.forEach(([t, v], j) => {
        if (j === 0) d += `M${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        else if (step) d += `H${x(t).toFixed(1)}V${y(v).toFixed(1)}`;
        else d += `L${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      });
      svg.appendChild(el("svg:path", { d, class: "series", stroke: colour, "data-series": s.name, "data-points": inRange.length }));
      if (inRange.length <= DOTS_UP_TO) {
        for (const [t, v] of inRange) svg.appendChild(el("svg:circle", { cx: x(t), cy: y(v), r: 2.5, fill: colour }));
      }
    }
    const label = el("svg:text", { x: legendX, y: legendY, class: "legend", fill: colour }, `■ ${s.name}`);
    svg.appendChild(label);
    legendX += 12 + 7 * (s.name.length + 2);
  });
  const figure = el("figure", { class: "chart" });
  figure.appendChild(el("figcaption", {}, caption));
  figure.appendChild(svg);
  return figure;
}

function replaceChart(id, figure) {
  const old = document.getElementById(id);
  figure.id = id;
  old.replaceWith(figure);
}

function fillTable(id, rows, columns) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: columns.length, class: "empty" }, "nothing in this range"));
    body.appendChild(tr);
  }
  for (const row of rows) {
    const tr = el("tr");
    for (const column of columns) tr.appendChild(el("td", {}, String(column(row) ?? "")));
    body.appendChild(tr);
  }
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path} answered ${response.status}`);
  return body;
}

// Drop the bucket still filling up (it would read low), so lines and tiles end on whole intervals.
function completeBuckets(series, intervalS, nowMs) {
  const cutoff = nowMs - intervalS * 1000 - INGEST_LAG_MS;
  return series.map((s) => ({ ...s, points: s.points.filter((p) => p[0] <= cutoff) }));
}

// The sum of every series' latest value (e.g. readings/s of all kinds now).
function lastValue(series) {
  const latest = series.filter((s) => s.points.length).map((s) => s.points.at(-1)[1]);
  return latest.length ? latest.reduce((a, b) => a + b, 0) : null;
}

function drawOverview(o) {
  document.getElementById("tile-online").textContent = o.online;
  document.getElementById("tile-offline").textContent = o.offline;
  const rates = completeBuckets(o.readings_per_s, o.interval_s, o.now_ms);
  const at = { now: o.now_ms };
  document.getElementById("tile-rate").textContent = niceNumber(lastValue(rates));
  document.getElementById("tile-success").textContent =
    o.command_success_pct === null ? "–" : `${o.command_success_pct}%`;
  const p95 = o.rtt_ms.find((s) => s.name === "p95");
  document.getElementById("tile-rtt").textContent = p95 && p95.points.length ? `${niceNumber(p95.points.at(-1)[1])} ms` : "–";
  fillTable("by-site", o.by_site_protocol, [(r) => r.site, (r) => r.protocol, (r) => r.online, (r) => r.offline]);
  fillTable("outcomes", Object.entries(o.command_outcomes).map(([status, n]) => ({ status, n })), [(r) => r.status, (r) => r.n]);
  replaceChart("chart-rate", chart("Readings per second by kind", "readings/s", rates, at));
  const alerts = o.alerts.map((s) => ({ ...s, colour: SEVERITY_COLOURS[s.name] }));
  replaceChart("chart-alerts", chart("Alerts by severity", "per interval", alerts, { ...at, bars: true, intervalS: o.interval_s }));
  replaceChart("chart-rtt", chart("Command round trip", "ms", o.rtt_ms, at));
}

function drawAlarms(alarms) {
  if (alarms.error) {
    document.getElementById("alarm-count").textContent = `cannot read them: ${alarms.error}`;
    alarms = [];
  } else {
    document.getElementById("alarm-count").textContent = `${alarms.length} active`;
  }
  fillTable("active-alarms", alarms, [
    (a) => clock(a.raised_at), (a) => a.severity, (a) => a.device, (a) => a.type, (a) => a.rule, (a) => a.count,
    (a) => (a.last_value === null ? "" : niceNumber(a.last_value)), (a) => (a.acked ? `yes (${a.acked_by})` : "no"),
    (a) => a.id,
  ]);
}

function drawDevicePicker(devices) {
  const picker = document.getElementById("device-picker");
  const wanted = new Set(devices.map((d) => d.device));
  for (const option of [...picker.options]) if (option.value && !wanted.has(option.value)) option.remove();
  const have = new Set([...picker.options].map((o) => o.value));
  for (const d of devices) {
    if (!have.has(d.device)) picker.appendChild(el("option", { value: d.device }, `${d.device} (${d.kind}, ${d.site})`));
  }
  picker.value = state.device;
}

function drawDevice(d) {
  document.getElementById("device-identity").textContent =
    `${d.kind} at ${d.site} over ${d.protocol}, ${d.state || "no presence yet"}`;
  const markers = [
    ...d.alerts.map((a) => ({ t: a.time, kind: "alert", label: `${a.severity}: ${a.message}` })),
    ...d.commands.map((c) => ({ t: c.time, kind: "command", label: `${c.command} ${c.status}` })),
  ];
  const byUnit = new Map();
  for (const r of d.readings) {
    if (!byUnit.has(r.unit)) byUnit.set(r.unit, []);
    byUnit.get(r.unit).push(r);
  }
  const charts = document.getElementById("device-charts");
  charts.replaceChildren();
  for (const [unit, series] of byUnit) {
    const title = series.map((s) => s.name).join(" vs ");
    charts.appendChild(chart(title, unit, series, { markers, now: d.now_ms }));
  }
  for (const s of d.switches) {
    charts.appendChild(chart(`${s.name} (1 = on)`, "", [s], { markers, now: d.now_ms, step: true, minHigh: 1 }));
  }
  fillTable("device-alerts", d.alerts, [(a) => clock(a.time), (a) => a.severity, (a) => a.rule, (a) => niceNumber(a.value), (a) => a.message]);
  const twin = d.twin || { properties: [] };
  document.getElementById("device-twin-caption").textContent = d.twin
    ? `Twin: ${d.twin.in_sync ? "in sync" : "not in sync"}, version ${d.twin.version}`
    : "Twin: none (python -m hub twin set)";
  const shown = (v) => (v == null ? "-" : JSON.stringify(v));
  fillTable("device-twin", twin.properties, [(p) => p.name, (p) => shown(p.desired), (p) => shown(p.reported), (p) => p.state]);
  fillTable("device-commands", d.commands, [(c) => clock(c.time), (c) => c.command, (c) => c.status, (c) => c.origin, (c) => (c.rtt_ms == null ? "" : niceNumber(c.rtt_ms))]);
}

function saveToHash() {
  const params = new URLSearchParams({ range: state.range });
  if (state.device) params.set("device", state.device);
  history.replaceState(null, "", `#${params}`);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const range = encodeURIComponent(state.range);
    const [overview, devices, alarms] = await Promise.all([
      getJson(`/api/overview?range=${range}`), getJson("/api/devices"),
      getJson("/api/alarms").catch((error) => ({ error: error.message })),  // the rest of the page without them
    ]);
    if (!state.device && devices.length) state.device = devices[0].device;
    drawOverview(overview);
    drawAlarms(alarms);
    drawDevicePicker(devices);
    if (state.device) drawDevice(await getJson(`/api/device?device=${encodeURIComponent(state.device)}&range=${range}`));
    const resolution = RESOLUTION_TEXT[overview.resolution] || overview.resolution;
    status.textContent = `updated ${clock(Date.now())}, every ${POLL_MS / 1000} s, from the ${resolution}`;
    status.classList.remove("error");
    document.body.dataset.loaded = "true";
  } catch (error) {
    status.textContent = `error: ${error.message}`;
    status.classList.add("error");
  }
}

function restart() {
  saveToHash();
  clearInterval(state.timer);
  refresh();
  state.timer = setInterval(refresh, POLL_MS);
}

function start() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("range") in RANGE_S) state.range = params.get("range");
  state.device = params.get("device") || "";
  document.getElementById("range").value = state.range;
  document.getElementById("range").addEventListener("change", (e) => { state.range = e.target.value; restart(); });
  document.getElementById("device-picker").addEventListener("change", (e) => { state.device = e.target.value; restart(); });
  restart();
}

document.addEventListener("DOMContentLoaded", start);

// Overview: the daemon at a glance, sampled from /metrics, the sandbox
// list and /api/v1/nodes every few seconds, drawn as small inline SVG
// charts.

import { api, text } from "./api.js";
import { $, fmtBytes, html, pill, raw, render, when } from "./ui.js";

const EVERY_MS = 3000;
const POINTS = 60;

// Kept across visits, so the charts resume with their recent past.
const series = { running: [], paused: [], create: [], exec: [], up: [], down: [] };
let last = null;

/** Parses the Prometheus text format into name{labels} → value. */
export function parseMetrics(body) {
  const out = [];
  for (const line of body.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const sum = (ms, name, pred = () => true) =>
  ms.filter((m) => m.name === name && pred(m.labels)).reduce((a, m) => a + m.value, 0);

const push = (arr, v) => {
  arr.push(v);
  if (arr.length > POINTS) arr.shift();
};

// A sparkline of one or two series on a shared scale: the first filled,
// the second a plain line. The samples so far span the width, and the
// newest is always at the right edge.
function spark(a, b = null) {
  const all = [...a, ...(b || [])].filter((v) => v != null);
  const max = Math.max(1e-9, ...all);
  const n = Math.max(a.length, b?.length ?? 0, 2);
  const x = (i) => ((i / (n - 1)) * 100).toFixed(2);
  const y = (v) => (30 - (v / max) * 28).toFixed(2);
  const line = (s) => {
    const start = n - s.length;
    return s.map((v, i) => `${i ? "L" : "M"}${x(start + i)} ${y(v ?? 0)}`).join(" ");
  };
  const area = a.length > 1 ? `${line(a)} L${x(n - 1)} 30 L${x(n - a.length)} 30 Z` : "";
  return raw(`<svg class="spark" viewBox="0 0 100 30" preserveAspectRatio="none" role="img" aria-label="recent values">
    ${area ? `<path class="area" d="${area}"/>` : ""}${a.length > 1 ? `<path class="line" d="${line(a)}"/>` : ""}
    ${b && b.length > 1 ? `<path class="line b" d="${line(b)}"/>` : ""}</svg>`);
}

const latest = (s) => (s.length ? s[s.length - 1] : null);
const ms = (v) => (v == null ? "—" : v < 10 ? v.toFixed(1) : Math.round(v));

// Mean latency (ms) of `ops` since the previous sample; null when none ran.
function interval(now, prev, ops) {
  const pick = (m, what) => sum(m, `sandstone_operation_duration_seconds_${what}`, (l) => ops.includes(l.op));
  const n = pick(now, "count") - (prev ? pick(prev, "count") : 0);
  const s = pick(now, "sum") - (prev ? pick(prev, "sum") : 0);
  return n > 0 ? (s / n) * 1000 : null;
}
// The mean since the daemon started, for when nothing ran lately.
function overall(m, ops) {
  const n = sum(m, "sandstone_operation_duration_seconds_count", (l) => ops.includes(l.op));
  return n ? (sum(m, "sandstone_operation_duration_seconds_sum", (l) => ops.includes(l.op)) / n) * 1000 : null;
}

async function countPaused(signal) {
  let n = 0;
  for (let offset = 0; ; offset += 1000) {
    const r = await api("GET", `/api/v1/sandboxes?status=paused&limit=1000&offset=${offset}`, { signal });
    n += r.sandboxes.length;
    if (!r.has_more) return n;
  }
}

export function page(el, _params, signal) {
  render(
    el,
    html`<header class="page-head"><h1>Overview</h1><span class="muted small">sampled every ${EVERY_MS / 1000} s</span></header>
      <p id="ov-error" class="error-text" role="alert" hidden></p>
      <div class="cards" id="cards"></div>
      <h2>Nodes</h2>
      <div class="table-wrap"><table class="grid" id="nodes"><thead><tr><th>Node</th><th>URL</th><th>State</th><th>Running</th><th>Capacity</th><th>Templates</th><th>Lease until</th></tr></thead><tbody></tbody></table></div>`,
  );

  function draw(m) {
    const createAll = overall(m, ["create"]);
    const execAll = overall(m, ["context", "exec"]);
    const up = latest(series.up);
    const down = latest(series.down);
    render(
      $("#cards", el),
      html`<section class="panel chart-card" id="c-running"><div class="muted small">Running</div><div class="big">${latest(series.running) ?? "—"}</div>${spark(series.running)}</section>
      <section class="panel chart-card" id="c-paused"><div class="muted small">Paused</div><div class="big">${latest(series.paused) ?? "—"}</div>${spark(series.paused)}</section>
      <section class="panel chart-card" id="c-create"><div class="muted small">Create latency (mean)</div><div class="big">${ms(latest(series.create) ?? createAll)}<span class="unit">ms</span></div>${spark(series.create)}</section>
      <section class="panel chart-card" id="c-exec"><div class="muted small">Exec latency (mean, contexts and REPL runs)</div><div class="big">${ms(latest(series.exec) ?? execAll)}<span class="unit">ms</span></div>${spark(series.exec)}</section>
      <section class="panel chart-card" id="c-egress"><div class="muted small">Egress traffic · <span class="legend-up">up</span> / <span class="legend-down">down</span></div>
        <div class="big">${up == null ? "—" : fmtBytes(up)}<span class="unit">/s up</span> ${down == null ? "" : fmtBytes(down)}<span class="unit">${down == null ? "" : "/s down"}</span></div>${spark(series.down, series.up)}</section>`,
    );
  }

  async function sample() {
    try {
      const [body, paused, nodes] = await Promise.all([text("/metrics"), countPaused(signal), api("GET", "/api/v1/nodes", { signal })]);
      const m = parseMetrics(body);
      const t = Date.now();
      push(series.running, sum(m, "sandstone_sandboxes", (l) => l.state === "running"));
      push(series.paused, paused);
      push(series.create, interval(m, last?.m, ["create"]));
      push(series.exec, interval(m, last?.m, ["context", "exec"]));
      const bytes = (dir) => sum(m, "sandstone_egress_bytes_total", (l) => l.direction === dir);
      if (last) {
        const secs = (t - last.t) / 1000;
        // A counter that went down restarted (a new daemon): no rate.
        const rate = (dir) => Math.max(0, (bytes(dir) - last.bytes[dir]) / secs);
        push(series.up, rate("up"));
        push(series.down, rate("down"));
      }
      last = { t, m, bytes: { up: bytes("up"), down: bytes("down") } };
      draw(m);
      render(
        $("#nodes tbody", el),
        nodes.nodes.map(
          (n) => html`<tr><td class="mono">${n.id}${n.this_node ? html` <span class="tag">this</span>` : ""}</td><td class="mono small">${n.url}</td>
          <td>${pill(n.draining ? "draining" : n.live ? "live" : "failed")}</td><td class="num">${n.running}</td><td class="num">${n.capacity}</td>
          <td>${(n.templates || []).join(", ")}</td><td>${when(n.lease_expires_at)}</td></tr>`,
        ),
      );
      $("#ov-error", el).hidden = true;
      document.body.dataset.ready = "overview";
    } catch (e) {
      // Shown in place (not as a toast): a failing sample repeats.
      if (signal.aborted) return;
      $("#ov-error", el).textContent = `Cannot sample the daemon: ${e.message}`;
      $("#ov-error", el).hidden = false;
    }
  }
  sample();
  const timer = setInterval(sample, EVERY_MS);
  return () => clearInterval(timer);
}

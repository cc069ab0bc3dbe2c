// The cluster dashboard: polls /api/cluster every second and redraws.
// Plain DOM, no framework, no build step; every string from the server is
// set as text, never as HTML.
"use strict";

const PALETTE = ["#3b82f6", "#10b981", "#f59e0b", "#8b5cf6", "#ef4444",
  "#14b8a6", "#ec4899", "#84cc16", "#6366f1", "#f97316"];
const LOCAL_COLOR = "#475569";

// Recent (server time, tokens generated) samples per model, for a live
// tokens/s over the last few seconds.
const samples = new Map();
const RATE_WINDOW_MS = 5000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "style") e.setAttribute("style", v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n) || 0, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return (u === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[u];
}

function pct(part, whole) {
  return whole > 0 ? Math.max(0, Math.min(100, (100 * part) / whole)) : 0;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return ms + " ms ago";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s ago";
  return Math.round(ms / 60000) + " min ago";
}

// One color per device (endpoint/index), in the order the servers list them.
function deviceColors(status) {
  const colors = new Map();
  let i = 0;
  for (const s of status.servers) {
    for (const d of s.devices) {
      colors.set(s.endpoint + "/" + d.index, PALETTE[i++ % PALETTE.length]);
    }
  }
  return colors;
}

function colorOf(colors, target) {
  if (target === "local") return LOCAL_COLOR;
  if (!colors.has(target)) colors.set(target, PALETTE[colors.size % PALETTE.length]);
  return colors.get(target);
}

function stat(value, label) {
  return el("div", { class: "stat" }, el("b", {}, value), el("span", {}, label));
}

function renderServer(s, colors) {
  const devices = s.devices.map((d) => {
    const key = s.endpoint + "/" + d.index;
    const others = Math.max(0, d.total - d.free_at_load);
    const free = Math.max(0, d.free_at_load - d.planned);
    return el("div", { class: "device", "data-device": key },
      el("div", { class: "label" },
        el("span", {}, el("span", { class: "swatch", style: "background:" + colorOf(colors, key) }),
          "device " + d.index),
        el("span", { class: "muted" }, bytes(d.planned) + " planned · " + bytes(free) + " free of " + bytes(d.total))),
      el("div", { class: "bar", title: "grey: used before loading; color: the models' plan; light: free" },
        el("span", { class: "others", style: "width:" + pct(others, d.total) + "%" }),
        el("span", { class: "planned", style: "width:" + pct(d.planned, d.total) + "%;background:" + colorOf(colors, key) })),
      el("div", { class: "muted", style: "font-size:.75rem" },
        "allocated " + bytes(d.allocated) + " · used by others " + bytes(others)));
  });
  const state = s.ok ? "ok" : "error";
  return el("div", { class: "card server", "data-endpoint": s.endpoint },
    el("h3", {}, el("span", { class: "endpoint" }, s.endpoint), el("span", { class: "badge " + state }, state),
      el("span", { class: "muted" }, "protocol " + s.protocol)),
    el("div", { class: "muted" }, (s.models.length ? "models: " + s.models.join(", ") : "no layers") +
      " · last answered " + ago(s.last_ok_ms_ago)),
    s.error ? el("div", { class: "alert bad" }, s.error) : null,
    devices);
}

function liveRate(m, serverMs) {
  let list = samples.get(m.name) || [];
  if (list.length && m.tokens_generated < list[list.length - 1].tokens) list = [];
  list.push({ t: serverMs, tokens: m.tokens_generated });
  list = list.filter((x) => serverMs - x.t <= RATE_WINDOW_MS);
  samples.set(m.name, list);
  const first = list[0];
  const span = serverMs - first.t;
  return span >= 900 ? (m.tokens_generated - first.tokens) / (span / 1000) : null;
}

function renderLayerMap(m, colors) {
  const cells = [];
  for (let l = 0; l < m.n_layer; l++) {
    const st = m.stages.find((s) => l >= s.first_layer && l < s.end_layer);
    const target = st ? st.target : "?";
    cells.push(el("div", { class: "layer", "data-layer": l, "data-target": target,
      title: "layer " + l + " → " + target, style: "background:" + colorOf(colors, target) }, l));
  }
  const legend = m.stages.map((s) => el("span", { class: "legend-item", "data-target": s.target },
    el("span", { class: "swatch", style: "background:" + colorOf(colors, s.target) }),
    s.target + ": layers " + s.first_layer + "–" + (s.end_layer - 1) + (s.holds_output ? " + output" : "")));
  return [el("div", { class: "layer-map", "aria-label": "layer map" }, cells), el("div", { class: "legend" }, legend)];
}

function renderStages(m) {
  const head = ["stage", "kind", "layers", "planned", "allocated", "steps", "ms / step", "sent", "received"];
  const rows = m.stages.map((s) => el("tr", { class: "stage" },
    el("td", {}, s.target), el("td", { class: "kind" }, s.kind), el("td", {}, s.first_layer + "–" + (s.end_layer - 1)),
    el("td", {}, bytes(s.planned_bytes)), el("td", {}, bytes(s.allocated_bytes)),
    el("td", {}, s.steps), el("td", {}, s.step_ms.toFixed(2)),
    el("td", {}, bytes(s.bytes_sent)), el("td", {}, bytes(s.bytes_received))));
  return el("table", {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
}

function renderModel(m, colors, serverMs) {
  const card = el("div", { class: "card model", "data-model": m.name },
    el("h3", {}, el("span", { class: "model-name" }, m.name), el("span", { class: "badge " + m.state }, m.state)));
  if (m.error) card.append(el("div", { class: "alert bad" }, m.error));
  if (m.loading) {
    const p = m.loading;
    card.append(el("div", { class: "muted" }, "loading: " + bytes(p.bytes_done) + " of " + bytes(p.bytes_total) +
        " (" + bytes(p.bytes_sent) + " sent, " + bytes(p.bytes_cached) + " from caches)"),
      el("div", { class: "bar load" }, el("span", { style: "width:" + pct(p.bytes_done, p.bytes_total) + "%;background:var(--warn)" })));
  }
  if (!m.stages) return card;
  const live = liveRate(m, serverMs);
  card.append(el("div", { class: "stats" },
    stat(live === null ? "–" : live.toFixed(1), "tokens/s live"),
    stat(m.tokens_per_second.toFixed(1), "tokens/s last step"),
    stat(m.queue_depth, "queued"),
    stat(m.active_sequences + " / " + m.parallel, "active sequences"),
    stat(m.requests, "requests"),
    stat(m.tokens_generated, "tokens generated"),
    stat(m.failures + " / " + m.recoveries, "failures / recoveries"),
    stat(m.load_s.toFixed(1) + " s", "load (" + bytes(m.sent_bytes) + " sent, " + bytes(m.cached_bytes) + " cached)")));
  if (m.recovery) {
    card.append(el("div", { class: "alert" }, "recovering for " + (m.recovery.since_ms / 1000).toFixed(1) +
      " s, attempt " + m.recovery.attempts + ": " + m.recovery.error));
  } else if (m.recoveries > 0) {
    card.append(el("div", { class: "muted" }, "last recovery took " + m.last_recovery_s.toFixed(1) + " s"));
  }
  card.append(el("div", { class: "muted" }, m.n_layer + " layers · " + m.strategy + " · context " + m.n_ctx +
    " (" + m.ctx_per_seq + " per sequence)"));
  card.append(...renderLayerMap(m, colors));
  if (m.head_shares.length) {
    card.append(el("div", { class: "muted" }, "output matrix split: " +
      m.head_shares.map((h) => h.target + " rows " + h.first_row + "–" + (h.end_row - 1)).join(", ")));
  }
  card.append(renderStages(m));
  const events = m.events.length
    ? m.events.map((e) => el("li", {}, el("span", { class: "kind " + e.kind }, e.kind), e.message,
      el("span", { class: "muted" }, " · " + ago(e.ms_ago))))
    : [el("li", { class: "muted" }, "no errors")];
  card.append(el("h4", {}, "Recent errors and recoveries"), el("ul", { class: "events" }, events));
  return card;
}

function render(status) {
  const colors = deviceColors(status);
  const devices = status.servers.reduce((n, s) => n + s.devices.length, 0);
  document.getElementById("summary").textContent = status.servers.length + " servers · " + devices +
    " devices · " + status.models.length + " models · shardline " + status.version;
  const servers = document.getElementById("servers");
  servers.replaceChildren(...(status.servers.length
    ? status.servers.map((s) => renderServer(s, colors))
    : [el("p", { class: "muted" }, "No server yet (the model is still loading).")]));
  const models = document.getElementById("models");
  models.replaceChildren(...(status.models.length
    ? status.models.map((m) => renderModel(m, colors, status.time_ms))
    : [el("p", { class: "muted" }, "No model.")]));
}

function setConnection(ok, why) {
  const c = document.getElementById("conn");
  c.textContent = ok ? "live" : "disconnected";
  c.className = "badge " + (ok ? "ok" : "error");
  c.title = why || "";
}

async function tick() {
  try {
    const r = await fetch("/api/cluster", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    setConnection(true);
  } catch (e) {
    setConnection(false, String(e));
  }
}

tick();
setInterval(tick, 1000);

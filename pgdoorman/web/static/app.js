// The pg_doorman console: polls /api/* and builds the page with DOM calls. Server data goes into the
// page through textContent and attribute setters only, never as HTML (the listener's CSP allows no
// inline script either). No dependencies, no build step.
"use strict";

const HISTORY = 300;            // chart points: five minutes at one poll a second
const PAGE_SIZE = 100;          // rows per page of the clients, servers and prepared statements tables
const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";

const state = {
  tab: "overview", role: null, user: "", admin: false,
  history: [],                  // [{t, xact, query, p50, p95, p99, active, waiting}]
  pools: { rows: [], columns: [], sort: "database", desc: false },
  tables: {
    clients: { view: "clients", offset: 0, sort: "", desc: false, filter: "", key: "client_id" },
    servers: { view: "servers", offset: 0, sort: "", desc: false, filter: "", key: "server_id" },
    prepared: { view: "prepared", offset: 0, sort: "", desc: false, filter: "", key: "hash" },
  },
  pending: null,
  topBy: "qps",
  cpu: null,                    // the previous /api/process: {t, total, threads: {tid: total}} for CPU %
  logs: { after: 0, level: "debug", lines: 0 },
};
const LOG_LINES = 2000;         // lines the log tail keeps in the page

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);   // strings become text nodes
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
  n.hidden = !text;
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", cache: "no-store" }, options || {});
  const resp = await fetch(location.origin + path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const err = new Error((body && body.message) || resp.statusText || String(resp.status));
    err.status = resp.status;
    throw err;
  }
  return body;
}

// ------------------------------------------------------------------------------------------ format
function fmtNumber(v, digits) {
  if (v === null || v === undefined || v === "") return "";
  if (typeof v !== "number") return String(v);
  if (!Number.isInteger(v)) return v.toFixed(digits === undefined ? 1 : digits);
  return v.toLocaleString("en-US");
}

function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${s % 60}s`;
}

function fmtMs(us) { return us === null || us === undefined ? "–" : (us / 1000).toFixed(us < 10000 ? 2 : 1) + " ms"; }

// ------------------------------------------------------------------------------------------ overview
function card(label, value, alert, id) {
  const c = el("div", { class: "card" + (alert ? " alert" : ""), "data-card": id },
    el("div", { class: "label", text: label }), el("div", { class: "value", text: value }));
  return c;
}

function renderOverview(o) {
  $("version").textContent = o.version;
  $("uptime").textContent = o.uptime_seconds === null ? "" : "up " + fmtDuration(o.uptime_seconds);
  const lat = o.latency_us || {};
  const q = lat.query || {};
  $("cards").replaceChildren(
    card("Transactions/s", fmtNumber(o.xact_per_second, 1), false, "tps"),
    card("Queries/s", fmtNumber(o.query_per_second, 1), false, "qps"),
    card("Clients active", fmtNumber(o.clients.active), false, "clients-active"),
    card("Clients idle", fmtNumber(o.clients.idle), false, "clients-idle"),
    card("Clients waiting", fmtNumber(o.clients.waiting), o.clients.waiting > 0, "clients-waiting"),
    card("Servers active", fmtNumber(o.servers.active), false, "servers-active"),
    card("Servers idle", fmtNumber(o.servers.idle), false, "servers-idle"),
    card("Longest wait", fmtMs(o.maxwait_us), o.maxwait_us > 1000000, "maxwait"),
    card("Query p99 (1 s)", fmtMs(q.p99), false, "p99"),
    card("Pools", `${o.pools}` + (o.paused_pools ? ` (${o.paused_pools} paused)` : ""), o.paused_pools > 0, "pools"),
  );
  state.history.push({
    t: Date.now(), xact: o.xact_per_second, query: o.query_per_second,
    p50: q.p50 === null || q.p50 === undefined ? null : q.p50 / 1000,
    p95: q.p95 === null || q.p95 === undefined ? null : q.p95 / 1000,
    p99: q.p99 === null || q.p99 === undefined ? null : q.p99 / 1000,
    active: o.clients.active, waiting: o.clients.waiting,
  });
  if (state.history.length > HISTORY) state.history.splice(0, state.history.length - HISTORY);
  drawChart($("chart-rate"), [["xact", "transactions/s"], ["query", "queries/s"]]);
  drawChart($("chart-latency"), [["p50", "p50"], ["p95", "p95"], ["p99", "p99"]]);
  drawChart($("chart-clients"), [["active", "active"], ["waiting", "waiting"]]);
}

// A line chart of state.history, hand-written SVG: x is time (the last HISTORY seconds), y from 0 to
// the largest value shown. Gaps (null) break the line.
function drawChart(box, series) {
  const W = 600, H = 150, L = 40, B = 16, T = 6;
  const now = Date.now(), span = HISTORY * 1000;
  let max = 0;
  for (const p of state.history) for (const [k] of series) if (p[k] !== null && p[k] > max) max = p[k];
  max = max > 0 ? niceCeil(max) : 1;
  const x = (t) => L + (W - L) * (1 - (now - t) / span);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  for (const f of [0, 0.5, 1]) {
    root.append(svg("line", { class: "grid", x1: L, x2: W, y1: y(max * f), y2: y(max * f) }));
    const label = svg("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" });
    label.textContent = fmtNumber(max * f, max * f < 10 ? 2 : 0);
    root.append(label);
  }
  const minutes = svg("text", { x: L, y: H - 3 });
  minutes.textContent = "-5 min";
  const nowLabel = svg("text", { x: W, y: H - 3, "text-anchor": "end" });
  nowLabel.textContent = "now";
  root.append(minutes, nowLabel);
  series.forEach(([k], i) => {
    let d = "", pen = "M";
    for (const p of state.history) {
      if (p[k] === null || p[k] === undefined) { pen = "M"; continue; }
      d += `${pen}${x(p.t).toFixed(1)},${y(p[k]).toFixed(1)} `;
      pen = "L";
    }
    root.append(svg("path", { class: "s" + i, d: d.trim(), "data-series": k }));
  });
  const legend = el("div", { class: "legend" });
  series.forEach(([k, label], i) => {
    const last = state.history.length ? state.history[state.history.length - 1][k] : null;
    legend.append(el("span", { class: "s" + i, text: `${label} ${last === null || last === undefined ? "–" : fmtNumber(last, 2)}` }));
  });
  box.replaceChildren(root, legend);
  box.dataset.points = String(state.history.length);
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// ------------------------------------------------------------------------------------------ tables
const NUMERIC = new Set(["number"]);

function headerRow(columns, sort, desc, onSort, extra, extraAt) {
  const tr = el("tr");
  columns.forEach((c, i) => {
    if (i === extraAt) for (const name of extra) tr.append(el("th", { text: name }));
    const th = el("th", { text: c.name, "data-col": c.name, class: NUMERIC.has(c.type) ? "num" : "" });
    if (c.name === sort) th.classList.add(desc ? "sorted-desc" : "sorted-asc");
    th.addEventListener("click", () => onSort(c.name));
    tr.append(th);
  });
  return el("thead", {}, tr);
}

function cell(c, v) {
  const td = el("td", { "data-col": c.name, class: NUMERIC.has(c.type) ? "num" : (c.name === "query" ? "text" : "") });
  td.textContent = typeof v === "boolean" ? (v ? "yes" : "no") : fmtNumber(v, 2);
  if (c.name === "query" && typeof v === "string") td.title = v;
  return td;
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b));
}

function renderPools() {
  const p = state.pools;
  const cols = p.columns;
  const rows = p.rows.slice().sort((a, b) => (p.desc ? -1 : 1) * compare(a[p.sort], b[p.sort]));
  const onSort = (name) => { p.desc = p.sort === name ? !p.desc : false; p.sort = name; renderPools(); };
  const extra = ["pressure"].concat(state.admin ? ["actions"] : []);
  const body = el("tbody");
  for (const r of rows) {
    const busy = r.sv_active + r.sv_used + r.sv_login;
    const pressure = r.pool_size > 0 ? Math.min(1, busy / r.pool_size) : 0;
    const tr = el("tr", { "data-pool": `${r.database}/${r.user}` });
    if (r.cl_waiting > 0) tr.classList.add("waiting");
    else if (pressure >= 0.9) tr.classList.add("pressure");
    cols.forEach((c, i) => {
      if (i === 2) {   // after database and user: what an operator looks at first
        const fill = el("i");
        fill.style.width = `${Math.round(pressure * 100)}%`;   // CSSOM, not a style attribute (the CSP has no 'unsafe-inline')
        tr.append(el("td", { "data-col": "pressure" }, el("span", { class: "bar" }, fill), `${Math.round(pressure * 100)}%`));
        if (state.admin) {
          const td = el("td", { class: "row-actions" });
          for (const action of [r.paused ? "resume" : "pause", "reconnect"]) {
            td.append(el("button", { type: "button", text: action, "data-action": action, "data-db": r.database,
              onclick: () => confirmAction(action, r.database) }), " ");
          }
          tr.append(td);
        }
      }
      const td = cell(c, r[c.name]);
      if ((c.name === "cl_waiting" && r.cl_waiting > 0) || (c.name === "paused" && r.paused)) td.classList.add("hot");
      tr.append(td);
    });
    body.append(tr);
  }
  $("pools-table").replaceChildren(headerRow(cols, p.sort, p.desc, onSort, extra, 2), body);
}

function renderPaged(name, data) {
  const t = state.tables[name];
  const onSort = (col) => { t.desc = t.sort === col ? !t.desc : false; t.sort = col; t.offset = 0; refresh(); };
  const body = el("tbody");
  for (const r of data.rows) {
    const tr = el("tr", { "data-key": String(r[t.key]) });
    for (const c of data.columns) tr.append(cell(c, r[c.name]));
    body.append(tr);
  }
  $(`${name}-table`).replaceChildren(headerRow(data.columns, t.sort, t.desc, onSort, [], -1), body);
  const total = data.total, first = total ? data.offset + 1 : 0, last = data.offset + data.rows.length;
  const prev = el("button", { type: "button", text: "‹ Prev", "data-page": "prev" });
  const next = el("button", { type: "button", text: "Next ›", "data-page": "next" });
  prev.disabled = data.offset === 0;
  next.disabled = last >= total;
  prev.addEventListener("click", () => { t.offset = Math.max(0, t.offset - PAGE_SIZE); refresh(); });
  next.addEventListener("click", () => { t.offset += PAGE_SIZE; refresh(); });
  $(`${name}-pager`).replaceChildren(prev, el("span", { class: "muted", text: `${first}–${last} of ${total}` }), next);
}

function tableMessage(name, text) {
  $(`${name}-table`).replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "muted", text }))));
  const pager = $(`${name}-pager`);
  if (pager) pager.replaceChildren();
}

// A whole table (no paging): the API's columns and rows, a row's `key` column as its data-key.
function renderTable(id, data, key) {
  const body = el("tbody");
  for (const r of data.rows) {
    const tr = el("tr", { "data-key": String(r[key]) });
    for (const c of data.columns) tr.append(cell(c, r[c.name]));
    body.append(tr);
  }
  if (!data.rows.length) body.append(el("tr", {}, el("td", { class: "muted", text: "none" })));
  $(id).replaceChildren(headerRow(data.columns, "", false, () => {}, [], -1), body);
}

// ------------------------------------------------------------------------------------------ applications
async function refreshApps() {
  try {
    renderTable("apps-table", await api("/api/apps"), "application_name");
    renderTable("top-table", await api(`/api/top/clients?by=${encodeURIComponent(state.topBy)}&n=20`), "client_id");
  } catch (e) {
    if (e.status !== 403) throw e;
    for (const id of ["apps-table", "top-table"]) {
      $(id).replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "muted",
        text: "Only an admin may see this (it holds application names and client addresses). Sign in as admin." }))));
    }
  }
}

// ------------------------------------------------------------------------------------------ process
function pct(now, before, seconds) {
  return before === undefined || seconds <= 0 ? null : Math.max(0, (now - before) / (seconds * 1e6) * 100);
}

async function refreshProcess() {
  const body = await api("/api/process");
  const p = body.data;
  const prev = state.cpu;
  const t = body.taken_at, total = p.cpu_user_us + p.cpu_system_us;
  const seconds = prev ? t - prev.t : 0;
  const cpu = prev ? pct(total, prev.total, seconds) : null;
  const mb = (b) => (b / 1048576).toFixed(1) + " MB";
  $("process-cards").replaceChildren(
    card("PID", String(p.pid), false, "pid"),
    card("Host", p.hostname, false, "host"),
    card("CPU", cpu === null ? "–" : cpu.toFixed(1) + " %", false, "cpu"),
    card("Memory (RSS)", mb(p.rss_bytes), false, "rss"),
    card("Virtual memory", mb(p.vm_size_bytes), false, "vm"),
    card("Threads", fmtNumber(p.threads), false, "threads"),
    card("Open files", `${fmtNumber(p.fd_open)} of ${fmtNumber(p.fd_limit)}`, p.fd_limit > 0 && p.fd_open > 0.9 * p.fd_limit, "fds"),
    card("CPUs", fmtNumber(p.cpu_cores), false, "cores"),
  );
  const threads = {};
  const rows = p.threads_breakdown.map((th) => {
    const sum = th.cpu_user_us + th.cpu_system_us;
    threads[th.tid] = sum;   // tid shown as text below: an id, not a quantity (no thousands separator)
    const share = prev ? pct(sum, prev.threads[th.tid], seconds) : null;
    return { tid: String(th.tid), name: th.name, "cpu_%": share === null ? null : Math.round(share * 10) / 10,
      user_s: th.cpu_user_us / 1e6, system_s: th.cpu_system_us / 1e6 };
  });
  const columns = [{ name: "tid", type: "number" }, { name: "name", type: "string" }, { name: "cpu_%", type: "number" },
    { name: "user_s", type: "number" }, { name: "system_s", type: "number" }];
  renderTable("threads-table", { columns, rows }, "tid");
  if (!prev || t > prev.t) state.cpu = { t, total, threads };
}

// ------------------------------------------------------------------------------------------ events
const EVENTS_SHOWN = 20;

async function refreshEvents() {
  const data = await api(`/api/events?limit=${EVENTS_SHOWN}`);
  const head = el("thead", {}, el("tr", {}, ...["time", "event", "target", "by", "result"].map((t) => el("th", { text: t }))));
  const body = el("tbody");
  for (const e of data.events.slice().reverse()) {
    const tr = el("tr", { "data-seq": String(e.seq), "data-kind": e.kind, class: e.ok ? "" : "failed" },
      el("td", { text: new Date(e.time * 1000).toLocaleString() }),
      el("td", { text: e.kind }), el("td", { text: e.target }), el("td", { text: e.source }),
      el("td", { text: (e.ok ? "ok" : "failed") + (e.detail ? `: ${e.detail}` : "") }));
    body.append(tr);
  }
  if (!data.events.length) body.append(el("tr", {}, el("td", { class: "muted", text: "nothing yet" })));
  $("events-table").replaceChildren(head, body);
}

// ------------------------------------------------------------------------------------------ logs
async function refreshLogs() {
  const l = state.logs;
  const box = $("logs");
  let data;
  try {
    data = await api(`/api/logs?after=${l.after}&limit=500&level=${encodeURIComponent(l.level)}`);
  } catch (e) {
    $("logs-status").textContent = e.status === 403 ? "Only an admin may read the log. Sign in as admin."
      : e.status === 404 ? "The log tap is off (web.log_tap_max_entries: 0)." : `Cannot read the log: ${e.message}`;
    return;
  }
  const follow = $("logs-follow").checked;
  for (const e of data.entries) {
    const t = new Date(e.time * 1000);
    box.append(el("div", { class: "line", "data-seq": String(e.seq) },
      el("span", { class: "ts", text: t.toLocaleTimeString() + "." + String(t.getMilliseconds()).padStart(3, "0") }),
      el("span", { class: `lv lv-${e.level}`, text: e.level.toUpperCase() }),
      el("span", { class: "lg", text: e.logger }),
      el("span", { class: "msg", text: e.message })));
    l.lines++;
  }
  while (l.lines > LOG_LINES && box.firstChild) { box.firstChild.remove(); l.lines--; }
  if (data.dropped > 0 && l.after > 0) box.append(el("div", { class: "line muted", text: `… ${data.dropped} lines no longer held` }));
  l.after = data.last;
  if (follow && data.entries.length) box.scrollTop = box.scrollHeight;
  $("logs-status").textContent = `${l.lines} lines (the pooler keeps the last ${data.capacity})`;
}

// ------------------------------------------------------------------------------------------ commands
function confirmAction(action, db) {
  const what = db ? `database "${db}"` : "every pool";
  const text = {
    reload: "Reload the configuration file? An invalid file is refused and the running configuration kept.",
    pause: `Pause ${what}? New transactions wait until RESUME; running ones finish.`,
    resume: `Resume ${what}? Waiting clients get their servers.`,
    reconnect: `Reconnect ${what}? Idle server connections are closed and new ones opened.`,
  }[action];
  state.pending = { action, db };
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = action.charAt(0).toUpperCase() + action.slice(1);
  $("confirm").showModal();
}

async function runPending() {
  const p = state.pending;
  state.pending = null;
  $("confirm").close();
  if (!p) return;
  const query = p.db ? "?db=" + encodeURIComponent(p.db) : "";
  try {
    const r = await api(`/api/admin/${p.action}${query}`, { method: "POST", headers: { "X-Requested-With": "pg_doorman-console" } });
    notice(`${r.command}${r.database ? " " + r.database : ""}: done`, false);
  } catch (e) {
    notice(`${p.action} failed: ${e.message}`, true);
  }
  refresh();
}

// ------------------------------------------------------------------------------------------ polling
let refreshing = false;

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const overview = await api("/api/overview");
    renderOverview(overview.data);
    if (state.tab === "pools" || state.tab === "overview") {
      const pools = await api("/api/pools");
      state.pools.rows = pools.rows;
      state.pools.columns = pools.columns;
      renderPools();
    }
    if (state.tab === "overview") await refreshEvents();
    if (state.tab === "logs") await refreshLogs();
    if (state.tab === "apps") await refreshApps();
    if (state.tab === "process") await refreshProcess();
    const t = state.tables[state.tab];
    if (t) {
      const params = new URLSearchParams({ offset: String(t.offset), limit: String(PAGE_SIZE) });
      if (t.filter) params.set("filter", t.filter);
      if (t.sort) params.set("sort", (t.desc ? "-" : "") + t.sort);
      try {
        renderPaged(state.tab, await api(`/api/${t.view}?${params}`));
      } catch (e) {
        if (e.status === 403) tableMessage(state.tab, "Only an admin may see this (it holds client addresses or SQL text). Sign in as admin.");
        else throw e;
      }
    }
    if ($("notice").className === "error" && $("notice").dataset.poll) notice("", false);
  } catch (e) {
    notice(e.status === 401 ? "Signed out: reload the page to sign in." : `Cannot reach the pooler: ${e.message}`, true);
    $("notice").dataset.poll = "1";
  } finally {
    refreshing = false;
  }
}

function showTab(name) {
  state.tab = name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "tab-" + name;
  refresh();
}

async function start() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  for (const b of document.querySelectorAll("#admin-actions button")) b.addEventListener("click", () => confirmAction(b.dataset.action, null));
  $("confirm-cancel").addEventListener("click", () => { state.pending = null; $("confirm").close(); });
  $("confirm-ok").addEventListener("click", runPending);
  $("top-by").addEventListener("change", (ev) => { state.topBy = ev.target.value; refresh(); });
  $("logs-level").addEventListener("change", (ev) => {
    state.logs = { after: 0, level: ev.target.value, lines: 0 };
    $("logs").replaceChildren();
    refresh();
  });
  for (const name of Object.keys(state.tables)) {
    let timer = null;
    $(`${name}-filter`).addEventListener("input", (ev) => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.tables[name].filter = ev.target.value; state.tables[name].offset = 0; refresh(); }, 250);
    });
  }
  try {
    const me = await api("/api/whoami");
    state.role = me.role;
    state.user = me.user;
    state.admin = me.admin;
  } catch (e) {
    notice("Not signed in: reload the page to sign in.", true);
    return;
  }
  $("role").textContent = state.user ? `${state.role}: ${state.user}` : state.role;
  $("signin").hidden = state.admin;
  $("admin-actions").hidden = !state.admin;
  await refresh();
  setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);

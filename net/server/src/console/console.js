// The Shardline web console: polls /ui/api/* and draws tables and an SVG chart. No framework,
// no build step, nothing fetched from elsewhere (docs/operations.md, "Web console").
"use strict";

const POLL_MS = 2000;
const HISTORY = 150; // points on the chart (5 minutes at 2 s)
const history = [];
let previous = null;
let me = { admin: false };

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function num(v) { return v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"); }
function bytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, x = v;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return (i === 0 ? x : x.toFixed(1)) + " " + units[i];
}
function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}
// A cell with a stable key (data-k), so tests and people can find a figure.
function cell(key, text, cls) { return el("td", { "data-k": key, class: cls || "num" }, text); }

async function api(path, options) {
  const r = await fetch("/ui/api/" + path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (r.status === 401) { showLogin(); throw new Error("log in first"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function showLogin() {
  $("#login").hidden = false;
  $("#main").hidden = true;
  if (new URLSearchParams(location.search).get("login") === "failed") $("#login-failed").hidden = false;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ----------------------------------------------------------------- overview and chart

function drawChart() {
  const svg = $("#chart");
  const W = 600, H = 160, pad = 4;
  const max = Math.max(1, ...history.map((h) => Math.max(h.produce, h.fetch)));
  const line = (key) => history.map((h, i) => {
    const x = pad + (W - 2 * pad) * (HISTORY - history.length + i) / (HISTORY - 1);
    const y = H - pad - (H - 2 * pad) * h[key] / max;
    return x.toFixed(1) + "," + y.toFixed(1);
  }).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  svg.replaceChildren(
    mk("polyline", { class: "produce", points: line("produce") }),
    mk("polyline", { class: "fetch", points: line("fetch") }),
    mk("text", { x: 6, y: 12 }, "max " + num(Math.round(max)) + "/s"),
  );
}

function overview(o) {
  const now = performance.now();
  if (previous) {
    const dt = (now - previous.at) / 1000;
    const produce = Math.max(0, (o.produced_records - previous.produced) / dt);
    const fetch_ = Math.max(0, (o.fetched_records - previous.fetched) / dt);
    history.push({ produce, fetch: fetch_ });
    if (history.length > HISTORY) history.shift();
    $("#rate-produce").textContent = num(Math.round(produce));
    $("#rate-fetch").textContent = num(Math.round(fetch_));
    drawChart();
  }
  previous = { at: now, produced: o.produced_records, fetched: o.fetched_records };
  document.querySelector('[data-k="overview:produced_records"]').textContent = num(o.produced_records);
  document.querySelector('[data-k="overview:connections_open"]').textContent = num(o.connections_open);
  $("#uptime").textContent = duration(o.uptime_ms);
  $("#memory").textContent = bytes(o.resident_bytes);
  $("#server").textContent = o.server;
  fill($("#shards tbody"), o.shards.map((s) => el("tr", {},
    cell("shard:" + s.shard, s.shard, "text"),
    cell("shard:" + s.shard + ":partitions", num(s.partitions)),
    cell("shard:" + s.shard + ":produced_records", num(s.produced_records)),
    cell("shard:" + s.shard + ":fetched_records", num(s.fetched_records)),
    cell("shard:" + s.shard + ":requests", num(s.requests)),
    cell("shard:" + s.shard + ":errors", num(s.errors)),
    cell("shard:" + s.shard + ":append_durable_us",
      [s.append_durable_us.p50, s.append_durable_us.p99, s.append_durable_us.p999].map((x) => num(Math.round(x))).join(" / ")),
    cell("shard:" + s.shard + ":fsync_p99_us", num(Math.round(s.fsync_us.p99))),
    cell("shard:" + s.shard + ":unflushed_bytes", bytes(s.unflushed_bytes)),
  )));
  fill($("#connections-table tbody"), o.shards.map((s) => el("tr", {},
    cell("conn:" + s.shard, s.shard, "text"),
    cell("conn:" + s.shard + ":open", num(s.connections_open)),
    cell("conn:" + s.shard + ":accepted", num(s.connections_accepted)),
    cell("conn:" + s.shard + ":refused", num(s.connections_refused)),
  )));
}

// ----------------------------------------------------------------- topics, groups, queues

function retention(t) {
  const parts = [];
  if (t.retention_bytes !== null) parts.push(bytes(t.retention_bytes));
  if (t.retention_ms !== null) parts.push(duration(t.retention_ms));
  return parts.length ? parts.join(", ") : "server default";
}

function topics(list) {
  const rows = [];
  for (const t of list) {
    for (const p of t.partition_info) {
      const k = "topic:" + t.name + ":" + p.partition + ":";
      rows.push(el("tr", { "data-topic": t.name },
        el("td", {}, p.partition === 0 ? t.name : "", t.queue && p.partition === 0 ? " " : "",
          t.queue && p.partition === 0 ? el("span", { class: "tag" }, "queue") : ""),
        cell(k + "partition", p.partition),
        cell(k + "shard", p.shard),
        cell(k + "log_start", num(p.log_start)),
        cell(k + "high_watermark", num(p.high_watermark)),
        cell(k + "durable_offset", num(p.durable_offset)),
        cell(k + "size_bytes", bytes(p.size_bytes)),
        cell(k + "segments", num(p.segments)),
        el("td", {}, p.partition === 0 ? retention(t) : ""),
      ));
    }
  }
  fill($("#topics-table tbody"), rows);
}

function groups(list) {
  const rows = [];
  for (const g of list) {
    for (const p of g.partitions) {
      const k = "group:" + g.group + ":" + p.partition + ":";
      rows.push(el("tr", {},
        el("td", {}, p.partition === 0 ? g.group : ""),
        el("td", {}, p.partition === 0 ? g.topic : ""),
        el("td", { class: "num" }, p.partition === 0 ? g.members.length : ""),
        cell(k + "partition", p.partition),
        cell(k + "committed", num(p.committed)),
        cell(k + "high_watermark", num(p.high_watermark)),
        cell(k + "lag", num(p.lag)),
      ));
    }
  }
  fill($("#groups-table tbody"), rows);
}

function redriveButton(name) {
  const b = el("button", { type: "button", class: "danger", "data-redrive": name }, "redrive");
  b.addEventListener("click", async () => {
    if (b.dataset.armed !== "1") {
      b.dataset.armed = "1";
      b.textContent = "confirm redrive";
      return;
    }
    b.disabled = true;
    try {
      const r = await api("redrive?dlq=" + encodeURIComponent(name), {
        method: "POST",
        headers: { "X-Shardline-Console": "1" },
      });
      $("#action-result").textContent = "moved " + r.moved + " message(s) from " + name;
      $("#action-result").dataset.moved = String(r.moved);
    } catch (e) {
      $("#action-result").textContent = "redrive failed: " + e.message;
    }
    b.dataset.armed = "";
    b.disabled = false;
    if (!$("#browse").hidden && $("#browse-topic").textContent === name) browse(name);
    refresh();
  });
  return b;
}

async function browse(name) {
  $("#browse").hidden = false;
  $("#browse-topic").textContent = name;
  try {
    const msgs = await api("messages?topic=" + encodeURIComponent(name) + "&max=100");
    fill($("#browse-table tbody"), msgs.map((m) => el("tr", { "data-msg": m.partition + ":" + m.offset },
      cell("msg:" + m.partition + ":" + m.offset + ":partition", m.partition),
      cell("msg:" + m.partition + ":" + m.offset + ":offset", m.offset),
      cell("msg:" + m.partition + ":" + m.offset + ":attempt", m.attempt),
      el("td", {}, new Date(m.timestamp_ms).toISOString()),
      el("td", {}, m.headers.map((h) => h.key + "=" + h.value).join("\n")),
      el("td", { class: "value" }, m.value + (m.value_bytes > 1024 ? " …" : "")),
    )));
    $("#browse").dataset.count = String(msgs.length);
  } catch (e) {
    $("#action-result").textContent = "browse failed: " + e.message;
  }
}

function queues(list) {
  fill($("#queues-table tbody"), list.map((q) => {
    const k = "queue:" + q.name + ":";
    const actions = el("td", {});
    const b = el("button", { type: "button", "data-browse": q.name }, "browse");
    b.addEventListener("click", () => browse(q.name));
    actions.append(b);
    if (q.is_dead_letter_queue && me.admin) actions.append(" ", redriveButton(q.name));
    return el("tr", { "data-queue": q.name },
      el("td", {}, q.name, q.is_dead_letter_queue ? " " : "",
        q.is_dead_letter_queue ? el("span", { class: "tag dlq" }, "DLQ") : ""),
      cell(k + "depth", num(q.depth)),
      cell(k + "ready", num(q.ready)),
      cell(k + "delayed", num(q.delayed)),
      cell(k + "in_flight", num(q.in_flight)),
      cell(k + "oldest_age", duration(q.oldest_age_ms)),
      el("td", {}, q.priority_levels > 1 ? q.priority_levels + (q.strict_priority ? " strict" : " weighted") : "–"),
      el("td", {}, q.dead_letter_topic || "–"),
      actions,
    );
  }));
}

// ----------------------------------------------------------------- polling

let tick = 0;
async function refresh() {
  try {
    const o = await api("overview");
    overview(o);
    // Tables every other poll: they ask every partition.
    if (tick % 2 === 0 || document.body.dataset.loaded !== "1") {
      const [t, g, q] = await Promise.all([api("topics"), api("groups"), api("queues")]);
      topics(t); groups(g); queues(q);
    }
    tick++;
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "1";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  } catch (e) {
    $("#status").textContent = "error: " + e.message;
  }
}

async function start() {
  $("#browse-close").addEventListener("click", () => { $("#browse").hidden = true; });
  try {
    me = await api("whoami");
  } catch (e) {
    return;
  }
  $("#main").hidden = false;
  $("#who").textContent = me.auth ? (me.principal + (me.admin ? " (admin)" : " (read-only)")) : "auth off";
  $("#logout").hidden = !me.auth;
  await refresh();
  setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);

// The journal dashboard: plain JavaScript, no build step, no third-party code.
// Sessions are polled from GET /sessions; a feed is an EventSource on the SSE routes,
// which resumes by itself with Last-Event-ID after a dropped connection.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 5000;
const feed = { source: null, session: null, branch: "main", paused: false, held: [],
               count: 0, last: 0, dups: 0, gaps: 0 };
const fire = { source: null, paused: false, count: 0 };
let view = "session";
let heads = new Map();     // "session\u0000branch" -> {head, at, rate}
let sessionsTimer = null;

// ----- connection state ------------------------------------------------------------------

function setState(state, text) {
  const el = $("state");
  el.className = "state " + state;
  el.dataset.state = state;
  el.textContent = text || state;
}

function watch(source, label) {
  source.addEventListener("open", () => setState("live", label + ": live"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setState("offline", label + ": closed");
    else setState("reconnecting", label + ": reconnecting…");
  });
  source.addEventListener("stream.status", (e) => {
    const status = JSON.parse(e.data).status;
    setState(status === "live" ? "live" : "reconnecting",
             label + (status === "live" ? ": live" : ": reconnecting…"));
  });
  source.addEventListener("stream.error", (e) => {
    setState("error", label + ": " + JSON.parse(e.data).error);
  });
}

// ----- rendering helpers -----------------------------------------------------------------

function kindClass(type) {
  if (/Error|Failed|Tripped/.test(type)) return "k-error";
  if (/Tool/.test(type)) return "k-tool";
  if (/Message|Text/.test(type)) return "k-msg";
  if (/Phase|Session|Branch/.test(type)) return "k-phase";
  return "";
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

function kindCell(type) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = "kind " + kindClass(type);
  span.textContent = type;
  td.appendChild(span);
  return td;
}

function actorOf(ev) {
  const a = ev.actor || {};
  return a.component ? a.type + ":" + a.component : (a.type || "");
}

function timeOf(ev) { return (ev.timestamp || "").slice(11, 23); }

function details(kind) {
  const rest = Object.assign({}, kind);
  delete rest.type;
  const text = JSON.stringify(rest);
  return text === "{}" ? "" : text;
}

function trim(tbody) {
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(0);
}

function stickToBottom(scroller) { scroller.scrollTop = scroller.scrollHeight; }

// ----- sessions ----------------------------------------------------------------------------

async function api(path, init) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, init || {}));
  if (response.status === 401) { $("auth").hidden = false; throw new Error("sign in first"); }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

async function refreshSessions() {
  let data;
  try {
    data = await api("/sessions");
    $("sessions-note").textContent = "";
  } catch (err) {
    $("sessions-note").textContent = "(" + err.message + ")";
    return;
  }
  const now = performance.now();
  const tbody = $("sessions").tBodies[0];
  const rows = [];
  for (const s of data.sessions) {
    const branches = Object.entries(s.branches).sort((a, b) => (a[0] !== "main") - (b[0] !== "main"));
    for (const [branch, head] of branches) {
      const key = s.session_id + "\u0000" + branch;
      const before = heads.get(key);
      let rate = 0;
      if (before && now > before.at) {
        const instant = (head - before.head) * 1000 / (now - before.at);
        rate = before.rate * 0.5 + instant * 0.5;
      }
      heads.set(key, { head, at: now, rate });
      rows.push({ session: s.session_id, branch, head, rate });
    }
  }
  tbody.textContent = "";
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.session = r.session;
    tr.dataset.branch = r.branch;
    if (r.session === feed.session && r.branch === feed.branch) tr.className = "selected";
    tr.append(cell(r.session), cell(r.branch), cell(String(r.head), "num"),
              cell(r.rate >= 0.05 ? r.rate.toFixed(1) : "·", "num rate"));
    tr.addEventListener("click", () => openSession(r.session, r.branch, r.head));
    tbody.appendChild(tr);
  }
}

// ----- one session's feed ------------------------------------------------------------------

function addFeedRow(ev) {
  if (ev.sequence <= feed.last) feed.dups += 1;
  else if (ev.sequence !== feed.last + 1 && feed.last !== 0) feed.gaps += 1;
  feed.last = Math.max(feed.last, ev.sequence);
  feed.count += 1;
  const tr = document.createElement("tr");
  tr.dataset.seq = String(ev.sequence);
  tr.className = "fresh";
  const type = (ev.kind && ev.kind.type) || "?";
  tr.append(cell(String(ev.sequence), "num"), cell(timeOf(ev), "time"), kindCell(type),
            cell(actorOf(ev)), cell(details(ev.kind || {}), "details"));
  $("feed").tBodies[0].appendChild(tr);
}

function renderCount() {
  const held = feed.held.length ? " · " + feed.held.length + " held while paused" : "";
  $("feed-count").textContent = feed.count + " events · last seq " + feed.last + held;
  window.__feed = { count: feed.count, last: feed.last, dups: feed.dups, gaps: feed.gaps };
}

function openSession(session, branch, head) {
  if (feed.source) feed.source.close();
  feed.session = session; feed.branch = branch || "main";
  feed.count = 0; feed.last = 0; feed.dups = 0; feed.gaps = 0; feed.held = [];
  setPaused(false);
  $("feed").tBodies[0].textContent = "";
  $("feed-title").textContent = session + " / " + feed.branch;
  location.hash = "session=" + encodeURIComponent(session) + "&branch=" + encodeURIComponent(feed.branch);
  const cursor = Math.max(0, (head || 0) - 500);   // a long session: show its last 500
  if (cursor > 0) feed.last = cursor;
  const url = "/sessions/" + encodeURIComponent(session) + "/events/stream?branch=" +
    encodeURIComponent(feed.branch) + "&cursor=" + cursor;
  const source = new EventSource(url, { withCredentials: true });
  feed.source = source;
  watch(source, session);
  source.addEventListener("kernel.event", (e) => {
    const ev = JSON.parse(e.data);
    if (feed.paused) { feed.held.push(ev); renderCount(); return; }
    addFeedRow(ev);
    trim($("feed").tBodies[0]);
    renderCount();
    stickToBottom($("feed-scroll"));
  });
  renderCount();
  for (const tr of $("sessions").tBodies[0].rows) {
    tr.className = tr.dataset.session === session && tr.dataset.branch === feed.branch ? "selected" : "";
  }
}

function setPaused(paused) {
  feed.paused = paused;
  $("pause").textContent = paused ? "Paused" : "Pause";
  $("pause").disabled = paused;
  $("live").disabled = !paused;
}

function jumpToLive() {
  const held = feed.held;
  feed.held = [];
  for (const ev of held) addFeedRow(ev);
  trim($("feed").tBodies[0]);
  setPaused(false);
  renderCount();
  stickToBottom($("feed-scroll"));
}

// ----- the firehose ------------------------------------------------------------------------

function openFirehose() {
  if (fire.source) fire.source.close();
  const prefix = $("prefix").value.trim();
  $("firehose").tBodies[0].textContent = "";
  fire.count = 0;
  const source = new EventSource("/events/stream?prefix=" + encodeURIComponent(prefix),
                                 { withCredentials: true });
  fire.source = source;
  watch(source, "firehose");
  source.addEventListener("kernel.event", (e) => {
    if (fire.paused) return;
    const ev = JSON.parse(e.data);
    fire.count += 1;
    const tr = document.createElement("tr");
    tr.className = "fresh";
    tr.append(cell(ev.session_id + " / " + ev.branch_id), cell(String(ev.sequence), "num"),
              cell(timeOf(ev), "time"), kindCell((ev.kind && ev.kind.type) || "?"), cell(actorOf(ev)));
    const tbody = $("firehose").tBodies[0];
    tbody.appendChild(tr);
    while (tbody.rows.length > 1000) tbody.deleteRow(0);
    $("fire-count").textContent = fire.count + " events";
    stickToBottom(tbody.closest(".scroll"));
  });
}

function show(which) {
  view = which;
  $("tab-session").classList.toggle("active", which === "session");
  $("tab-firehose").classList.toggle("active", which === "firehose");
  $("view-session").hidden = which !== "session";
  $("view-firehose").hidden = which !== "firehose";
  if (which === "firehose") {
    if (feed.source) { feed.source.close(); feed.source = null; }
    openFirehose();
    location.hash = "firehose";
  } else {
    if (fire.source) { fire.source.close(); fire.source = null; }
    if (feed.session) openSession(feed.session, feed.branch, 0);
    else setState("offline", "no feed");
  }
}

// ----- start -------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  try {
    const token = $("auth-token").value.trim();
    const r = await fetch("/auth/cookie", { method: "POST", credentials: "same-origin",
                                            headers: { Authorization: "Bearer " + token } });
    if (!r.ok) throw new Error((await r.json()).error);
    $("auth-token").value = "";
    $("auth").hidden = true;
    start();
  } catch (err) {
    $("auth-error").textContent = err.message;
  }
}

function start() {
  const params = new URLSearchParams(location.hash.slice(1));
  refreshSessions();
  if (sessionsTimer === null) sessionsTimer = setInterval(refreshSessions, 2000);
  if (params.has("firehose")) {
    $("prefix").value = params.get("prefix") || "";
    show("firehose");
  } else if (params.get("session")) {
    openSession(params.get("session"), params.get("branch") || "main", 0);
  }
}

$("pause").addEventListener("click", () => { setPaused(true); renderCount(); });
$("live").addEventListener("click", jumpToLive);
$("tab-session").addEventListener("click", () => show("session"));
$("tab-firehose").addEventListener("click", () => show("firehose"));
$("fire-pause").addEventListener("click", () => {
  fire.paused = !fire.paused;
  $("fire-pause").textContent = fire.paused ? "Resume" : "Pause";
});
$("prefix").addEventListener("change", () => { if (view === "firehose") openFirehose(); });
$("auth-form").addEventListener("submit", signIn);
start();

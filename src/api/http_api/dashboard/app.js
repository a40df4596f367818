// The jobvisor dashboard: the jobs list (/) and one job (/jobs/{id}),
// drawn from the JSON API under /v1 with the caller's bearer token.
// No framework, no build step: the server embeds this file as it is.
"use strict";

const JOB_STATES = ["RUNNING", "PAUSING", "PAUSED", "CANCELLING", "CANCELLED", "SUCCEEDED", "FAILED"];
const ITEM_STATES = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
// The jobs list refreshes itself this often while the tab is visible: one
// ListJobs (one page of job rows, counts included) per tab and period.
const LIST_REFRESH_MS = 5000;
const MAX_EVENTS_SHOWN = 200;

let me = null;

// ---- small helpers ----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "on") for (const [ev, f] of Object.entries(v)) node.addEventListener(ev, f);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function $(sel) { return document.querySelector(sel); }

function num(v) { return Number(v || 0); }

function short(state, prefix) { return (state || "").replace(prefix, ""); }

function token() { return sessionStorage.getItem("jobvisor.token"); }

function canControl() {
  return !!me && (me.permissions.includes("admin") || me.permissions.includes("control"));
}

function showError(message) {
  const p = $("#error");
  p.textContent = message || "";
  p.hidden = !message;
}

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || ("HTTP " + status));
    this.status = status;
    this.code = e.status || String(status);
  }
}

// Calls the JSON API; a 401 asks for a token (and throws).
async function api(method, path, body) {
  const headers = {};
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let json = null;
  try { json = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401) askForToken(json && json.error && json.error.message);
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

function askForToken(why) {
  sessionStorage.removeItem("jobvisor.token");
  $("#token-why").textContent = why || "This server needs a bearer token.";
  $("#token-form").hidden = false;
  $("#app").replaceChildren();
}

function confirmed(what) { return window.confirm(what); }

function progressOf(counts) {
  const c = counts || {};
  const done = num(c.succeeded) + num(c.failed) + num(c.cancelled);
  return { done, total: num(c.total) };
}

function progressBar(counts, id) {
  const p = progressOf(counts);
  return el("progress", { id, max: Math.max(p.total, 1), value: p.done,
    title: `${p.done} of ${p.total} items ended` });
}

function duration(text) {
  // Durations come as "12.5s".
  if (!text) return "—";
  let s = parseFloat(text);
  if (!isFinite(s)) return text;
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60); s = Math.round(s % 60);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function when(ts) { return ts ? new Date(ts).toLocaleString() : "—"; }

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(",");
}

function parseLabels(text) {
  const labels = {};
  for (const part of (text || "").split(",")) {
    const p = part.trim();
    if (!p) continue;
    const i = p.indexOf("=");
    if (i < 1) throw new Error(`a label selector is key=value[,key=value]: ${p}`);
    labels[p.slice(0, i).trim()] = p.slice(i + 1).trim();
  }
  return labels;
}

// The outcome of actions, one line per job.
function showOutcomes(list, outcomes) {
  list.replaceChildren();
  for (const o of outcomes) {
    const ok = !o.errorCode;
    list.append(el("li", { class: ok ? "ok" : "error", "data-job": o.jobId },
      el("a", { href: "/jobs/" + encodeURIComponent(o.jobId), text: o.name || o.jobId }),
      ok ? `: ${short(o.job && o.job.state, "JOB_STATE_")}` : `: ${o.errorCode} — ${o.errorMessage}`));
  }
  if (outcomes.length === 0) list.append(el("li", { text: "no job matched" }));
}

// ---- the jobs list ----

async function listView() {
  const params = new URLSearchParams(location.search);
  const state = params.get("state") || "";
  const labels = params.get("labels") || "";
  const pageToken = params.get("page_token") || "";
  const app = $("#app");

  const stateSelect = el("select", { id: "filter-state", name: "state" },
    el("option", { value: "", text: "any state" }),
    ...JOB_STATES.map((s) => el("option", { value: "JOB_STATE_" + s, text: s.toLowerCase(),
      selected: state === "JOB_STATE_" + s })));
  const labelInput = el("input", { id: "filter-labels", name: "labels", value: labels,
    placeholder: "team=video,env=prod" });
  const filters = el("form", { id: "filters", class: "bar", method: "get", action: "/" },
    el("label", {}, "State ", stateSelect),
    el("label", {}, "Labels ", labelInput),
    el("button", { type: "submit", text: "Filter" }),
    el("button", { type: "button", id: "refresh", text: "Refresh", on: { click: () => load() } }),
    el("span", { class: "hint", text: `Refreshes every ${LIST_REFRESH_MS / 1000} s while visible.` }));

  const tbody = el("tbody", { id: "jobs" });
  const head = el("tr", {},
    canControl() ? el("th", {}, el("input", { type: "checkbox", id: "select-all", title: "select all",
      on: { change: (e) => tbody.querySelectorAll("input.pick").forEach((c) => { c.checked = e.target.checked; }) } })) : null,
    ...["Name", "State", "Progress", "Items", "Labels", "Created"].map((t) => el("th", { text: t })));
  const nav = el("p", { class: "bar", id: "pages" });
  app.replaceChildren(el("h1", { text: "Jobs" }), filters,
    el("table", {}, el("thead", {}, head), tbody), nav);

  const outcomes = el("ul", { id: "outcomes" });
  if (canControl()) app.append(bulkActions(tbody, outcomes, () => load()), outcomes);

  async function load() {
    const q = new URLSearchParams();
    if (state) q.set("states", state);
    try {
      for (const [k, v] of Object.entries(parseLabels(labels))) q.set(`labels[${k}]`, v);
    } catch (e) { showError(e.message); return; }
    q.set("page_size", "50");
    if (pageToken) q.set("page_token", pageToken);
    let answer;
    try { answer = await api("GET", "/v1/jobs?" + q); } catch (e) { if (e.status !== 401) showError(e.message); return; }
    showError("");
    const picked = new Set([...tbody.querySelectorAll("input.pick:checked")].map((c) => c.value));
    tbody.replaceChildren(...(answer.jobs || []).map((job) => {
      const p = progressOf(job.counts);
      return el("tr", { "data-job": job.id },
        canControl() ? el("td", {}, el("input", { type: "checkbox", class: "pick", value: job.id,
          checked: picked.has(job.id) })) : null,
        el("td", {}, el("a", { href: "/jobs/" + encodeURIComponent(job.id), text: job.name || job.id })),
        el("td", { class: "state state-" + job.state, text: short(job.state, "JOB_STATE_") }),
        el("td", {}, progressBar(job.counts)),
        el("td", { class: "num", text: `${p.done} / ${p.total}` }),
        el("td", { class: "labels" }, ...Object.entries(job.labels || {}).map(([k, v]) => el("code", { text: `${k}=${v}` }))),
        el("td", { text: when(job.createTime) }));
    }));
    if (!(answer.jobs || []).length) tbody.append(el("tr", {}, el("td", { colspan: 7, text: "No jobs." })));
    nav.replaceChildren();
    if (pageToken) {
      const first = new URLSearchParams(location.search); first.delete("page_token");
      nav.append(el("a", { href: "/?" + first, text: "« First page" }));
    }
    if (answer.nextPageToken) {
      const next = new URLSearchParams(location.search); next.set("page_token", answer.nextPageToken);
      nav.append(el("a", { id: "next-page", href: "/?" + next, text: "Next page »" }));
    }
  }

  await load();
  setInterval(() => { if (document.visibilityState === "visible") load(); }, LIST_REFRESH_MS);
}

function pauseInputs(prefix) {
  return {
    mode: el("select", { id: prefix + "-mode" },
      el("option", { value: "PAUSE_MODE_GRACEFUL", text: "graceful (let running items finish)" }),
      el("option", { value: "PAUSE_MODE_IMMEDIATE", text: "immediate (interrupt running items)" })),
    reason: el("input", { id: prefix + "-reason", placeholder: "reason" }),
  };
}

function bulkActions(tbody, outcomes, reload) {
  const pause = pauseInputs("bulk");
  const selector = el("input", { id: "bulk-labels", placeholder: "team=video" });
  async function control(action, by) {
    const request = { action: "CONTROL_ACTION_" + action, reason: pause.reason.value };
    if (action === "PAUSE") request.mode = pause.mode.value;
    let what;
    if (by === "selection") {
      request.jobIds = [...tbody.querySelectorAll("input.pick:checked")].map((c) => c.value);
      if (!request.jobIds.length) { showError("select jobs first"); return; }
      what = `${request.jobIds.length} selected job(s)`;
    } else {
      try { request.labels = parseLabels(selector.value); } catch (e) { showError(e.message); return; }
      if (!Object.keys(request.labels).length) { showError("give a label selector"); return; }
      what = `every job labelled ${labelsText(request.labels)}`;
    }
    if (!confirmed(`${action.toLowerCase()} ${what}?`)) return;
    try {
      const answer = await api("POST", "/v1/jobs:control", request);
      showError("");
      showOutcomes(outcomes, (answer.outcomes || []).map((o) => ({ ...o, name: o.job && o.job.name })));
    } catch (e) { showError(e.message); }
    reload();
  }
  const buttons = (by) => ["PAUSE", "RESUME", "CANCEL"].map((a) =>
    el("button", { type: "button", class: "action", id: `${by}-${a.toLowerCase()}`,
      text: a.toLowerCase(), on: { click: () => control(a, by) } }));
  return el("div", {},
    el("fieldset", { class: "bar" }, el("legend", { text: "Selected jobs" }), ...buttons("selection")),
    el("fieldset", { class: "bar" }, el("legend", { text: "Jobs with labels" }), selector, ...buttons("labels")),
    el("fieldset", { class: "bar" }, el("legend", { text: "Pause as" }), pause.mode, pause.reason));
}

// ---- one job ----

async function jobView(id) {
  const app = $("#app");
  let job;
  try { job = await api("GET", "/v1/jobs/" + encodeURIComponent(id)); } catch (e) {
    if (e.status !== 401) showError(e.message);
    return;
  }
  const title = el("h1", {});
  const stateCell = el("span", { id: "state", class: "state" });
  const stats = el("div", { class: "stats", id: "stats" });
  const bar = el("progress", { id: "progress", max: 1, value: 0 });
  const outcome = el("ul", { id: "outcomes" });
  const pauses = el("tbody", { id: "pauses" });
  const events = el("div", { id: "events" });
  const items = el("tbody", { id: "items" });
  let live = { rate: null, eta: null };

  function draw() {
    title.replaceChildren(job.name || job.id, " ", stateCell);
    stateCell.textContent = short(job.state, "JOB_STATE_");
    stateCell.className = "state state-" + job.state;
    const c = job.counts || {};
    const p = progressOf(c);
    bar.max = Math.max(p.total, 1);
    bar.value = p.done;
    bar.title = `${p.done} of ${p.total} items ended`;
    const rate = live.rate !== null ? live.rate : (job.status && job.status.itemsPerSecond);
    const eta = live.eta !== null ? live.eta : (job.status && job.status.eta);
    const stat = (name, value, id) => el("div", { id }, el("b", { text: String(value) }), name);
    stats.replaceChildren(
      stat("total", num(c.total), "count-total"), stat("pending", num(c.pending), "count-pending"),
      stat("running", num(c.running), "count-running"), stat("succeeded", num(c.succeeded), "count-succeeded"),
      stat("failed", num(c.failed), "count-failed"), stat("cancelled", num(c.cancelled), "count-cancelled"),
      stat("items/s", rate ? Number(rate).toFixed(1) : "—", "stat-rate"), stat("ETA", duration(eta), "stat-eta"),
      stat("concurrency", job.concurrency || 0, "stat-concurrency"),
      // The executor's own counters, summed over the succeeded items.
      ...Object.keys(job.counters || {}).sort().map((name) =>
        stat(name, num(job.counters[name]), "counter-" + name)));
    pauses.replaceChildren(...(job.pauses || []).map((r) => el("tr", {},
      el("td", { text: short(r.mode, "PAUSE_MODE_").toLowerCase() }), el("td", { text: r.reason || "" }),
      el("td", { text: r.requestedBy || "" }), el("td", { text: when(r.requestTime) }),
      el("td", { text: when(r.pausedTime) }), el("td", { text: when(r.resumeTime) }))));
    if (!(job.pauses || []).length) pauses.append(el("tr", {}, el("td", { colspan: 6, text: "Never paused." })));
    app.querySelectorAll("button.action").forEach((b) => {
      const need = b.dataset.needs;
      b.disabled = need ? !job[need] : false;
    });
  }

  async function refetch() {
    try { job = await api("GET", "/v1/jobs/" + encodeURIComponent(id)); draw(); } catch (e) { showError(e.message); }
  }

  async function act(what, verb, body) {
    if (!confirmed(`${what} job ${job.name || job.id}?`)) return;
    try {
      job = await api("POST", `/v1/jobs/${encodeURIComponent(id)}:${verb}`, body);
      showError("");
      showOutcomes(outcome, [{ jobId: job.id, name: job.name, job }]);
      draw();
    } catch (e) {
      showOutcomes(outcome, [{ jobId: id, name: job.name, errorCode: e.code, errorMessage: e.message }]);
    }
  }

  const parts = [title,
    el("p", { class: "labels" }, `executor ${job.executor} · `, ...Object.entries(job.labels || {}).map(([k, v]) => el("code", { text: `${k}=${v}` })),
      el("span", { class: "hint", text: ` · id ${job.id} · created ${when(job.createTime)}` })),
    bar, stats];
  if (job.lastError) parts.push(el("p", { class: "error", text: "last error: " + job.lastError }));
  if (canControl()) {
    const pause = pauseInputs("pause");
    const concurrency = el("input", { type: "number", id: "concurrency-input", min: 1, value: job.concurrency || 1 });
    const rate = el("input", { type: "number", id: "rate-input", min: 0, value: 0, title: "items per period; 0: no limit" });
    const period = el("input", { type: "number", id: "period-input", min: 1, value: 1, title: "seconds" });
    const button = (id, text, needs, click) => el("button", { type: "button", class: "action", id, text,
      "data-needs": needs, on: { click } });
    parts.push(el("fieldset", { class: "bar", id: "actions" }, el("legend", { text: "Actions" }),
      button("pause", "Pause", "canPause", () => act("pause", "pause", { mode: pause.mode.value, reason: pause.reason.value })),
      pause.mode, pause.reason,
      button("resume", "Resume", "canResume", () => act("resume", "resume", {})),
      button("cancel", "Cancel", "canCancel", () => act("cancel", "cancel", { reason: pause.reason.value })),
      button("retry", "Retry failed items", null, () => act("retry the failed items of", "retryFailedItems", {}))),
    el("fieldset", { class: "bar" }, el("legend", { text: "Scale and pace" }),
      el("label", {}, "Concurrency ", concurrency),
      button("scale", "Set concurrency", null, () => act(`set concurrency ${concurrency.value} on`, "setConcurrency", { concurrency: Number(concurrency.value) })),
      el("label", {}, "Rate limit ", rate, " items per ", period, " s"),
      button("rate", "Set rate limit", null, () => act(`set rate limit ${rate.value}/${period.value}s on`, "setRateLimit",
        { rateLimit: Number(rate.value), ratePeriod: `${Number(period.value)}s` }))),
    outcome);
  }
  const itemFilter = el("select", { id: "item-state" }, el("option", { value: "", text: "any state" }),
    ...ITEM_STATES.map((s) => el("option", { value: "ITEM_STATE_" + s, text: s.toLowerCase() })));
  const itemsMore = el("button", { type: "button", id: "items-more", text: "More items", hidden: true });
  parts.push(
    el("h2", { text: "Pauses" }),
    el("table", {}, el("thead", {}, el("tr", {}, ...["Mode", "Reason", "By", "Asked", "Paused", "Resumed"].map((t) => el("th", { text: t })))), pauses),
    el("h2", { text: "Events" }), events,
    el("h2", { text: "Items" }),
    el("p", { class: "bar" }, el("label", {}, "State ", itemFilter)),
    el("table", {}, el("thead", {}, el("tr", {}, ...["#", "Payload", "State", "Attempts", "Last error", "Checkpoint", "Updated"].map((t) => el("th", { text: t })))), items),
    itemsMore);
  app.replaceChildren(...parts);
  draw();

  // Items, a page at a time.
  let itemsToken = "";
  async function loadItems(more) {
    const q = new URLSearchParams({ page_size: "100" });
    if (itemFilter.value) q.set("states", itemFilter.value);
    if (more && itemsToken) q.set("page_token", itemsToken);
    let answer;
    try { answer = await api("GET", `/v1/jobs/${encodeURIComponent(id)}/items?${q}`); } catch (e) { showError(e.message); return; }
    const rows = (answer.items || []).map((it) => el("tr", {},
      el("td", { class: "num", text: String(it.index || 0) }), el("td", { text: it.payload || "" }),
      el("td", { text: short(it.state, "ITEM_STATE_").toLowerCase() }), el("td", { class: "num", text: String(it.attempts || 0) }),
      el("td", { class: "error", text: it.skipReason ? "skipped: " + it.skipReason : (it.lastError || "") }),
      el("td", { text: checkpointText(it.checkpoint) }),
      el("td", { text: when(it.updateTime) })));
    if (more) items.append(...rows); else items.replaceChildren(...rows);
    itemsToken = answer.nextPageToken || "";
    itemsMore.hidden = !itemsToken;
  }
  itemFilter.addEventListener("change", () => loadItems(false));
  itemsMore.addEventListener("click", () => loadItems(true));
  loadItems(false);

  // Live: the job's events stream, from a little before now.
  const after = Math.max(0, num(job.lastSequence) - MAX_EVENTS_SHOWN);
  follow(id, after, (event) => {
    if (event.progress) {
      job.counts = event.progress.counts || {};
      job.counters = event.progress.counters || job.counters;
      live = { rate: event.progress.itemsPerSecond || 0, eta: event.progress.eta || null };
      draw();
      return;
    }
    const kind = Object.keys(event).find((k) => k !== "sequence" && k !== "time");
    if (kind === "snapshot") return;
    const line = el("div", { text: `${when(event.time)} #${event.sequence} ${kind} ${JSON.stringify(event[kind])}` });
    events.prepend(line);
    while (events.childElementCount > MAX_EVENTS_SHOWN) events.lastChild.remove();
    if (kind === "stateChanged") {
      job.state = event.stateChanged.to;
      draw();
      refetch(); // the pause history and what may be done now
    } else if (kind === "concurrencyChanged" || kind === "itemsAdded" || kind === "itemsCancelled") {
      refetch();
    }
  });
}

function checkpointText(b64) {
  if (!b64) return "";
  try {
    const text = atob(b64);
    return /^[\x20-\x7e]*$/.test(text) ? text : `${text.length} bytes`;
  } catch (_) { return b64; }
}

// Reads the Server-Sent Events of a job with fetch (which, unlike
// EventSource, sends the Authorization header), resuming from the last
// event id after a dropped connection, until the stream says it ended.
async function follow(id, after, onEvent) {
  let last = String(after);
  for (let attempt = 0; ; attempt++) {
    const headers = { "Accept": "text/event-stream", "Last-Event-ID": last };
    const t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    let ended = false;
    try {
      const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`, { headers });
      if (response.status === 401) { askForToken(); return; }
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        // Not found, forbidden, a bad request: trying again will not help.
        let message = "HTTP " + response.status;
        try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
        showError("events: " + message);
        return;
      }
      if (!response.ok) throw new Error("events: HTTP " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) last = line.slice(3).trim();
            else if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (kind === "end") ended = true;
          else if (kind === "error") showError("events: " + data);
          else if (data) { attempt = 0; onEvent(JSON.parse(data)); }
        }
      }
    } catch (e) {
      showError(String(e.message || e));
    }
    if (ended) return;
    await new Promise((r) => setTimeout(r, Math.min(1000 * 2 ** attempt, 15000)));
  }
}

// ---- start ----

async function start() {
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("jobvisor.token", $("#token-input").value.trim());
    $("#token-input").value = "";
    $("#token-form").hidden = true;
    start2();
  });
  $("#sign-out").addEventListener("click", () => { sessionStorage.removeItem("jobvisor.token"); location.reload(); });
  await start2();
}

async function start2() {
  try { me = await api("GET", "/v1/me"); } catch (e) {
    if (e.status !== 401) showError(e.message);
    return;
  }
  $("#whoami").textContent = me.authenticated
    ? `${me.name} (${me.permissions.join(", ")})` : "authentication off";
  $("#whoami").dataset.permissions = me.permissions.join(",");
  $("#sign-out").hidden = !token();
  const m = location.pathname.match(/^\/jobs\/([^/]+)$/);
  if (m) await jobView(decodeURIComponent(m[1]));
  else await listView();
  document.body.dataset.ready = "1";
}

start();

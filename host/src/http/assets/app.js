// Sluice web UI: one page routed by the URL fragment, over the JSON API.
// Plain JavaScript, no framework, no build step. Live views use server-sent
// events (EventSource). The task graph and the Gantt chart are small SVG
// drawings made here (see ARCHITECTURE.md for why nothing is vendored).
"use strict";

const STATES = ["success", "failed", "running", "queued", "scheduled", "up_for_retry", "upstream_failed", "skipped"];
let session = null; // {role, auth_required, csrf_token}
let live = [];      // EventSources of the current page, closed on navigation

// ---- DOM helpers: every text goes through textContent (no HTML injection).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
function main(...children) {
  const m = document.getElementById("main");
  m.replaceChildren(...children);
}
const short = (d) => (d || "").slice(0, 12);
const when = (t) => (t ? t.replace("T", " ").replace(/\.\d+Z$/, "Z") : "");
const secs = (d) => (d ? (d.secs + d.nanos / 1e9).toFixed(1) + " s" : "");
const badge = (state) => h("span", { class: "badge s-" + state }, state);
const link = (href, text) => h("a", { href }, text);
const runLink = (id) => link("#/run/" + encodeURIComponent(id), id);

// ---- API: JSON in and out; errors carry the server's message.
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && session && session.csrf_token) headers["x-csrf-token"] = session.csrf_token;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const e = new Error((data && data.error) || r.status + " " + r.statusText);
    e.status = r.status;
    throw e;
  }
  return data;
}
const get = (path) => api("GET", path);

function follow(path, handlers) {
  const es = new EventSource(path);
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => fn(ev.data ? JSON.parse(ev.data) : null));
  }
  es.addEventListener("end", () => es.close());
  live.push(es);
  return es;
}

// Calls fn at most once per `ms` (a burst of events → one refresh).
function debounce(fn, ms) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

// ---- Pages
async function dagsPage() {
  const dags = await get("/api/dags");
  const rows = dags.map((d) => {
    const params = h("textarea", { "aria-label": "params of " + d.dag_id, class: "params" }, JSON.stringify(d.params, null, 1));
    const out = h("div", { class: "muted" });
    const trigger = h("button", { class: "primary", "data-dag": d.dag_id, onclick: async () => {
      out.textContent = "";
      let p;
      try { p = JSON.parse(params.value || "{}"); } catch (e) { out.className = "error"; out.textContent = "params: not JSON: " + e.message; return; }
      try {
        const run = await api("POST", "/api/dags/" + encodeURIComponent(d.dag_id) + "/runs", { params: p });
        location.hash = "#/dag/" + encodeURIComponent(d.dag_id);
        out.textContent = "started " + run.run_id;
      } catch (e) { out.className = "error"; out.textContent = e.message; }
    } }, "Trigger");
    const sched = d.schedule
      ? [h("code", {}, d.schedule.cron), " ", h("span", { class: "muted" }, d.schedule.timezone)]
      : h("span", { class: "muted" }, "manual");
    return h("tr", {},
      h("td", {}, link("#/dag/" + encodeURIComponent(d.dag_id), d.dag_id), h("div", { class: "muted" }, d.description)),
      h("td", {}, sched),
      h("td", {}, d.recent_runs.slice().reverse().map((r) =>
        h("a", { href: "#/run/" + encodeURIComponent(r.run_id), title: r.run_id + " " + r.state, class: "sq s-" + r.state }))),
      h("td", {}, d.schedule && d.schedule.next_due ? when(d.schedule.next_due) : h("span", { class: "muted" }, "—")),
      h("td", {}, h("code", {}, short(d.version)), " ", d.label),
      h("td", { class: "trigger" }, h("details", {}, h("summary", {}, "Trigger with params"), params, trigger, out)));
  });
  main(h("h1", {}, "DAGs"),
    dags.length ? h("table", {}, h("tr", {}, ["DAG", "Schedule", "Last runs", "Next run", "Version", ""].map((t) => h("th", {}, t))), rows)
      : h("p", { class: "muted" }, "No DAG is deployed: `sluice deploy <dag>`."));
}

async function dagPage(dagId) {
  const draw = async () => {
    const g = await get("/api/dags/" + encodeURIComponent(dagId) + "/grid?limit=25");
    const runs = g.runs.slice().reverse(); // oldest left, as in Airflow's grid
    const head = h("tr", {}, h("th", {}, "task"), runs.map((r) =>
      h("th", { class: "run", title: r.run.run_id }, link("#/run/" + encodeURIComponent(r.run.run_id), when(r.run.logical_date).slice(0, 16)))));
    const runRow = h("tr", {}, h("td", { class: "task" }, h("b", {}, "run")), runs.map((r) =>
      h("td", {}, h("a", { class: "cell s-" + r.run.state, title: r.run.run_id + " " + r.run.state, href: "#/run/" + encodeURIComponent(r.run.run_id), "data-run": r.run.run_id, "data-state": r.run.state }))));
    const rows = g.tasks.map((t) => h("tr", {}, h("td", { class: "task" }, t), runs.map((r) => {
      const st = r.states[t] || "none";
      return h("td", {}, h("a", { class: "cell s-" + st, title: t + " " + st, "data-task": t, "data-state": st,
        href: "#/task/" + encodeURIComponent(r.run.run_id) + "/" + encodeURIComponent(t) }));
    })));
    grid.replaceChildren(h("table", { class: "grid" }, head, runRow, rows));
  };
  const grid = h("div", { id: "grid" }, "Loading…");
  const versions = await get("/api/dags/" + encodeURIComponent(dagId) + "/versions");
  main(h("h1", {}, "DAG ", dagId),
    h("h2", {}, "Last 25 runs × tasks (live)"), grid,
    h("h2", {}, "Versions"), versionsTable(dagId, versions));
  await draw();
  const redraw = debounce(() => draw().catch(showError), 300);
  follow("/api/events?dag_id=" + encodeURIComponent(dagId), { notice: (n) => {
    if (n.event.kind !== "log") redraw();
  }, missed: redraw });
}

function versionsTable(dagId, versions) {
  const a = h("select", { "aria-label": "from" }, versions.map((v) => h("option", { value: v.digest }, short(v.digest) + " " + v.label)));
  const b = h("select", { "aria-label": "to" }, versions.map((v) => h("option", { value: v.digest }, short(v.digest) + " " + v.label)));
  if (versions.length > 1) a.selectedIndex = 1;
  const out = h("div", {});
  const diff = h("button", { onclick: async () => {
    try {
      const d = await get("/api/dags/" + encodeURIComponent(dagId) + "/versions/" + a.value + "/diff/" + b.value);
      out.replaceChildren(d.components.length
        ? h("table", {}, h("tr", {}, h("th", {}, "task"), h("th", {}, "from"), h("th", {}, "to")),
          d.components.map((c) => h("tr", {}, h("td", {}, c.task_id), h("td", { class: "mono" }, c.from ? short(c.from) : "(new)"), h("td", { class: "mono" }, c.to ? short(c.to) : "(removed)"))))
        : h("p", {}, "No component digest differs."),
        h("p", { class: "muted" }, d.spec_differs ? "Other parts of the spec differ too (params, policies, edges or schedule)." : "Nothing else of the spec differs."));
    } catch (e) { out.replaceChildren(h("p", { class: "error" }, e.message)); }
  } }, "Diff");
  return h("div", {},
    h("table", {}, h("tr", {}, ["digest", "label", "deployed", "tasks", ""].map((t) => h("th", {}, t))),
      versions.map((v) => h("tr", {}, h("td", { class: "mono" }, short(v.digest)), h("td", {}, v.label), h("td", {}, when(v.created_at)), h("td", {}, v.tasks), h("td", {}, v.current ? "current" : "")))),
    h("p", {}, "Component digests that changed: ", a, " → ", b, " ", diff), out);
}

// Layers of a DAG: each task one column right of its deepest upstream task.
function layers(tasks) {
  const depth = {};
  for (const t of tasks) depth[t.task_id] = Math.max(0, ...t.after.map((u) => (depth[u] ?? -1) + 1));
  return depth;
}

function graphSvg(tasks, states) {
  const depth = layers(tasks);
  const rowOf = {}; const perCol = {};
  for (const t of tasks) { const c = depth[t.task_id]; perCol[c] = (perCol[c] || 0); rowOf[t.task_id] = perCol[c]++; }
  const W = 130, H = 34, GX = 50, GY = 16;
  const x = (id) => 10 + depth[id] * (W + GX), y = (id) => 10 + rowOf[id] * (H + GY);
  const cols = Math.max(...Object.values(depth)) + 1, rows = Math.max(...Object.values(perCol));
  const svg = s("svg", { width: 20 + cols * (W + GX), height: 20 + rows * (H + GY), role: "img", "aria-label": "task graph" });
  for (const t of tasks) for (const u of t.after) {
    const x1 = x(u) + W, y1 = y(u) + H / 2, x2 = x(t.task_id), y2 = y(t.task_id) + H / 2;
    svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}` }));
  }
  for (const t of tasks) {
    const st = states[t.task_id] || "none";
    const g = s("g", { class: "node", "data-task": t.task_id, "data-state": st });
    g.append(s("title", {}, t.task_id + ": " + st));
    g.append(s("rect", { x: x(t.task_id), y: y(t.task_id), width: W, height: H, class: "f-" + st }));
    g.append(s("text", { x: x(t.task_id) + 8, y: y(t.task_id) + H / 2 + 4, fill: st === "none" ? "#222" : "#fff" }, t.task_id));
    svg.append(g);
  }
  return svg;
}

function ganttSvg(tries) {
  if (!tries.length) return h("p", { class: "muted" }, "No try has started.");
  const t0 = Math.min(...tries.map((t) => Date.parse(t.started_at)));
  const t1 = Math.max(...tries.map((t) => (t.ended_at ? Date.parse(t.ended_at) : Date.now())));
  const span = Math.max(t1 - t0, 1), L = 150, W = 560, R = 22;
  const svg = s("svg", { width: L + W + 80, height: 24 + tries.length * R, role: "img", "aria-label": "Gantt chart of tries" });
  svg.append(s("line", { class: "axis", x1: L, y1: 4, x2: L, y2: 10 + tries.length * R }));
  svg.append(s("text", { x: L + W, y: 16 + tries.length * R, "text-anchor": "end", fill: "#666" }, ((t1 - t0) / 1000).toFixed(1) + " s"));
  tries.forEach((t, i) => {
    const a = Date.parse(t.started_at), b = t.ended_at ? Date.parse(t.ended_at) : Date.now();
    const x = L + ((a - t0) / span) * W, w = Math.max(((b - a) / span) * W, 2);
    svg.append(s("text", { x: 4, y: 8 + i * R + 12 }, t.task_id + " #" + t.try_number));
    const bar = s("rect", { x, y: 8 + i * R, width: w, height: R - 6, class: "f-" + t.state });
    bar.append(s("title", {}, `${t.task_id} try ${t.try_number}: ${t.state}, ${((b - a) / 1000).toFixed(2)} s`));
    svg.append(bar);
  });
  return svg;
}

async function runPage(runId) {
  const enc = encodeURIComponent(runId);
  const draw = async () => {
    const [d, result] = await Promise.all([get("/api/runs/" + enc), get("/api/runs/" + enc + "/result")]);
    const version = await get("/api/dags/" + encodeURIComponent(d.run.dag_id) + "/versions/" + d.run.version);
    const tries = (await Promise.all(d.tasks.map((t) => get("/api/runs/" + enc + "/tasks/" + encodeURIComponent(t.task_id)))))
      .flatMap((td) => td.tries.map((tr) => Object.assign({ task_id: td.task.task_id }, tr)));
    tries.sort((a, b) => Date.parse(a.started_at) - Date.parse(b.started_at));
    const states = Object.fromEntries(d.tasks.map((t) => [t.task_id, t.state]));
    const st = result.staging;
    const staging = st.status === "deleted" ? "deleted (" + (st.reason || "unknown reason") + ")"
      : st.status === "kept" ? (st.until ? "kept until " + when(st.until) : "in use while the run is active") : "unrecorded";
    const signers = version.signers.length
      ? version.signers.map((k) => h("div", { class: "mono" }, short(k.public_key), " ", k.trusted_as ? "(trusted as " + k.trusted_as + ")" : "(not trusted)"))
      : h("span", { class: "muted" }, "unsigned");
    body.replaceChildren(
      h("table", {},
        h("tr", {}, h("th", {}, "DAG"), h("td", {}, link("#/dag/" + encodeURIComponent(d.run.dag_id), d.run.dag_id))),
        h("tr", {}, h("th", {}, "state"), h("td", { id: "run-state", "data-state": d.run.state }, badge(d.run.state), d.run.error ? h("div", { class: "error" }, d.run.error) : null)),
        h("tr", {}, h("th", {}, "version"), h("td", {}, h("code", {}, d.run.version), " ", d.version_label)),
        h("tr", {}, h("th", {}, "signed by"), h("td", {}, signers)),
        h("tr", {}, h("th", {}, "params"), h("td", {}, h("code", {}, d.run.params))),
        h("tr", {}, h("th", {}, "logical date"), h("td", {}, when(d.run.logical_date))),
        h("tr", {}, h("th", {}, "started / ended"), h("td", {}, when(d.run.started_at), " → ", when(d.run.ended_at), " ", secs(d.run.duration))),
        h("tr", {}, h("th", {}, "staging"), h("td", {}, h("span", { class: "mono" }, d.run.staging_dir), h("div", {}, staging))),
        h("tr", {}, h("th", {}, "sandbox"), h("td", {}, d.sandboxes.join(", ")))),
      h("h2", {}, "Task graph"), graphSvg(version.tasks, states),
      h("h2", {}, "Tasks"),
      h("table", {}, h("tr", {}, ["task", "state", "try", "duration", "error"].map((t) => h("th", {}, t))),
        d.tasks.map((t) => h("tr", {}, h("td", {}, link("#/task/" + enc + "/" + encodeURIComponent(t.task_id), t.task_id)),
          h("td", {}, badge(t.state)), h("td", {}, t.try_number + "/" + t.max_tries), h("td", {}, secs(t.duration)), h("td", { class: "error" }, t.error || "")))),
      h("h2", {}, "Gantt chart of tries"), ganttSvg(tries));
  };
  const body = h("div", {}, "Loading…");
  main(h("h1", {}, "Run ", runId), body);
  await draw();
  const redraw = debounce(() => draw().catch(showError), 300);
  follow("/api/runs/" + enc + "/events", { notice: (n) => { if (n.event.kind !== "log") redraw(); }, missed: redraw });
}

async function taskPage(runId, taskId) {
  const base = "/api/runs/" + encodeURIComponent(runId) + "/tasks/" + encodeURIComponent(taskId);
  const info = h("div", {}, "Loading…");
  const log = h("pre", { class: "log", id: "log" });
  const clearOut = h("div", {});
  const scope = h("select", { "aria-label": "clear scope" }, h("option", { value: "" }, "this task"), h("option", { value: "downstream" }, "and downstream"), h("option", { value: "upstream" }, "and upstream"));
  const clearBody = (dry) => ({ downstream: scope.value === "downstream", upstream: scope.value === "upstream", dry_run: dry });
  const clearBtn = h("button", { onclick: async () => {
    try {
      const dry = await api("POST", base + "/clear", clearBody(true));
      const go = h("button", { class: "primary", onclick: async () => {
        try {
          await api("POST", base + "/clear", clearBody(false));
          clearOut.replaceChildren(h("p", {}, "Cleared; the run carries on."));
          setTimeout(() => route(), 300);
        } catch (e) { clearOut.replaceChildren(h("p", { class: "error" }, e.message)); }
      } }, "Clear these");
      clearOut.replaceChildren(h("p", {}, "Would re-run: ", dry.tasks.join(", "), " "), go);
    } catch (e) { clearOut.replaceChildren(h("p", { class: "error" }, e.message)); }
  } }, "Clear…");
  main(h("h1", {}, "Task ", taskId, " ", h("span", { class: "muted" }, "of run "), runLink(runId)), info,
    h("h2", {}, "Clear"), h("p", {}, scope, " ", clearBtn), clearOut,
    h("h2", {}, "Log (live)"), log);
  const d = await get(base);
  info.replaceChildren(
    h("table", {}, h("tr", {}, h("th", {}, "state"), h("td", { id: "task-state" }, badge(d.task.state))),
      h("tr", {}, h("th", {}, "component"), h("td", { class: "mono" }, d.task.component)),
      h("tr", {}, h("th", {}, "output"), h("td", {}, h("pre", {}, d.task.output ? pretty(d.task.output) : "—"))),
      d.task.error ? h("tr", {}, h("th", {}, "error"), h("td", { class: "error" }, d.task.error)) : null),
    h("h2", {}, "Tries"),
    h("table", {}, h("tr", {}, ["try", "state", "version", "component", "started", "duration", "error"].map((t) => h("th", {}, t))),
      d.tries.map((t) => h("tr", {}, h("td", {}, t.try_number), h("td", {}, badge(t.state)), h("td", { class: "mono" }, short(t.version)),
        h("td", { class: "mono" }, short(t.component)), h("td", {}, when(t.started_at)), h("td", {}, secs(t.duration)), h("td", { class: "error" }, t.error || "")))));
  follow(base + "/logs/live", { line: (l) => {
    log.append(h("span", { class: "lvl-" + l.level }, `${when(l.ts)} [${l.level}] (try ${l.try_number}) ${l.message}\n`));
  }, missed: () => log.append(h("span", { class: "lvl-warn" }, "… some lines were missed; reload to read them\n")) });
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

async function runsPage() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const offset = Number(q.get("offset") || 0);
  const page = await get("/api/runs?limit=50&offset=" + offset + (q.get("state") ? "&state=" + encodeURIComponent(q.get("state")) : ""));
  main(h("h1", {}, "Runs"),
    h("p", {}, "State: ", ["", "queued", "running", "success", "failed"].map((st) => [link("#/runs?state=" + st, st || "all"), " "])),
    h("table", {}, h("tr", {}, ["run", "DAG", "state", "logical date", "duration"].map((t) => h("th", {}, t))),
      page.runs.map((r) => h("tr", {}, h("td", {}, runLink(r.run_id)), h("td", {}, r.dag_id), h("td", {}, badge(r.state)), h("td", {}, when(r.logical_date)), h("td", {}, secs(r.duration))))),
    page.next_offset !== null ? h("p", {}, link("#/runs?offset=" + page.next_offset + (q.get("state") ? "&state=" + q.get("state") : ""), "next page →")) : null);
}

async function stagingPage() {
  const dirs = await get("/api/staging");
  main(h("h1", {}, "Staging directories"),
    h("table", {}, h("tr", {}, ["run", "state", "created", "kept until", "deleted", "why"].map((t) => h("th", {}, t))),
      dirs.map((d) => h("tr", {}, h("td", {}, runLink(d.run_id)), h("td", {}, d.state), h("td", {}, when(d.created_at)), h("td", {}, when(d.kept_until)), h("td", {}, when(d.deleted_at)), h("td", {}, d.delete_reason || "")))));
}

async function trustPage() {
  const t = await get("/api/trust");
  main(h("h1", {}, "Trust"),
    h("p", {}, "Runs ", t.policy.require_signatures ? "require" : "do not require", " a trusted signature."),
    h("p", {}, "Sandbox: ", t.sandbox),
    h("table", {}, h("tr", {}, h("th", {}, "name"), h("th", {}, "public key")),
      t.policy.keys.map((k) => h("tr", {}, h("td", {}, k.name), h("td", { class: "mono" }, k.public_key)))));
}

async function connectionsPage() {
  const out = h("div", { id: "conn-out" });
  const id = h("input", { name: "id", placeholder: "id", "aria-label": "connection id" });
  const uri = h("input", { name: "uri", type: "password", autocomplete: "off", placeholder: "postgresql://user:password@host:5432/db (or leave empty and use the fields)", size: 60, "aria-label": "URI" });
  const kind = h("select", { name: "type", "aria-label": "type" }, h("option", { value: "postgres" }, "postgres"), h("option", { value: "s3" }, "s3"));
  const fields = h("textarea", { name: "fields", placeholder: "host=db.internal\nport=5432\nuser=etl\ndatabase=warehouse", "aria-label": "fields" });
  const secret = h("input", { name: "secret", type: "password", autocomplete: "new-password", placeholder: "password or secret key (write-only)", "aria-label": "secret" });
  const form = h("form", { id: "conn-form", onsubmit: async (ev) => {
    ev.preventDefault();
    let body;
    if (uri.value) body = { id: id.value, uri: uri.value };
    else {
      const f = {};
      for (const line of fields.value.split("\n")) {
        const i = line.indexOf("=");
        if (i > 0) f[line.slice(0, i).trim()] = line.slice(i + 1).trim();
      }
      body = { id: id.value, type: kind.value, fields: f };
      if (secret.value) body.secret = secret.value;
    }
    // Write-only: the secret leaves the page with the request and nowhere else.
    uri.value = ""; secret.value = "";
    try {
      const added = await api("POST", "/api/connections", body);
      const c = added.check;
      out.replaceChildren(h("p", {}, "Added ", added.connection.id, c ? " — " + (c.status === "reachable" ? c.summary : "unreachable: " + c.reason) : ""));
      await drawList();
    } catch (e) { out.replaceChildren(h("p", { class: "error" }, e.message)); }
  } },
    h("p", {}, id, " ", h("button", { class: "primary", type: "submit" }, "Add")),
    h("p", {}, "By URI: ", uri),
    h("p", {}, "Or by type and fields: ", kind), fields, h("p", {}, secret));
  const table = h("div", {});
  const drawList = async () => {
    const rows = await get("/api/connections");
    table.replaceChildren(h("table", { id: "connections" }, h("tr", {}, ["id", "type", "description", ""].map((t) => h("th", {}, t))),
      rows.map((c) => h("tr", { "data-connection": c.id }, h("td", {}, c.id), h("td", {}, c.kind), h("td", {}, c.description), h("td", {},
        h("button", { onclick: async () => {
          try {
            const r = await api("POST", "/api/connections/" + encodeURIComponent(c.id) + "/test");
            out.replaceChildren(h("p", {}, c.id, ": ", r.status === "reachable" ? r.summary : "unreachable: " + r.reason));
          } catch (e) { out.replaceChildren(h("p", { class: "error" }, e.message)); }
        } }, "Test"), " ",
        h("button", { onclick: async () => {
          if (!confirm("Delete connection " + c.id + "?")) return;
          try { await api("DELETE", "/api/connections/" + encodeURIComponent(c.id)); await drawList(); } catch (e) { out.replaceChildren(h("p", { class: "error" }, e.message)); }
        } }, "Delete"))))));
  };
  main(h("h1", {}, "Connections"), table, h("h2", {}, "Add a connection"), form, out);
  await drawList();
}

function loginPage(message) {
  const token = h("input", { type: "password", autocomplete: "off", placeholder: "sluice_…", "aria-label": "API token" });
  const out = h("p", { class: "error" }, message || "");
  const form = h("form", { class: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      session = await api("POST", "/api/session", { token: token.value });
      token.value = "";
      showWho();
      route();
    } catch (e) { out.textContent = e.message; }
  } }, h("h1", {}, "Log in"), h("p", {}, "This server needs an API token (`sluice tokens create --role viewer|operator|admin`)."), token, h("button", { class: "primary", type: "submit" }, "Log in"), out);
  main(form);
}

function showWho() {
  const who = document.getElementById("who");
  if (!session || !session.auth_required) { who.textContent = session ? "local (" + session.role + ")" : ""; return; }
  who.replaceChildren(session.role + " ", h("button", { onclick: async () => {
    await api("DELETE", "/api/session");
    session = null; showWho(); loginPage();
  } }, "Log out"));
}

function showError(e) {
  if (e && e.status === 401) { session = null; showWho(); loginPage(e.message); return; }
  main(h("h1", {}, "Error"), h("p", { class: "error" }, e && e.message ? e.message : String(e)));
}

async function route() {
  for (const es of live) es.close();
  live = [];
  const parts = location.hash.replace(/^#\/?/, "").split("?")[0].split("/").map(decodeURIComponent);
  try {
    if (!session) { session = await get("/api/session"); showWho(); }
    if (parts[0] === "dag") await dagPage(parts[1]);
    else if (parts[0] === "run") await runPage(parts[1]);
    else if (parts[0] === "task") await taskPage(parts[1], parts[2]);
    else if (parts[0] === "runs") await runsPage();
    else if (parts[0] === "staging") await stagingPage();
    else if (parts[0] === "trust") await trustPage();
    else if (parts[0] === "connections") await connectionsPage();
    else await dagsPage();
  } catch (e) { showError(e); }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);

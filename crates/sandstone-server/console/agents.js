// Managed Agents: agents, environments (with their work queues), sessions,
// and one session's live transcript with the user's side of it (messages,
// tool confirmations, interrupts) and its outputs.

import { api, blob, follow, sse } from "./api.js";
import { $, act, clock, confirmDialog, fmtBytes, html, pill, render, saveAs, toast, when } from "./ui.js";

const enc = encodeURIComponent;
const TABS = [
  ["sessions", "Sessions"],
  ["agents", "Agents"],
  ["environments", "Environments"],
];

export function page(el, { tab = "sessions" }, signal) {
  render(
    el,
    html`<header class="page-head"><h1>Managed Agents</h1></header>
      <nav class="tabs">${TABS.map(([t, l]) => html`<a href="#/agents/${t}" class="${t === tab ? "on" : ""}">${l}</a>`)}</nav>
      <section id="tab"></section>`,
  );
  const body = $("#tab", el);
  const show = { sessions, agents, environments }[tab] || sessions;
  return show(body, signal);
}

const items = (r) => r?.data || [];
const textOf = (content) =>
  (Array.isArray(content) ? content : [])
    .map((c) => (c.type === "text" ? c.text : c.type === "image" ? "[image]" : c.type === "document" ? "[document]" : `[${c.type}]`))
    .join("");

// ------------------------------------------------------------- sessions

function sessions(el, signal) {
  render(
    el,
    html`<form id="new-session" class="row wrap panel">
        <label>Agent <select name="agent" required></select></label>
        <label>Environment <select name="environment_id" required></select></label>
        <label class="grow">Title <input name="title" placeholder="optional"></label>
        <button class="btn primary">Start session</button>
      </form>
      <div class="table-wrap"><table class="grid" id="sessions"><thead><tr><th>Session</th><th>Status</th><th>Agent</th><th>Environment</th><th>Tokens in/out</th><th>Created</th></tr></thead><tbody></tbody></table></div>`,
  );
  const form = $("#new-session", el);
  Promise.all([api("GET", "/v1/agents?limit=100", { signal }), api("GET", "/v1/environments?limit=100", { signal })])
    .then(([a, e]) => {
      for (const x of items(a)) form.elements.agent.append(new Option(`${x.name} (${x.model?.id || ""})`, x.id));
      for (const x of items(e)) form.elements.environment_id.append(new Option(`${x.name} (${x.config?.type})`, x.id));
    })
    .catch((e) => toast(`Cannot list agents or environments: ${e.message}`));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const body = { agent: f.get("agent"), environment_id: f.get("environment_id") };
    if (f.get("title")) body.title = f.get("title");
    const s = await act(e.submitter, () => api("POST", "/v1/sessions", { body }));
    if (s) location.hash = `#/sessions/${enc(s.id)}`;
  });
  async function load() {
    try {
      const list = items(await api("GET", "/v1/sessions?limit=100", { signal }));
      render(
        $("#sessions tbody", el),
        list.length
          ? list.map(
              (s) => html`<tr><td><a class="mono" href="#/sessions/${enc(s.id)}">${s.title || s.id}</a></td><td>${pill(s.status)}</td>
              <td>${s.agent?.name || s.agent?.id || ""}</td><td class="mono small">${s.environment_id}</td>
              <td class="num">${s.usage?.input_tokens ?? 0} / ${s.usage?.output_tokens ?? 0}</td><td>${when(s.created_at)}</td></tr>`,
            )
          : html`<tr><td colspan="6" class="empty">No sessions yet</td></tr>`,
      );
    } catch (e) {
      if (!signal.aborted) toast(`Cannot list sessions: ${e.message}`);
    }
  }
  load();
  const timer = setInterval(load, 3000);
  return () => clearInterval(timer);
}

// --------------------------------------------------------------- agents

function agents(el, signal) {
  render(
    el,
    html`<form id="new-agent" class="row wrap panel">
        <label>Name <input name="name" required></label>
        <label>Model <input name="model" required placeholder="claude-sonnet-4-5"></label>
        <label>Tool permission <select name="policy"><option value="always_allow">always allow</option><option value="always_ask">always ask</option></select></label>
        <button class="btn primary">Create agent</button>
      </form>
      <div class="table-wrap"><table class="grid" id="agents"><thead><tr><th>Name</th><th>ID</th><th>Model</th><th>Version</th><th>Tools</th><th>Created</th><th></th></tr></thead><tbody></tbody></table></div>`,
  );
  async function load() {
    try {
      const list = items(await api("GET", "/v1/agents?limit=100", { signal }));
      render(
        $("#agents tbody", el),
        list.length
          ? list.map(
              (a) => html`<tr data-id="${a.id}"><td>${a.name}</td><td class="mono small">${a.id}</td><td>${a.model?.id}</td><td class="num">${a.version}</td>
              <td>${(a.tools || []).map((t) => t.type).join(", ") || "—"}</td><td>${when(a.created_at)}</td>
              <td class="actions"><button class="btn small danger ghost" data-act="archive">Archive</button></td></tr>`,
            )
          : html`<tr><td colspan="7" class="empty">No agents yet</td></tr>`,
      );
    } catch (e) {
      if (!signal.aborted) toast(`Cannot list agents: ${e.message}`);
    }
  }
  $("#new-agent", el).addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = {
      name: f.get("name"),
      model: f.get("model"),
      tools: [{ type: "agent_toolset_20260401", default_config: { permission_policy: { type: f.get("policy") } } }],
    };
    if (await act(e.submitter, () => api("POST", "/v1/agents", { body }), "Agent created")) e.target.reset();
    load();
  });
  $("#agents", el).addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const id = b.closest("tr").dataset.id;
    if (await confirmDialog("Archive agent?", `${id} can no longer start sessions.`, "Archive")) {
      await act(b, () => api("POST", `/v1/agents/${enc(id)}/archive`), "Agent archived");
      load();
    }
  });
  load();
}

// --------------------------------------------------------- environments

function environments(el, signal) {
  render(
    el,
    html`<form id="new-env" class="row wrap panel">
        <label>Name <input name="name" required></label>
        <label>Type <select name="type"><option value="cloud">cloud (sandboxes on this daemon)</option><option value="self_hosted">self-hosted (your workers)</option></select></label>
        <button class="btn primary">Create environment</button>
      </form>
      <div class="table-wrap"><table class="grid" id="envs"><thead><tr><th>Name</th><th>ID</th><th>Type</th><th>Workers polling</th><th>Queued</th><th>Claimed</th><th>Oldest queued</th><th></th></tr></thead><tbody></tbody></table></div>`,
  );
  async function load() {
    try {
      const list = items(await api("GET", "/v1/environments?limit=100", { signal }));
      // Each environment's work queue: its depth and the workers polling it.
      const stats = await Promise.all(list.map((e) => api("GET", `/v1/environments/${enc(e.id)}/work/stats`, { signal }).catch(() => null)));
      render(
        $("#envs tbody", el),
        list.length
          ? list.map((e, i) => {
              const s = stats[i];
              return html`<tr data-id="${e.id}"><td>${e.name}</td><td class="mono small">${e.id}</td><td>${e.config?.type}</td>
                <td class="num">${s?.workers_polling ?? "—"}</td><td class="num">${s?.depth ?? "—"}</td><td class="num">${s?.pending ?? "—"}</td><td>${s?.oldest_queued_at ? when(s.oldest_queued_at) : "—"}</td>
                <td class="actions"><button class="btn small danger ghost" data-act="archive">Archive</button></td></tr>`;
            })
          : html`<tr><td colspan="8" class="empty">No environments yet</td></tr>`,
      );
    } catch (e) {
      if (!signal.aborted) toast(`Cannot list environments: ${e.message}`);
    }
  }
  $("#new-env", el).addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { name: f.get("name"), config: { type: f.get("type") } };
    if (await act(e.submitter, () => api("POST", "/v1/environments", { body }), "Environment created")) e.target.reset();
    load();
  });
  $("#envs", el).addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const id = b.closest("tr").dataset.id;
    if (await confirmDialog("Archive environment?", `${id} takes no new sessions.`, "Archive")) {
      await act(b, () => api("POST", `/v1/environments/${enc(id)}/archive`), "Environment archived");
      load();
    }
  });
  load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}

// ----------------------------------------------------------- transcript

const TOOL_USES = ["agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"];
const TOOL_RESULTS = ["agent.tool_result", "user.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"];
const resultTarget = (ev) => ev.tool_use_id || ev.mcp_tool_use_id || ev.custom_tool_use_id;

export function transcript(el, { id }, signal) {
  const path = `/v1/sessions/${enc(id)}`;
  render(
    el,
    html`<header class="page-head">
        <a class="back" href="#/agents/sessions" aria-label="All sessions">←</a>
        <h1 class="mono">${id}</h1><span id="s-status"></span><span id="s-live" class="muted small"></span>
        <span class="grow"></span>
        <button class="btn" id="s-interrupt">Interrupt</button>
      </header>
      <div class="stats" id="s-stats"></div>
      <div class="transcript" id="events"></div>
      <form class="composer" id="composer">
        <textarea name="text" placeholder="Message the agent…" aria-label="Message" required></textarea>
        <button class="btn primary">Send</button>
      </form>
      <section class="panel" id="outputs"><div class="row"><h2>Outputs</h2><span class="grow"></span><button class="btn small" id="load-outputs">Show outputs</button></div>
        <p class="muted small">Files the agent wrote to /mnt/session/outputs in its sandbox, and files uploaded through the Files API.</p><div id="outputs-body"></div></section>`,
  );
  const box = $("#events", el);
  const seen = new Set();
  const cards = new Map(); // tool use id → its card
  const confirmed = new Set();
  let usage = { input_tokens: 0, output_tokens: 0, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 };

  function stats(s) {
    if (s) usage = s.usage || usage;
    render(
      $("#s-stats", el),
      html`<span>Tokens in <b>${usage.input_tokens}</b></span><span>out <b>${usage.output_tokens}</b></span>
        <span>cache read <b>${usage.cache_read_input_tokens}</b></span>${s ? html`<span>agent <b>${s.agent?.name}</b></span><span>environment <b class="mono">${s.environment_id}</b></span>` : ""}`,
    );
  }
  function status(st) {
    render($("#s-status", el), pill(st));
    $("#s-interrupt", el).disabled = st !== "running";
  }
  async function refreshSession() {
    try {
      const s = await api("GET", path, { signal });
      status(s.status);
      stats(s);
    } catch (e) {
      if (!signal.aborted) toast(`Cannot read the session: ${e.message}`);
    }
  }

  function card(cls, who, ev, body) {
    const div = document.createElement("div");
    div.className = `ev ${cls}`;
    div.dataset.type = ev.type;
    div.dataset.id = ev.id;
    div.innerHTML = String(html`<div class="who">${who}<time>${clock(ev.processed_at)}</time></div>${body}`);
    box.append(div);
    return div;
  }
  const json = (v) => html`<pre>${JSON.stringify(v, null, 2)}</pre>`;

  function add(ev) {
    if (!ev?.id || seen.has(ev.id)) return;
    seen.add(ev.id);
    const t = ev.type;
    if (t === "user.message") card("user", "You", ev, html`<div class="body">${textOf(ev.content)}</div>`);
    else if (t === "agent.message") card("agent", "Agent", ev, html`<div class="body">${textOf(ev.content)}</div>`);
    else if (t === "agent.thinking") card("status", "thinking", ev, "");
    else if (TOOL_USES.includes(t)) {
      const ask = ev.evaluated_permission === "ask" && !confirmed.has(ev.id);
      const c = card(
        `tool${ask ? " ask" : ""}`,
        html`Tool call · ${ev.mcp_server_name ? `${ev.mcp_server_name}/` : ""}${ev.name}${ev.evaluated_permission ? html` ${pill(ev.evaluated_permission)}` : ""}`,
        ev,
        html`${json(ev.input)}<div class="result"></div>${
          ask
            ? html`<div class="row approve"><span class="muted small">This call waits for you.</span><span class="grow"></span>
                <button class="btn small" data-act="deny">Deny</button><button class="btn small primary" data-act="allow">Approve</button></div>`
            : ""
        }`,
      );
      cards.set(ev.id, c);
    } else if (t === "user.tool_confirmation") {
      confirmed.add(ev.tool_use_id);
      const c = cards.get(ev.tool_use_id);
      if (c) {
        c.classList.remove("ask");
        $(".approve", c)?.remove();
      }
      card("status", html`You ${ev.result === "allow" ? "approved" : "denied"} the call${ev.deny_message ? `: ${ev.deny_message}` : ""}`, ev, "");
    } else if (TOOL_RESULTS.includes(t)) {
      const body = html`<div class="who">${ev.is_error ? "Error result" : "Result"}</div><pre>${textOf(ev.content) || JSON.stringify(ev.content)}</pre>`;
      const c = cards.get(resultTarget(ev));
      if (c) {
        const r = $(".result", c);
        r.innerHTML = String(body);
        r.dataset.id = ev.id;
        if (ev.is_error) c.classList.add("error");
      } else card(`tool${ev.is_error ? " error" : ""}`, "Tool result", ev, body);
    } else if (t === "session.error") {
      card("error", "Error", ev, html`<div class="body">${ev.error?.message || JSON.stringify(ev.error)}${ev.error?.type ? html` <span class="muted small">(${ev.error.type})</span>` : ""}</div>`);
    } else if (t.startsWith("session.status_")) {
      const st = t.slice("session.status_".length);
      status(st);
      const why = ev.stop_reason?.type ? ` · ${ev.stop_reason.type.replace(/_/g, " ")}` : "";
      card("status", `${st}${why}`, ev, "");
      if (st === "idle" || st === "terminated") refreshSession();
    } else if (t === "span.model_request_end" && ev.model_usage) {
      for (const k of Object.keys(usage)) usage[k] += ev.model_usage[k] || 0;
      stats();
    } else if (t === "user.interrupt") card("status", "You interrupted", ev, "");
    else if (!t.startsWith("span.")) card("status", t, ev, "");
    // Follow the newest event when the reader is near the bottom.
    if (window.innerHeight + window.scrollY > document.body.scrollHeight - 300) window.scrollTo(0, document.body.scrollHeight);
  }

  const send = (events) => api("POST", `${path}/events`, { body: { events } });
  box.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const call = b.closest(".ev").dataset.id;
    const result = b.dataset.act;
    const confirmation = { type: "user.tool_confirmation", tool_use_id: call, result };
    if (result === "deny") confirmation.deny_message = "Denied from the console";
    const r = await act(b, () => send([confirmation]));
    if (r) r.data?.forEach(add);
  });
  $("#composer", el).addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = e.target.elements.text.value.trim();
    if (!text) return;
    const r = await act(e.submitter, () => send([{ type: "user.message", content: [{ type: "text", text }] }]));
    if (r) {
      e.target.reset();
      r.data?.forEach(add);
    }
  });
  $("#s-interrupt", el).onclick = async (e) => {
    const r = await act(e.target, () => send([{ type: "user.interrupt" }]));
    r?.data?.forEach(add);
  };
  $("#load-outputs", el).onclick = (e) => act(e.target, () => outputs($("#outputs-body", el), id, signal));

  // The live stream first, then the history (once the stream is attached,
  // so nothing falls between the two); events seen twice are dropped by id.
  refreshSession();
  const history = () =>
    api("GET", `${path}/events?limit=1000`, { signal })
      .then((r) => items(r).forEach(add))
      .catch((e) => !signal.aborted && toast(`Cannot read the transcript: ${e.message}`));
  follow(
    () => sse(`${path}/events/stream`, signal, add, history),
    signal,
    (s) => ($("#s-live", el).textContent = s === "live" ? "● live" : s.message),
  );
}

// A session's outputs: the files in its sandbox's outputs directory (the
// sandbox is found by its `cma.session` label) and the Files API's files.
async function outputs(el, sid, signal) {
  const list = await api("GET", `/api/v1/sandboxes?limit=10&metadata.cma.session=${enc(sid)}`, { signal });
  const sb = list.sandboxes[0];
  let entries = [];
  if (sb) {
    try {
      const r = await api("GET", `/api/v1/sandboxes/${enc(sb.id)}/files/list?path=${enc("/mnt/session/outputs")}`, { signal });
      entries = (r.entries || []).filter((f) => f.type !== "dir");
    } catch (e) {
      if (e.status !== 404) throw e;
    }
  }
  const files = items(await api("GET", "/v1/files?limit=100", { signal }));
  render(
    el,
    html`<div class="table-wrap"><table class="grid" id="outputs-table"><thead><tr><th>File</th><th>Where</th><th>Size</th><th></th></tr></thead><tbody>
      ${entries.map((f) => html`<tr><td class="mono">${f.name}</td><td class="small">sandbox ${sb.id}</td><td class="num">${fmtBytes(f.size)}</td>
        <td class="actions"><button class="btn small" data-sb="${sb.id}" data-path="${f.path}" data-name="${f.name}">Download</button></td></tr>`)}
      ${files.map((f) => html`<tr><td class="mono">${f.filename}</td><td class="small">Files API ${f.id}</td><td class="num">${fmtBytes(f.size_bytes)}</td>
        <td class="actions"><button class="btn small" data-file="${f.id}" data-name="${f.filename}">Download</button></td></tr>`)}
      ${entries.length + files.length ? "" : html`<tr><td colspan="4" class="empty">No outputs yet</td></tr>`}
    </tbody></table></div>`,
  );
  $("#outputs-table", el).onclick = (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    const d = b.dataset;
    const url = d.file ? `/v1/files/${enc(d.file)}/content` : `/api/v1/sandboxes/${enc(d.sb)}/files?path=${enc(d.path)}`;
    act(b, async () => saveAs(await blob(url), d.name));
  };
}

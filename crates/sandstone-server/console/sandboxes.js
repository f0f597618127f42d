// Sandboxes: the live list, and one sandbox's page (terminal, files,
// processes and contexts, snapshots and forks, lifecycle actions).

import { api, blob } from "./api.js";
import { $, act, age, choiceDialog, confirmDialog, esc, fmtBytes, html, pill, raw, render, saveAs, toast, when } from "./ui.js";

const POLL_MS = 2000;
const enc = encodeURIComponent;
const base = (id) => `/api/v1/sandboxes/${enc(id)}`;

// ---------------------------------------------------------------- the list

let templates = new Map();

// The list is windowed: only the rows in view, and OVERSCAN more on either
// side, are in the DOM; two spacer rows stand in for the rest. That works
// because every row is exactly ROW_H pixels tall (app.css keeps each cell
// to one line), so a spacer's height is a row count times ROW_H. Keep the
// two in step.
const ROW_H = 40;
const OVERSCAN = 12;

// The list's items carry the claim's `resources` and `network_enabled`;
// absent, the template's defaults apply.
function cpuMem(s, which) {
  const own = s.resources?.[which];
  if (own) return own;
  const t = templates.get(s.template_id)?.spec?.mainContainer?.resources?.[which];
  return t ? raw(`<span class="muted" title="the template's default">${esc(t)}</span>`) : "—";
}

function network(s) {
  const on = s.network_enabled;
  return on === false ? raw('<span class="tag off">off</span>') : on === true ? raw('<span class="tag on">on</span>') : raw('<span class="tag" title="the template\'s default">default</span>');
}

const labels = (m) =>
  Object.entries(m || {}).map(([k, v]) => html`<span class="label" title="${k}=${v}">${k}=${v}</span>`);

// A row's creation time, in its title, as UTC text: `when()` (toLocaleString)
// would add ~30 ms to the first render, Intl's locale data loading on first use.
const utc = (iso) => String(iso ?? "").replace("T", " ").replace(/(\.\d+)?Z$/, " UTC");

function rowCells(s, now) {
  const paused = s.status === "paused";
  return html`<td class="id"><a href="#/sandboxes/${enc(s.id)}">${s.id}</a></td>
    <td>${pill(s.status)}</td>
    <td>${s.template_id}</td>
    <td class="num" title="${utc(s.created_at)}">${age(s.created_at, now)}</td>
    <td class="num">${cpuMem(s, "cpu")}</td>
    <td class="num">${cpuMem(s, "memory")}</td>
    <td class="num">${fmtBytes(s.disk_bytes)}</td>
    <td>${network(s)}</td>
    <td class="labels">${labels(s.metadata)}</td>
    <td class="actions">
      <button class="btn small" data-act="${paused ? "resume" : "pause"}">${paused ? "Resume" : "Pause"}</button>
      <button class="btn small danger ghost" data-act="delete">Delete</button>
    </td>`;
}

function matches(s, f) {
  if (f.status && s.status !== f.status) return false;
  if (f.template && s.template_id !== f.template) return false;
  if (!f.text) return true;
  const hay = `${s.id} ${s.template_id} ${Object.entries(s.metadata || {}).map(([k, v]) => `${k}=${v}`).join(" ")}`;
  return hay.toLowerCase().includes(f.text);
}

/** Every sandbox, a page of 1,000 (the API's largest) at a time. */
async function allSandboxes(signal) {
  const out = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await api("GET", `/api/v1/sandboxes?limit=1000&offset=${offset}`, { signal });
    out.push(...page.sandboxes);
    if (!page.has_more) return out;
  }
}

// The links and buttons of a row, in order (to keep focus across a rewrite
// and to move it between rows).
const controls = (tr) => [...tr.querySelectorAll("a, button")];

export function list(el, _params, signal) {
  render(
    el,
    html`<header class="page-head">
        <h1>Sandboxes</h1>
        <span id="sb-count" class="muted" aria-live="polite"></span>
        <span class="grow"></span>
        <button class="btn primary" id="sb-new">New sandbox</button>
      </header>
      <div class="filters">
        <label>Status <select id="f-status">
          <option value="">any</option><option>running</option><option>paused</option>
          <option>starting</option><option>failed</option><option>stopped</option></select></label>
        <label>Template <select id="f-template"><option value="">any</option></select></label>
        <label class="grow">Search <input id="f-text" type="search" placeholder="id, template, label=value"></label>
      </div>
      <p id="sb-error" class="error-text" role="alert" hidden></p>
      <div class="table-wrap">
        <table class="grid" id="sb-table" aria-rowcount="1">
          <thead><tr aria-rowindex="1"><th>ID</th><th>Status</th><th>Template</th><th>Age</th><th>CPU</th><th>Memory</th><th>Disk</th><th>Network</th><th>Labels</th><th><span class="sr-only">Actions</span></th></tr></thead>
          <tbody class="pad" aria-hidden="true"><tr><td colspan="10"></td></tr></tbody>
          <tbody id="sb-rows"></tbody>
          <tbody class="pad" aria-hidden="true"><tr><td colspan="10"></td></tr></tbody>
        </table>
      </div>
      <p id="sb-empty" class="empty" hidden>No sandboxes match.</p>`,
  );
  const table = $("#sb-table", el);
  const tbody = $("#sb-rows", el);
  const [padTop, padBottom] = [...el.querySelectorAll("tbody.pad td")];
  const filter = { status: "", template: "", text: "" };
  let all = [];
  let shown = []; // `all` through the filters: what the list holds
  let first = 0; // shown[first, last) are in the DOM
  let last = 0;
  const rows = new Map(); // id → {tr, sig}, for the rows in the DOM only

  function applyFilter() {
    shown = all.filter((s) => matches(s, filter));
    $("#sb-count", el).textContent = `${shown.length} of ${all.length}`;
    $("#sb-empty", el).hidden = shown.length > 0;
    table.setAttribute("aria-rowcount", String(shown.length + 1));
  }

  // The rows the viewport shows, plus the overscan: where row 0 would be
  // is the top spacer's top, whatever scrolls (the page, as a rule).
  function wanted() {
    const top = padTop.getBoundingClientRect().top;
    const from = Math.floor(-top / ROW_H) - OVERSCAN;
    const to = Math.ceil((innerHeight - top) / ROW_H) + OVERSCAN;
    return [Math.max(0, Math.min(from, shown.length)), Math.max(0, Math.min(to, shown.length))];
  }

  // Puts shown[first, last) in the DOM: rows already there are kept (and
  // rewritten only if their markup changed, so a refresh touches only the
  // rows whose text changed), rows scrolled away are dropped.
  function paint() {
    [first, last] = wanted();
    const now = Date.now();
    const want = shown.slice(first, last);
    const keep = new Set(want.map((s) => s.id));
    for (const [id, r] of rows) {
      if (!keep.has(id)) {
        r.tr.remove();
        rows.delete(id);
      }
    }
    let at = tbody.firstChild;
    want.forEach((s, i) => {
      // A row's signature is the markup it was built from.
      const cells = String(rowCells(s, now));
      let r = rows.get(s.id);
      if (!r) {
        const tr = document.createElement("tr");
        tr.dataset.id = s.id;
        tr.innerHTML = cells;
        r = { tr, sig: cells };
        rows.set(s.id, r);
      } else if (r.sig !== cells) {
        // Rewritten in place; a focused control keeps the focus.
        const had = r.tr.contains(document.activeElement) ? controls(r.tr).indexOf(document.activeElement) : -1;
        r.tr.innerHTML = cells;
        r.sig = cells;
        if (had >= 0) controls(r.tr)[had]?.focus({ preventScroll: true });
      }
      const index = String(first + i + 2); // 1-based, after the header row
      if (r.tr.getAttribute("aria-rowindex") !== index) r.tr.setAttribute("aria-rowindex", index);
      if (r.tr === at) at = at.nextSibling;
      else tbody.insertBefore(r.tr, at);
    });
    padTop.style.height = `${first * ROW_H}px`;
    padBottom.style.height = `${(shown.length - last) * ROW_H}px`;
  }

  // Scrolling and resizing repaint at most once a frame, and only when the
  // window of rows moved.
  let queued = false;
  const onScroll = () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      if (signal.aborted || !shown.length) return;
      const [f, l] = wanted();
      if (f !== first || l !== last) paint();
    });
  };
  addEventListener("scroll", onScroll, { passive: true });
  addEventListener("resize", onScroll, { passive: true });

  async function refresh() {
    try {
      all = await allSandboxes(signal);
      $("#sb-error", el).hidden = true;
      // User timing entries per render, for scripts/bench-console.sh: the
      // DOM work, and until the frame that shows it has been painted (the
      // second animation frame runs after the first one's paint).
      const start = performance.now();
      applyFilter();
      paint();
      onScroll();
      document.body.dataset.ready = "sandboxes";
      performance.measure("sandboxes:draw", { start });
      requestAnimationFrame(() => requestAnimationFrame(() => performance.measure("sandboxes:painted", { start })));
    } catch (e) {
      if (signal.aborted) return;
      const err = $("#sb-error", el);
      err.textContent = `Cannot list sandboxes: ${e.message}`;
      err.hidden = false;
    }
  }

  api("GET", "/api/v1/templates", { signal })
    .then((t) => {
      templates = new Map(t.templates.map((x) => [x.template_id, x]));
      const sel = $("#f-template", el);
      for (const id of templates.keys()) sel.append(new Option(id, id));
      if (shown.length) paint();
    })
    .catch((e) => toast(`Cannot list templates: ${e.message}`));

  // Filters apply to every sandbox; the list starts again from its top.
  $(".filters", el).addEventListener("input", () => {
    filter.status = $("#f-status", el).value;
    filter.template = $("#f-template", el).value;
    filter.text = $("#f-text", el).value.trim().toLowerCase();
    applyFilter();
    paint();
    // A shorter list may have clamped the page's scroll: check again once
    // laid out.
    onScroll();
  });

  // A click on a row opens the sandbox; its buttons act on it.
  tbody.addEventListener("click", async (e) => {
    const tr = e.target.closest("tr[data-id]");
    if (!tr) return;
    const id = tr.dataset.id;
    const b = e.target.closest("button[data-act]");
    if (b) {
      await lifecycle(b, id, b.dataset.act);
      refresh();
    } else if (!e.target.closest("a") && !getSelection().toString()) {
      location.hash = `#/sandboxes/${enc(id)}`;
    }
  });

  // Up and down arrows move the focus to the same control of the row above
  // or below, bringing rows not yet in the DOM in.
  tbody.addEventListener("keydown", (e) => {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    const tr = e.target.closest("tr[data-id]");
    if (!tr) return;
    const i = Number(tr.getAttribute("aria-rowindex")) - 2 + (e.key === "ArrowDown" ? 1 : -1);
    if (i < 0 || i >= shown.length) return;
    e.preventDefault();
    const col = controls(tr).indexOf(e.target);
    let next = rows.get(shown[i].id);
    if (!next) {
      scrollBy(0, e.key === "ArrowDown" ? ROW_H : -ROW_H);
      paint();
      next = rows.get(shown[i].id);
    }
    if (next) {
      controls(next.tr)[Math.max(0, col)]?.focus();
      next.tr.scrollIntoView({ block: "nearest" });
    }
  });
  $("#sb-new", el).onclick = () => createDialog();

  refresh();
  const timer = setInterval(refresh, POLL_MS);
  return () => {
    clearInterval(timer);
    removeEventListener("scroll", onScroll);
    removeEventListener("resize", onScroll);
  };
}

/** Pause, resume or delete (asked first) sandbox `id`. */
async function lifecycle(button, id, verb) {
  if (verb === "delete") {
    const ok = await confirmDialog("Delete sandbox?", `${id} and its files are removed for good.`, "Delete");
    if (!ok) return false;
    return act(button, () => api("DELETE", base(id)), `Deleted ${id}`).then((r) => r !== undefined);
  }
  let body = {};
  if (verb === "pause") {
    const how = await pauseDialog(id);
    if (!how) return false;
    if (how === "memory") body = { memory: true };
  }
  return act(button, () => api("POST", `${base(id)}/${verb}`, { body }), `${verb === "pause" ? "Paused" : "Resumed"} ${id}`);
}

/** Asks how to pause `id`: "memory" keeps its processes where they are,
 * "files" ends them; null is no pause. */
function pauseDialog(id) {
  return choiceDialog(
    "Pause sandbox?",
    `Its processes in ${id} end; its files stay. Or keep the processes with their memory, frozen where they are: resuming continues them (the memory stays in use on this node).`,
    [
      { value: "memory", label: "Pause, keep memory" },
      { value: "files", label: "Pause", cls: "primary" },
    ],
  );
}

function createDialog() {
  const dlg = document.createElement("dialog");
  dlg.className = "modal";
  render(
    dlg,
    html`<form method="dialog" id="new-form">
      <h2>New sandbox</h2>
      <div class="form-grid">
        <label>Template <select name="template">${[...templates.keys()].map((t) => html`<option>${t}</option>`)}</select></label>
        <label>Memory <input name="memory" placeholder="e.g. 512Mi"></label>
        <label>CPU <input name="cpu" placeholder="e.g. 1 or 500m"></label>
        <label>Network <select name="net"><option value="">default</option><option value="on">on</option><option value="off">off</option></select></label>
        <label class="wide">Labels <input name="labels" placeholder="team=red, task=42"></label>
      </div>
      <p class="error-text" role="alert" hidden></p>
      <div class="row end"><button value="cancel" class="btn" formnovalidate>Cancel</button><button value="create" class="btn primary">Create</button></div>
    </form>`,
  );
  document.body.append(dlg);
  dlg.showModal();
  const form = $("form", dlg);
  form.addEventListener("submit", async (e) => {
    if (e.submitter?.value !== "create") return;
    e.preventDefault();
    const f = new FormData(form);
    const config = {};
    const resources = {};
    if (f.get("memory")) resources.memory = f.get("memory");
    if (f.get("cpu")) resources.cpu = f.get("cpu");
    if (Object.keys(resources).length) config.resources = resources;
    if (f.get("net")) config.network_enabled = f.get("net") === "on";
    const metadata = {};
    for (const pair of String(f.get("labels")).split(",").map((p) => p.trim()).filter(Boolean)) {
      const [k, ...v] = pair.split("=");
      metadata[k.trim()] = v.join("=").trim();
    }
    if (Object.keys(metadata).length) config.metadata = metadata;
    const err = $(".error-text", dlg);
    try {
      e.submitter.disabled = true;
      const r = await api("POST", "/api/v1/sandboxes", { body: { template: f.get("template"), config } });
      dlg.close();
      toast(`Created ${r.sandbox_id}`, "notice");
    } catch (x) {
      err.textContent = x.message;
      err.hidden = false;
      e.submitter.disabled = false;
    }
  });
  dlg.addEventListener("close", () => dlg.remove());
}

// -------------------------------------------------------- one sandbox's page

const TABS = [
  ["terminal", "Terminal"],
  ["files", "Files"],
  ["processes", "Processes"],
  ["snapshots", "Snapshots & forks"],
  ["config", "Config"],
];

export function detail(el, { id, tab = "terminal" }, signal) {
  render(
    el,
    html`<header class="page-head">
        <a class="back" href="#/sandboxes" aria-label="All sandboxes">←</a>
        <h1 class="mono">${id}</h1>
        <span id="sb-status"></span>
        <span class="grow"></span>
        <div class="row wrap" id="sb-actions">
          <a class="btn" href="#/network/${enc(id)}">Network</a>
          <button class="btn" data-act="pause">Pause</button>
          <button class="btn" data-act="resume">Resume</button>
          <button class="btn danger" data-act="delete">Delete</button>
        </div>
      </header>
      <p id="sb-meta" class="muted small"></p>
      <nav class="tabs" aria-label="Sandbox">
        ${TABS.map(([t, label]) => html`<a href="#/sandboxes/${enc(id)}/${t}" class="${t === tab ? "on" : ""}">${label}</a>`)}
      </nav>
      <section id="tab" class="tab-body"></section>`,
  );
  let sandbox = null;
  async function refresh() {
    try {
      sandbox = await api("GET", base(id), { signal });
      render($("#sb-status", el), pill(sandbox.status));
      $("#sb-meta", el).textContent = `template ${sandbox.template_id} · created ${when(sandbox.created_at)} · generation ${sandbox.runtime_generation}`;
      const paused = sandbox.status === "paused";
      $('[data-act="pause"]', el).hidden = paused;
      $('[data-act="resume"]', el).hidden = !paused;
    } catch (e) {
      if (!signal.aborted) render($("#sb-status", el), html`<span class="error-text">${e.message}</span>`);
    }
  }
  $("#sb-actions", el).addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const done = await lifecycle(b, id, b.dataset.act);
    if (b.dataset.act === "delete" && done) location.hash = "#/sandboxes";
    else refresh();
  });
  refresh();
  const timer = setInterval(refresh, 5000);
  const body = $("#tab", el);
  let stopTab = null;
  const tabs = { terminal, files, processes, snapshots, config: configTab };
  stopTab = (tabs[tab] || terminal)(body, id, signal, () => sandbox);
  return () => {
    clearInterval(timer);
    stopTab?.();
  };
}

// The terminal: a PTY context running the sandbox's shell, attached over
// the context WebSocket. xterm.js loads only now.
function terminal(el, id, signal) {
  render(
    el,
    html`<div class="row"><span id="term-state" class="muted small">starting a shell…</span><span class="grow"></span>
      <button class="btn small" id="term-restart">New shell</button></div>
      <div id="term" class="term"></div>`,
  );
  let session = null;
  async function start() {
    session?.close();
    const { openTerminal } = await import("./terminal.js");
    if (signal.aborted) return;
    session = await openTerminal($("#term", el), id, (state) => ($("#term-state", el).textContent = state));
  }
  start().catch((e) => {
    $("#term-state", el).textContent = "";
    toast(`Cannot open a terminal: ${e.message}`);
  });
  $("#term-restart", el).onclick = (e) => act(e.target, start);
  return () => session?.close();
}

// --------------------------------------------------------------------- files

// Text is shown if it decodes as UTF-8 without NULs and is not too big.
const VIEW_LIMIT = 1 << 20;

function files(el, id, signal) {
  let dir = "/workspace";
  render(
    el,
    html`<div class="row wrap">
        <form id="path-form" class="row grow"><input id="path" class="mono grow" aria-label="Directory"><button class="btn">Go</button></form>
        <button class="btn" id="up">Up</button>
        <button class="btn" id="mkdir">New folder</button>
        <label class="btn primary">Upload<input id="upload" type="file" multiple hidden></label>
      </div>
      <div class="split">
        <div class="table-wrap"><table class="grid" id="files"><thead><tr><th>Name</th><th>Size</th><th>Mode</th><th>Modified</th><th></th></tr></thead><tbody></tbody></table></div>
        <div id="viewer" class="viewer" hidden></div>
      </div>`,
  );
  const join = (d, n) => (d.endsWith("/") ? d + n : `${d}/${n}`);
  async function load(path) {
    try {
      const r = await api("GET", `${base(id)}/files/list?path=${enc(path)}`, { signal });
      dir = path;
      $("#path", el).value = dir;
      // Folders first, then by name.
      const entries = (r.entries || []).sort((a, b) => (b.type === "dir") - (a.type === "dir") || a.name.localeCompare(b.name));
      render(
        $("#files tbody", el),
        entries.length
          ? entries.map(
              (f) => html`<tr data-path="${f.path}" data-type="${f.type}" data-name="${f.name}" data-size="${f.size}">
              <td><button class="link ${f.type}">${f.type === "dir" ? "▸ " : ""}${f.name}${f.is_link ? raw(` <span class="muted">→ ${esc(f.link_target || "")}</span>`) : ""}</button></td>
              <td class="num">${f.type === "dir" ? "" : fmtBytes(f.size)}</td><td class="mono">${f.mode}</td><td>${when(f.mod_time)}</td>
              <td class="actions">${f.type === "dir" ? "" : html`<button class="btn small" data-act="download">Download</button>`}<button class="btn small danger ghost" data-act="delete">Delete</button></td></tr>`,
            )
          : html`<tr><td colspan="5" class="empty">Empty directory</td></tr>`,
      );
    } catch (e) {
      toast(`Cannot list ${path}: ${e.message}`);
    }
  }
  async function view(path, size) {
    const v = $("#viewer", el);
    v.hidden = false;
    if (size > VIEW_LIMIT) {
      render(v, html`<div class="viewer-head"><b>${path}</b></div><p class="muted">Too big to show (${fmtBytes(size)}); download it instead.</p>`);
      return;
    }
    try {
      const bytes = new Uint8Array(await (await blob(`${base(id)}/files?path=${enc(path)}`, { signal })).arrayBuffer());
      let text = null;
      if (!bytes.includes(0)) {
        try {
          text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
        } catch {
          /* binary */
        }
      }
      render(
        v,
        html`<div class="viewer-head"><b class="mono">${path}</b><span class="grow"></span><button class="btn small" id="close-view">Close</button></div>
          ${text === null ? html`<p class="muted">Binary file (${fmtBytes(bytes.length)}).</p>` : html`<pre class="file-text">${text}</pre>`}`,
      );
      $("#close-view", v).onclick = () => (v.hidden = true);
    } catch (e) {
      toast(`Cannot read ${path}: ${e.message}`);
    }
  }
  $("#files tbody", el).addEventListener("click", async (e) => {
    const tr = e.target.closest("tr[data-path]");
    if (!tr) return;
    const { path, type, name, size } = tr.dataset;
    const b = e.target.closest("button[data-act]");
    if (b?.dataset.act === "download") {
      await act(b, async () => saveAs(await blob(`${base(id)}/files?path=${enc(path)}`), name));
    } else if (b?.dataset.act === "delete") {
      if (await confirmDialog(`Delete ${name}?`, `${path}${type === "dir" ? " and everything in it" : ""} is removed.`, "Delete")) {
        await act(b, () => api("DELETE", `${base(id)}/files?path=${enc(path)}`), `Deleted ${path}`);
        load(dir);
      }
    } else if (e.target.closest("button.link")) {
      if (type === "dir") load(path);
      else view(path, Number(size));
    }
  });
  $("#path-form", el).addEventListener("submit", (e) => {
    e.preventDefault();
    load($("#path", el).value.trim() || "/");
  });
  $("#up", el).onclick = () => load(dir.replace(/\/[^/]*\/?$/, "") || "/");
  $("#mkdir", el).onclick = async (e) => {
    const name = prompt("New folder name");
    if (!name) return;
    await act(e.target, () => api("POST", `${base(id)}/files?path=${enc(join(dir, name))}&mkdir=true`), `Created ${name}`);
    load(dir);
  };
  $("#upload", el).addEventListener("change", async (e) => {
    for (const file of e.target.files) {
      await act(null, () => api("POST", `${base(id)}/files?path=${enc(join(dir, file.name))}`, { raw: file, headers: { "content-type": "application/octet-stream" } }), `Uploaded ${file.name}`);
    }
    e.target.value = "";
    load(dir);
  });
  load(dir);
}

// ------------------------------------------------------------- processes

// The API lists contexts (the processes it started); what else runs is
// read with `ps` in a short command context, removed once it answers.
function processes(el, id, signal) {
  render(
    el,
    html`<h2>Contexts</h2>
      <div class="table-wrap"><table class="grid" id="ctx"><thead><tr><th>ID</th><th>Type</th><th>State</th><th>Directory</th><th>Started</th><th>Exit</th><th></th></tr></thead><tbody></tbody></table></div>
      <div class="row"><h2>Processes</h2><span class="grow"></span><button class="btn small" id="ps-refresh">Refresh</button></div>
      <pre id="ps" class="file-text muted">…</pre>`,
  );
  async function contexts() {
    try {
      const r = await api("GET", `${base(id)}/contexts`, { signal });
      const list = r.contexts || [];
      render(
        $("#ctx tbody", el),
        list.length
          ? list.map(
              (c) => html`<tr data-ctx="${c.id}"><td class="mono">${c.id}</td><td>${c.type}${c.alias ? ` (${c.alias})` : ""}</td><td>${pill(c.state || (c.running ? "running" : "exited"))}</td>
              <td class="mono">${c.cwd}</td><td>${when(c.created_at)}</td><td class="num">${c.exit_code ?? (c.signal ? `signal ${c.signal}` : "")}</td>
              <td class="actions"><button class="btn small" data-act="restart">Restart</button><button class="btn small danger ghost" data-act="kill">Remove</button></td></tr>`,
            )
          : html`<tr><td colspan="7" class="empty">No contexts</td></tr>`,
      );
    } catch (e) {
      if (!signal.aborted) toast(`Cannot list contexts: ${e.message}`);
    }
  }
  async function ps() {
    try {
      const r = await api("POST", `${base(id)}/contexts`, {
        body: { type: "cmd", cmd: { command: ["ps", "-eo", "pid,ppid,user,etime,rss,args"] }, wait_until_done: true, timeout_sec: 10 },
        signal,
      });
      $("#ps", el).textContent = r.stdout || r.stderr || "(no output)";
      api("DELETE", `${base(id)}/contexts/${enc(r.id)}`).catch(() => {});
    } catch (e) {
      $("#ps", el).textContent = `Cannot list processes: ${e.message}`;
    }
  }
  $("#ctx", el).addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const ctx = b.closest("tr").dataset.ctx;
    if (b.dataset.act === "kill") {
      if (!(await confirmDialog("Remove context?", `${ctx} is killed and removed.`, "Remove"))) return;
      await act(b, () => api("DELETE", `${base(id)}/contexts/${enc(ctx)}`), `Removed ${ctx}`);
    } else {
      await act(b, () => api("POST", `${base(id)}/contexts/${enc(ctx)}/restart`), `Restarted ${ctx}`);
    }
    contexts();
  });
  $("#ps-refresh", el).onclick = ps;
  contexts();
  ps();
  const timer = setInterval(contexts, 3000);
  return () => clearInterval(timer);
}

// ------------------------------------------------------ snapshots and forks

function snapshots(el, id, signal, current) {
  render(
    el,
    html`<div class="row wrap">
        <form id="snap-form" class="row grow"><input name="name" placeholder="Snapshot name (optional)" class="grow"><button class="btn primary">Take snapshot</button></form>
        <button class="btn" id="fork">Fork sandbox</button>
      </div>
      <p class="muted small">Restoring replaces a <b>paused</b> sandbox's files. A fork is a new paused sandbox sharing these files copy-on-write.</p>
      <div class="table-wrap"><table class="grid" id="snaps"><thead><tr><th>ID</th><th>Name</th><th>Taken</th><th></th></tr></thead><tbody></tbody></table></div>`,
  );
  async function load() {
    try {
      const r = await api("GET", `${base(id)}/snapshots`, { signal });
      render(
        $("#snaps tbody", el),
        r.snapshots.length
          ? r.snapshots.map(
              (s) => html`<tr data-snap="${s.id}"><td class="mono">${s.id}</td><td>${s.name || "—"}</td><td>${when(s.created_at)}</td>
              <td class="actions"><button class="btn small" data-act="restore">Restore</button><button class="btn small" data-act="new">New sandbox from it</button><button class="btn small danger ghost" data-act="delete">Delete</button></td></tr>`,
            )
          : html`<tr><td colspan="4" class="empty">No snapshots yet</td></tr>`,
      );
    } catch (e) {
      if (!signal.aborted) toast(`Cannot list snapshots: ${e.message}`);
    }
  }
  $("#snap-form", el).addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = new FormData(e.target).get("name");
    await act(e.submitter, () => api("POST", `${base(id)}/snapshots`, { body: name ? { name } : {} }), "Snapshot taken");
    e.target.reset();
    load();
  });
  $("#fork", el).onclick = async (e) => {
    const r = await act(e.target, () => api("POST", `${base(id)}/fork`, { body: {} }));
    if (r) {
      toast(`Forked into ${r.sandbox.id}`, "notice");
      location.hash = `#/sandboxes/${enc(r.sandbox.id)}/files`;
    }
  };
  $("#snaps", el).addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const snap = b.closest("tr").dataset.snap;
    if (b.dataset.act === "restore") {
      if (current()?.status !== "paused") {
        toast("Pause the sandbox first: only a paused sandbox's files can be replaced.");
        return;
      }
      if (!(await confirmDialog("Restore snapshot?", `The files of ${id} are replaced by ${snap}.`, "Restore"))) return;
      await act(b, () => api("POST", `${base(id)}/rootfs/restore`, { body: { snapshot_id: snap } }), `Restored ${snap}`);
    } else if (b.dataset.act === "new") {
      const r = await act(b, () => api("POST", "/api/v1/sandboxes", { body: { snapshot_id: snap } }));
      if (r) location.hash = `#/sandboxes/${enc(r.sandbox_id)}`;
    } else if (await confirmDialog("Delete snapshot?", `${snap} is removed.`, "Delete")) {
      await act(b, () => api("DELETE", `/api/v1/sandbox-rootfs-snapshots/${enc(snap)}`), `Deleted ${snap}`);
    }
    load();
  });
  load();
}

function configTab(el, id, signal) {
  api("GET", base(id), { signal })
    .then((s) => render(el, html`<pre class="file-text">${JSON.stringify(s, null, 2)}</pre>`))
    .catch((e) => render(el, html`<p class="error-text">${e.message}</p>`));
}

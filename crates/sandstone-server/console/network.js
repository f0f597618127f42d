// Network: a sandbox's egress policy (a readable table and a validated
// editor), its live audit stream, and the team's credential sources.

import { api, follow, ndjson } from "./api.js";
import { $, act, clock, confirmDialog, fmtBytes, html, pill, render, toast, when } from "./ui.js";

const enc = encodeURIComponent;
const MAX_AUDIT_ROWS = 500;

export function page(el, { id }, signal) {
  render(
    el,
    html`<header class="page-head">
        <h1>Network</h1>
        <label class="row">Sandbox <select id="net-sb" class="mono"><option value="">choose…</option></select></label>
      </header>
      <div id="net-body"></div>
      <section class="panel" id="creds"></section>`,
  );
  const sel = $("#net-sb", el);
  api("GET", "/api/v1/sandboxes?limit=1000", { signal })
    .then((r) => {
      for (const s of r.sandboxes) sel.append(new Option(`${s.id} (${s.status})`, s.id));
      if (id && !r.sandboxes.some((s) => s.id === id)) sel.append(new Option(id, id));
      sel.value = id || "";
    })
    .catch((e) => toast(`Cannot list sandboxes: ${e.message}`));
  sel.onchange = () => (location.hash = sel.value ? `#/network/${enc(sel.value)}` : "#/network");

  const stops = [];
  if (id) stops.push(sandboxNetwork($("#net-body", el), id, signal));
  else render($("#net-body", el), html`<p class="muted">Choose a sandbox to see its policy and audit stream.</p>`);
  credentials($("#creds", el), signal);
  return () => stops.forEach((s) => s?.());
}

// ------------------------------------------------------------ the policy

const list = (v) => (Array.isArray(v) && v.length ? v.join(", ") : "");
const ports = (ps) =>
  (ps || []).map((p) => `${p.port}${p.endPort ? `–${p.endPort}` : ""}${p.protocol && p.protocol !== "tcp" ? `/${p.protocol}` : ""}`).join(", ");

function policyTable(p) {
  const rules = p?.egress?.trafficRules || [];
  return html`<p>Mode: ${pill(p.mode === "allow-all" ? "allow" : "deny")} <b>${p.mode}</b>
      <span class="muted small">— ${p.mode === "allow-all" ? "anything no rule denies goes out" : "nothing goes out unless a rule allows it"}; rules match first to last.</span></p>
    <div class="table-wrap"><table class="grid" id="rules"><thead><tr><th>#</th><th>Name</th><th>Action</th><th>Domains</th><th>CIDRs</th><th>Ports</th><th>Protocols</th></tr></thead>
    <tbody>${
      rules.length
        ? rules.map(
            (r, i) => html`<tr><td class="num">${i + 1}</td><td>${r.name || "—"}${r.preset ? html` <span class="tag">${r.preset}</span>` : ""}</td><td>${pill(r.action)}</td>
            <td class="mono">${list(r.domains) || "any"}</td><td class="mono">${list(r.cidrs) || "any"}</td><td class="mono">${ports(r.ports) || "any"}</td><td>${list(r.appProtocols) || "any"}</td></tr>`,
          )
        : html`<tr><td colspan="7" class="empty">No rules: the mode decides every connection.</td></tr>`
    }</tbody></table></div>
    ${(p?.egress?.credentialRules || []).length ? html`<p class="muted small">${p.egress.credentialRules.length} credential rule(s) inject headers from credential sources.</p>` : ""}`;
}

/**
 * What the editor checks before sending: the policy's shape, so typos are
 * caught here. The server checks the rest (CIDR prefixes, presets, ...)
 * and its refusal is shown as it words it.
 */
export function validatePolicy(text) {
  let p;
  try {
    p = JSON.parse(text);
  } catch (e) {
    return [`not valid JSON: ${e.message}`];
  }
  const errs = [];
  if (!p || typeof p !== "object" || Array.isArray(p)) return ["the policy must be a JSON object"];
  if (p.mode !== undefined && !["allow-all", "block-all"].includes(p.mode)) errs.push(`mode: "allow-all" or "block-all", not ${JSON.stringify(p.mode)}`);
  const rules = p.egress?.trafficRules;
  if (p.egress !== undefined && (typeof p.egress !== "object" || Array.isArray(p.egress))) errs.push("egress: must be an object");
  if (rules !== undefined && !Array.isArray(rules)) errs.push("egress.trafficRules: must be a list");
  (Array.isArray(rules) ? rules : []).forEach((r, i) => {
    const at = `egress.trafficRules[${i}]`;
    if (!r || typeof r !== "object") return errs.push(`${at}: must be an object`);
    if (!["allow", "deny"].includes(r.action)) errs.push(`${at}.action: "allow" or "deny"`);
    for (const f of ["domains", "cidrs", "appProtocols"]) {
      if (r[f] !== undefined && !(Array.isArray(r[f]) && r[f].every((x) => typeof x === "string"))) errs.push(`${at}.${f}: a list of strings`);
    }
    (Array.isArray(r.ports) ? r.ports : []).forEach((pt, j) => {
      if (!Number.isInteger(pt?.port) || pt.port < 1 || pt.port > 65535) errs.push(`${at}.ports[${j}].port: a port number (1–65535)`);
    });
  });
  return errs;
}

function sandboxNetwork(el, id, signal) {
  render(
    el,
    html`<div class="cols">
      <section class="panel">
        <h2>Policy</h2>
        <div id="policy-view" class="muted">Loading…</div>
        <h2>Edit</h2>
        <textarea id="policy-edit" class="code" spellcheck="false" aria-label="Policy JSON"></textarea>
        <ul id="policy-errors" class="error-text" role="alert" hidden></ul>
        <div class="row"><button class="btn" id="policy-check">Validate</button><button class="btn primary" id="policy-save">Save policy</button>
          <span class="grow"></span><span id="policy-state" class="muted small"></span></div>
      </section>
      <section class="panel">
        <div class="row"><h2>Audit</h2><span id="audit-state" class="muted small"></span><span class="grow"></span>
          <label class="row small"><input type="checkbox" id="denied-only"> denied only</label></div>
        <div class="table-wrap audit"><table class="grid" id="audit"><thead><tr><th>Time</th><th>Decision</th><th>Destination</th><th>Protocol</th><th>Bytes ↑/↓</th></tr></thead><tbody></tbody></table></div>
      </section>
    </div>`,
  );
  const editor = $("#policy-edit", el);
  const errors = $("#policy-errors", el);
  const showErrors = (list) => {
    render(errors, html`${list.map((e) => html`<li>${e}</li>`)}`);
    errors.hidden = !list.length;
  };
  async function load() {
    try {
      const p = await api("GET", `/api/v1/sandboxes/${enc(id)}/network`, { signal });
      render($("#policy-view", el), policyTable(p));
      editor.value = JSON.stringify(p, null, 2);
    } catch (e) {
      if (!signal.aborted) render($("#policy-view", el), html`<p class="error-text">${e.message}</p>`);
    }
  }
  $("#policy-check", el).onclick = () => {
    const errs = validatePolicy(editor.value);
    showErrors(errs);
    $("#policy-state", el).textContent = errs.length ? "" : "looks valid";
  };
  $("#policy-save", el).onclick = async (e) => {
    const errs = validatePolicy(editor.value);
    showErrors(errs);
    if (errs.length) return;
    e.target.disabled = true;
    $("#policy-state", el).textContent = "saving…";
    try {
      const p = await api("PUT", `/api/v1/sandboxes/${enc(id)}/network`, { body: JSON.parse(editor.value) });
      render($("#policy-view", el), policyTable(p));
      editor.value = JSON.stringify(p, null, 2);
      $("#policy-state", el).textContent = "saved";
      toast("Policy saved: new connections see it at once", "notice");
    } catch (x) {
      // The API's own words: they name the field that is wrong.
      $("#policy-state", el).textContent = "refused";
      showErrors([x.message]);
    } finally {
      e.target.disabled = false;
    }
  };
  load();

  // The audit: recent history, then the live watch (newest first).
  const tbody = $("#audit tbody", el);
  const seen = new Set();
  const deniedOnly = $("#denied-only", el);
  deniedOnly.onchange = () => tbody.classList.toggle("denied-only", deniedOnly.checked);
  function add(ev) {
    if (seen.has(ev.event_id)) return;
    seen.add(ev.event_id);
    const a = ev.attributes || {};
    const denied = a.decision === "deny" || ev.outcome === "denied";
    const tr = document.createElement("tr");
    tr.className = denied ? "denied" : "allowed";
    const dest = `${a.dest_name || a.dest_ip || "?"}${a.dest_port ? `:${a.dest_port}` : ""}`;
    tr.innerHTML = String(html`<td title="${when(ev.occurred_at)}">${clock(ev.occurred_at)}</td>
      <td>${pill(a.decision || ev.outcome)}</td>
      <td><span class="mono">${dest}</span>${a.dest_ip && a.dest_name && a.dest_ip !== a.dest_name ? html` <span class="muted small">${a.dest_ip}</span>` : ""}
        ${denied && a.reason ? html`<div class="reason">${a.reason}</div>` : ""}
        ${denied && a.allow_hint?.message ? html`<div class="hint" title="to allow it">${a.allow_hint.message}</div>` : ""}
        ${!denied && a.rule ? html`<div class="muted small">rule ${typeof a.rule === "string" ? a.rule : JSON.stringify(a.rule)}</div>` : ""}</td>
      <td>${a.protocol || a.kind || ""}</td>
      <td class="num">${fmtBytes(a.bytes_up || 0)} / ${fmtBytes(a.bytes_down || 0)}</td>`);
    tbody.prepend(tr);
    while (tbody.rows.length > MAX_AUDIT_ROWS) tbody.lastElementChild.remove();
  }
  const state = (s) => ($("#audit-state", el).textContent = s);
  const path = `/api/v1/sandboxes/${enc(id)}/observability/events`;
  api("GET", `${path}?limit=200`, { signal })
    .then((r) => (r.events || []).forEach(add))
    .catch((e) => !signal.aborted && toast(`Cannot read the audit: ${e.message}`));
  follow(
    () =>
      ndjson(`${path}?watch=true`, signal, (line) => {
        if (line.type === "event") add(line.data);
        else if (line.type === "error") state(`error: ${line.error?.message || line.message || JSON.stringify(line)}`);
      }),
    signal,
    (s) => state(s === "live" ? "● live" : s.message),
  );
}

// --------------------------------------------------- credential sources

// Values go in and never come out: the API returns names and versions
// only, and the form's fields are cleared once sent.
function credentials(el, signal) {
  render(
    el,
    html`<h2>Credential sources</h2>
      <p class="muted small">Header values injected by the egress proxy for credential rules. Values are write-only: they are never shown or read back.</p>
      <div class="table-wrap"><table class="grid" id="cred-list"><thead><tr><th>Name</th><th>Kind</th><th>Version</th><th>Status</th><th>Updated</th><th></th></tr></thead><tbody></tbody></table></div>
      <h2>Create or replace</h2>
      <form id="cred-form" class="form-grid" autocomplete="off">
        <label>Name <input name="name" required pattern="[A-Za-z0-9._\\-]{1,64}" placeholder="github-token"></label>
        <label>Header <input name="header" required placeholder="Authorization"></label>
        <label class="wide">Value <input name="value" type="password" required autocomplete="new-password" placeholder="write-only"></label>
        <div class="row wide"><button class="btn primary">Save source</button><span class="muted small">An existing name gets a new version.</span></div>
      </form>`,
  );
  let names = new Set();
  async function load() {
    try {
      const r = await api("GET", "/api/v1/credential-sources", { signal });
      const items = Array.isArray(r) ? r : r.credential_sources || r.items || [];
      names = new Set(items.map((c) => c.name));
      render(
        $("#cred-list tbody", el),
        items.length
          ? items.map(
              (c) => html`<tr data-name="${c.name}"><td class="mono">${c.name}</td><td>${c.resolverKind}</td><td class="num">v${c.currentVersion}</td><td>${pill(c.status)}</td><td>${when(c.updatedAt)}</td>
              <td class="actions"><button class="btn small danger ghost" data-act="delete">Delete</button></td></tr>`,
            )
          : html`<tr><td colspan="6" class="empty">No credential sources</td></tr>`,
      );
    } catch (e) {
      if (!signal.aborted) toast(`Cannot list credential sources: ${e.message}`);
    }
  }
  $("#cred-form", el).addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const f = new FormData(form);
    const name = String(f.get("name"));
    const body = { name, resolverKind: "static_headers", spec: { staticHeaders: { values: { [f.get("header")]: f.get("value") } } } };
    const exists = names.has(name);
    const r = await act(
      e.submitter,
      () => api(exists ? "PUT" : "POST", exists ? `/api/v1/credential-sources/${enc(name)}` : "/api/v1/credential-sources", { body }),
      `${exists ? "Replaced" : "Created"} ${name}`,
    );
    // The value leaves the page either way once sent.
    form.elements.value.value = "";
    if (r !== undefined) form.reset();
    load();
  });
  $("#cred-list", el).addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const name = b.closest("tr").dataset.name;
    if (await confirmDialog("Delete credential source?", `${name} is removed; rules that use it stop injecting.`, "Delete")) {
      await act(b, () => api("DELETE", `/api/v1/credential-sources/${enc(name)}`), `Deleted ${name}`);
      load();
    }
  });
  load();
}

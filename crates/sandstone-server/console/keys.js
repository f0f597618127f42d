// API keys (admins): list, create, deactivate. A key's value is shown once,
// right after it is created, and never again: the list has none.

import { api } from "./api.js";
import { $, act, confirmDialog, html, pill, render, when } from "./ui.js";

const enc = encodeURIComponent;

export function page(el, _params, signal) {
  render(
    el,
    html`<header class="page-head"><h1>API keys</h1></header>
      <form id="new-key" class="row wrap panel">
        <label>Name <input name="name" required></label>
        <label>Role <select name="role"><option>developer</option><option>viewer</option><option>admin</option></select></label>
        <label>Expires <select name="expires"><option value="never">never</option><option>30d</option><option>90d</option><option>365d</option></select></label>
        <button class="btn primary">Create key</button>
      </form>
      <div id="created"></div>
      <div class="table-wrap"><table class="grid" id="keys"><thead><tr><th>Name</th><th>ID</th><th>Role</th><th>State</th><th>Last used</th><th>Uses</th><th>Expires</th><th></th></tr></thead><tbody></tbody></table></div>`,
  );
  async function load() {
    try {
      const r = await api("GET", "/api-keys", { signal });
      render(
        $("#keys tbody", el),
        r.api_keys.map(
          (k) => html`<tr data-id="${k.id}"><td>${k.name}</td><td class="mono small">${k.id}</td><td>${k.roles.join(", ")}</td><td>${pill(k.is_active ? "live" : "deactivated")}</td>
          <td>${k.last_used_at ? when(k.last_used_at) : "never"}</td><td class="num">${k.usage_count ?? ""}</td><td>${k.expires_at?.startsWith("0001") ? "never" : when(k.expires_at)}</td>
          <td class="actions">${k.is_active ? html`<button class="btn small danger ghost" data-act="deactivate">Deactivate</button>` : ""}</td></tr>`,
        ),
      );
    } catch (e) {
      if (!signal.aborted) render($("#keys tbody", el), html`<tr><td colspan="8" class="error-text">${e.message}</td></tr>`);
    }
  }
  $("#new-key", el).addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const k = await act(e.submitter, () =>
      api("POST", "/api-keys", { body: { name: f.get("name"), roles: [f.get("role")], expires_in: f.get("expires") } }),
    );
    if (!k) return;
    e.target.reset();
    // The one time a key's value is on screen; dismissing it removes it.
    const box = $("#created", el);
    render(
      box,
      html`<div class="panel once"><b>Key ${k.name} created.</b> Copy it now: it is not shown again.
        <div class="row"><input class="mono grow" readonly value="${k.key}" aria-label="New key"><button class="btn" id="copy">Copy</button><button class="btn" id="done">Done</button></div></div>`,
    );
    $("#copy", box).onclick = () => navigator.clipboard?.writeText(k.key);
    $("#done", box).onclick = () => box.replaceChildren();
    load();
  });
  $("#keys", el).addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-act]");
    if (!b) return;
    const id = b.closest("tr").dataset.id;
    if (await confirmDialog("Deactivate key?", `${id} is refused from its next request.`, "Deactivate")) {
      await act(b, () => api("POST", `/api-keys/${enc(id)}/deactivate`), "Key deactivated");
      load();
    }
  });
  load();
}

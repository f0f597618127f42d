// The console's shell: sign-in, navigation, and a hash router that mounts
// one page at a time. Each page's `mount(el, params)` returns a cleanup
// that stops its polling and streams when the user leaves it.

import { api, session } from "./api.js";
import { $, $$ } from "./ui.js";

// Pages load on first visit, so the first load carries only the list.
const pages = {
  sandboxes: () => import("./sandboxes.js").then((m) => m.list),
  sandbox: () => import("./sandboxes.js").then((m) => m.detail),
  network: () => import("./network.js").then((m) => m.page),
  agents: () => import("./agents.js").then((m) => m.page),
  session: () => import("./agents.js").then((m) => m.transcript),
  overview: () => import("./overview.js").then((m) => m.page),
  keys: () => import("./keys.js").then((m) => m.page),
};

// `#/sandboxes/<id>/<tab>` and the like: the page and its parameters.
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const [head, id, tab] = parts;
  switch (head) {
    case "sandboxes":
      return id ? ["sandbox", { id, tab }, "sandboxes"] : ["sandboxes", {}, "sandboxes"];
    case "network":
      return ["network", { id }, "network"];
    case "agents":
      return ["agents", { tab: id }, "agents"];
    case "sessions":
      return ["session", { id }, "agents"];
    case "overview":
    case "keys":
      return [head, {}, head];
    default:
      return ["sandboxes", {}, "sandboxes"];
  }
}

let cleanup = null;
let generation = 0;

async function show() {
  const [name, params, nav] = route();
  const gen = ++generation;
  cleanup?.();
  cleanup = null;
  for (const a of $$("[data-nav]")) a.classList.toggle("on", a.dataset.nav === nav);
  const view = $("#view");
  const mount = await pages[name]();
  // A newer navigation won while this page's module loaded.
  if (gen !== generation) return;
  view.replaceChildren();
  const stop = new AbortController();
  const done = mount(view, params, stop.signal);
  cleanup = () => {
    stop.abort();
    done?.();
  };
}

function signOut(message) {
  cleanup?.();
  cleanup = null;
  session.clear();
  $("#app").hidden = true;
  $("#signin").hidden = false;
  const err = $("#signin-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("#signin-key").value = "";
  $("#signin-key").focus();
}

// Enters with the stored key: `/api-keys/current` says whether it works
// and what it may do (admins see the Keys page).
async function enter() {
  const me = await api("GET", "/api-keys/current");
  const k = me.api_key;
  $("#whoami").textContent = `${k.roles.join(", ")} · team ${k.team_id}`;
  $("#nav-keys").hidden = !k.permissions.includes("apikey:manage");
  $("#signin").hidden = true;
  $("#app").hidden = false;
  show();
}

$("#signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const err = $("#signin-error");
  const button = e.submitter;
  button.disabled = true;
  session.set($("#signin-key").value.trim());
  try {
    await enter();
    $("#signin-key").value = "";
  } catch (x) {
    session.clear();
    err.textContent = x.message;
    err.hidden = false;
  } finally {
    button.disabled = false;
  }
});

$("#signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => session.key() && show());
// A key deactivated or expired while signed in: back to the sign-in form.
window.addEventListener("sandstone:unauthorized", () => {
  if (session.key()) signOut("The key was refused (deactivated or expired?). Sign in again.");
});

if (session.key()) {
  enter().catch((e) => signOut(e.message));
} else {
  signOut();
}

// Small DOM helpers shared by the pages: escaping, formatting, the error
// and notice toasts, confirmation dialogs.

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escapes text for HTML (element content and quoted attributes). */
export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);

/**
 * A tagged template that escapes every interpolated value, except those
 * wrapped by `raw()` (markup built by another `html` call).
 */
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    const s = Array.isArray(v)
      ? v.map((x) => (x instanceof Raw ? x.s : esc(x))).join("")
      : v instanceof Raw
        ? v.s
        : esc(v);
    out += s + strings[i + 1];
  });
  return new Raw(out);
}
class Raw {
  constructor(s) {
    this.s = s;
  }
  toString() {
    return this.s;
  }
}
export const raw = (s) => new Raw(s);

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** Sets `el`'s content from an `html` result. */
export function render(el, markup) {
  el.innerHTML = String(markup);
  return el;
}

export function fmtBytes(n) {
  if (n == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

/**
 * "3 min", "2 h", "5 d": the time since `iso`, to the minute at best, so a
 * live list's rows change at most once a minute.
 */
export function age(iso, now = Date.now()) {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return "<1 min";
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
export const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");

// Toasts: errors stay until dismissed (they must be read), notices fade.
export function toast(message, kind = "error") {
  const box = document.getElementById("toasts");
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  render(el, html`<span class="msg">${message}</span><button class="x" aria-label="Dismiss">×</button>`);
  el.querySelector(".x").onclick = () => el.remove();
  box.append(el);
  if (kind !== "error") setTimeout(() => el.remove(), 4000);
  return el;
}

/**
 * Runs an action started by `button`: disabled while it runs, its error
 * shown as a toast. Returns the action's result, or undefined on failure.
 */
export async function act(button, fn, done) {
  if (button) button.disabled = true;
  try {
    const out = await fn();
    if (done) toast(done, "notice");
    return out;
  } catch (e) {
    toast(e.message || String(e));
  } finally {
    if (button) button.disabled = false;
  }
}

/** A modal question; resolves true when confirmed. */
export function confirmDialog(title, body, verb = "Confirm", danger = true) {
  return choiceDialog(title, body, [{ value: "yes", label: verb, cls: danger ? "danger" : "primary" }]).then((v) => v === "yes");
}

/** Asks `title` with `body` and a button per choice (`{value, label,
 * cls}`, the last the default) beside Cancel: the chosen value, or null. */
export function choiceDialog(title, body, choices) {
  const dlg = document.createElement("dialog");
  dlg.className = "modal";
  render(
    dlg,
    html`<form method="dialog">
      <h2>${title}</h2>
      <p>${body}</p>
      <div class="row end">
        <button value="no" class="btn">Cancel</button>
        ${choices.map((c) => html`<button value="${c.value}" class="btn ${c.cls ?? ""}">${c.label}</button>`)}
      </div>
    </form>`,
  );
  document.body.append(dlg);
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      resolve(choices.some((c) => c.value === dlg.returnValue) ? dlg.returnValue : null);
      dlg.remove();
    });
  });
}

/** Offers `blob` as a download named `name`. */
export function saveAs(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

/** A status pill (`running`, `paused`, `idle`, ...). */
export const pill = (s) => html`<span class="pill s-${String(s).replace(/[^a-z_]/gi, "")}">${s}</span>`;

// A terminal on a sandbox: xterm.js (vendored, loaded on first use) over
// the context WebSocket of a PTY context running the sandbox's shell.

import { api, session } from "./api.js";
import { Terminal } from "./xterm.js";
import { FitAddon } from "./xterm-addon-fit.js";

let cssLoaded = false;
function loadCss() {
  if (cssLoaded) return;
  cssLoaded = true;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "/console/xterm.css";
  document.head.append(link);
}

// xterm writes its theme and cell-size rules into <style> elements, which
// the page's CSP (no inline styles) does not apply. Each one is mirrored
// into a constructed stylesheet, which CSP allows, and kept in step.
function mirrorStyles(root) {
  const sheets = new Map();
  const sync = (styleEl) => {
    let sheet = sheets.get(styleEl);
    if (!sheet) {
      sheet = new CSSStyleSheet();
      sheets.set(styleEl, sheet);
      document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    }
    sheet.replaceSync(styleEl.textContent);
  };
  const observer = new MutationObserver((records) => {
    for (const r of records) {
      const target = r.target.nodeType === Node.TEXT_NODE ? r.target.parentNode : r.target;
      if (target instanceof HTMLStyleElement) sync(target);
      for (const n of r.addedNodes) {
        if (n instanceof HTMLStyleElement) sync(n);
        else if (n.querySelectorAll) n.querySelectorAll("style").forEach(sync);
      }
    }
  });
  observer.observe(root, { subtree: true, childList: true, characterData: true });
  return () => {
    observer.disconnect();
    const gone = new Set(sheets.values());
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => !gone.has(s));
  };
}

const THEME = {
  background: "#1d1a17",
  foreground: "#ece5dc",
  cursor: "#e8a26a",
  selectionBackground: "#5a4636",
  black: "#1d1a17",
  red: "#e0705c",
  green: "#9bc27a",
  yellow: "#e3b964",
  blue: "#7fa7d4",
  magenta: "#c792c6",
  cyan: "#79c0b5",
  white: "#ece5dc",
};

// bash where the template has it, sh otherwise.
const SHELL = "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l";

/**
 * Opens a shell in sandbox `id` into `container`; `onState` hears the
 * connection's state in words. Returns `{close}`, which ends the shell.
 */
export async function openTerminal(container, id, onState) {
  loadCss();
  container.replaceChildren();
  const unmirror = mirrorStyles(container);
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", monospace',
    fontSize: 13,
    theme: THEME,
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();

  const sandbox = `/api/v1/sandboxes/${encodeURIComponent(id)}`;
  let ctx;
  try {
    ctx = await api("POST", `${sandbox}/contexts`, {
      body: {
        type: "cmd",
        cmd: { command: ["sh", "-c", SHELL] },
        env_vars: { TERM: "xterm-256color" },
        pty_size: { rows: term.rows, cols: term.cols },
      },
    });
  } catch (e) {
    term.dispose();
    unmirror();
    throw e;
  }

  // Browsers cannot set headers on a WebSocket: the key rides as a
  // subprotocol, next to the protocol's own name, which the server echoes.
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}${sandbox}/contexts/${encodeURIComponent(ctx.id)}/ws`;
  const ws = new WebSocket(url, ["sandstone.v1", `bearer.${session.key()}`]);
  const send = (msg) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(msg));
  let closed = false;

  ws.onopen = () => {
    onState(`connected · ${ctx.id}`);
    send({ type: "resize", rows: term.rows, cols: term.cols });
    term.focus();
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "output") term.write(m.data);
    else if (m.type === "truncated") term.write(`\r\n\x1b[33m[${m.dropped_bytes} bytes of earlier output dropped]\x1b[0m\r\n`);
    else if (m.type === "error") term.write(`\r\n\x1b[31m[${m.error}]\x1b[0m\r\n`);
    else if (m.type === "done") {
      term.write(`\r\n\x1b[2m[shell ${m.state}${m.exit_code != null ? `, exit code ${m.exit_code}` : ""}]\x1b[0m\r\n`);
      onState("the shell ended");
    }
  };
  ws.onclose = (e) => {
    if (!closed) onState(e.code === 1000 || e.code === 1005 ? "disconnected" : `disconnected (${e.code}${e.reason ? `: ${e.reason}` : ""})`);
  };
  ws.onerror = () => onState("the connection failed");

  // Keystrokes and pastes both arrive here (xterm brackets pastes).
  term.onData((data) => send({ type: "input", data }));
  term.onResize(({ rows, cols }) => send({ type: "resize", rows, cols }));
  const resize = new ResizeObserver(() => fit.fit());
  resize.observe(container);

  return {
    close() {
      closed = true;
      resize.disconnect();
      ws.close();
      term.dispose();
      unmirror();
      // The shell ends with its terminal.
      api("DELETE", `${sandbox}/contexts/${encodeURIComponent(ctx.id)}`).catch(() => {});
    },
  };
}

// The console's only way to the daemon: its public APIs, with the key the
// user signed in with. The key lives in sessionStorage (gone when the tab
// closes) and is never written into the page.

const KEY = "sandstone.key";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** A failed call: the HTTP status and the server's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The Managed Agents API (under /v1) wants the version and beta headers the
// official SDK sends; the memory-store endpoints take their own beta.
function headersFor(path, extra) {
  const h = { authorization: `Bearer ${session.key()}`, ...extra };
  if (path.startsWith("/v1/")) {
    h["anthropic-version"] = "2023-06-01";
    h["anthropic-beta"] = path.startsWith("/v1/memory_stores")
      ? "agent-memory-2026-07-22"
      : "managed-agents-2026-04-01";
  }
  return h;
}

// Both API families put the message in `error.message` (Sandbox0's
// `{success:false,error:{code,message}}`, Anthropic's
// `{type:"error",error:{type,message}}`); anything else is shown as text.
async function errorOf(resp) {
  const text = await resp.text();
  let message = text.trim() || resp.statusText;
  try {
    const v = JSON.parse(text);
    message = v?.error?.message || v?.message || message;
  } catch {
    /* not JSON: the text itself */
  }
  if (resp.status === 401) {
    window.dispatchEvent(new CustomEvent("sandstone:unauthorized"));
  }
  return new ApiError(resp.status, `${message} (HTTP ${resp.status})`);
}

async function send(method, path, { body, raw, headers, signal } = {}) {
  const extra = { ...headers };
  let payload;
  if (raw !== undefined) {
    payload = raw;
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    extra["content-type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers: headersFor(path, extra), body: payload, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the daemon: ${e.message}`);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

/**
 * A JSON call. Sandbox0's envelope (`{success, data}`) is unwrapped, so
 * callers get the data whichever API answered.
 */
export async function api(method, path, opts) {
  const resp = await send(method, path, opts);
  const text = await resp.text();
  if (!text) return null;
  const v = JSON.parse(text);
  return v && typeof v === "object" && "success" in v && "data" in v ? v.data : v;
}

/** A call whose answer is bytes (file downloads). */
export async function blob(path, opts) {
  return (await send("GET", path, opts)).blob();
}

/** Plain text (the Prometheus page). */
export async function text(path) {
  return (await send("GET", path)).text();
}

// Reads a streamed body line by line, calling `onLine` for each; resolves
// when the stream ends, rejects with the API's message if it is refused.
// `onOpen` runs once the server has answered (the stream is attached).
async function lines(path, signal, onLine, onOpen) {
  const resp = await send("GET", path, { signal, headers: { accept: "*/*" } });
  onOpen?.();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, nl).replace(/\r$/, ""));
      buf = buf.slice(nl + 1);
    }
  }
}

/** An NDJSON stream (the network audit watch): one parsed value per line. */
export function ndjson(path, signal, onValue) {
  return lines(path, signal, (line) => {
    if (line.trim()) onValue(JSON.parse(line));
  });
}

/**
 * Server-sent events read with fetch: EventSource cannot send the
 * Authorization header. Calls `onEvent` with each event's parsed data.
 */
export function sse(path, signal, onEvent, onOpen) {
  let data = [];
  const onLine = (line) => {
    if (line === "") {
      if (data.length) onEvent(JSON.parse(data.join("\n")));
      data = [];
    } else if (line.startsWith("data:")) {
      data.push(line.slice(5).replace(/^ /, ""));
    }
  };
  return lines(path, signal, onLine, onOpen);
}

/**
 * Keeps a stream open: reconnects after a drop (a second later), until
 * `signal` aborts. `onState` hears "live", or the error that cut it.
 */
export async function follow(open, signal, onState) {
  while (!signal.aborted) {
    try {
      onState("live");
      await open();
      onState(new Error("the stream ended; reconnecting"));
    } catch (e) {
      if (signal.aborted) return;
      onState(e);
      // A refusal (4xx) will not heal by retrying quickly.
      if (e instanceof ApiError && e.status >= 400 && e.status < 500) return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

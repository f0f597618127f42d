#!/usr/bin/env bash
# Preview requests (issue #17), against a baseline in the same run (run as
# root; a release build). The same small keep-alive HTTP/1.1 server (a
# 2 KiB page) runs twice: on the host's loopback, and in a sandbox behind a
# preview grant. One keep-alive client, 5,000 requests each, interleaved in
# rounds of 500:
#  - GET straight to the host's server (the baseline: a direct loopback
#    request);
#  - GET through the daemon at the grant's name (cookie check, the grant
#    and generation from their caches, a pooled connection into the
#    sandbox's network namespace).
# Bounded: a minute or so; everything it started is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-preview-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT

# Threaded, as dev servers are: the daemon's pool (like a browser) may open a
# second connection while the first is idle in keep-alive.
cat > "$work/server.py" <<'PY'
import http.server, sys
PAGE = b"x" * 2048
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the second
    # waits for the first's delayed ACK (40 ms) on either path.
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY

port=$(( 20000 + RANDOM % 20000 ))
direct=$(( port + 1 ))
start_daemon pv "$port" --pool-gib 4 -- --warm-pool 0
python3 "$work/server.py" "$direct" &
pids+=($!)
sb="$(on pv create --template host)"
on pv cp "$work/server.py" "$sb:/tmp/server.py"
token="$(cat "$work/pv/admin.token")"
api="http://127.0.0.1:$port/api/v1/sandboxes/$sb"
curl -fsS -H "authorization: Bearer $token" -d '{"type":"cmd","cmd":{"command":["python3","/tmp/server.py","8000"]}}' "$api/contexts" >/dev/null
grant="$(curl -fsS -H "authorization: Bearer $token" -d '{"port":8000}' "$api/previews")"
echo "== preview requests; $(nproc) CPUs"
timeout --kill-after=10 300 python3 - "$port" "$direct" "$grant" <<'PY'
import http.client, json, socket, sys, time, urllib.parse
port, direct, grant = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])["data"]
boot = urllib.parse.urlsplit(grant["url"])

def connect(p):
    c = http.client.HTTPConnection("127.0.0.1", p)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c

via = connect(port)
# The one-time URL: the cookie the browser would keep.
for _ in range(100):
    via.request("GET", f"{boot.path}?{boot.query}", headers={"host": boot.netloc})
    r = via.getresponse(); r.read()
    if r.status == 303:
        break
    time.sleep(0.1)
cookie = r.getheader("set-cookie").split(";")[0]
straight = connect(direct)

def call(conn, headers):
    t = time.perf_counter_ns()
    conn.request("GET", "/", headers=headers)
    r = conn.getresponse()
    body = r.read()
    return r.status, len(body), time.perf_counter_ns() - t

cases = [
    ("GET direct to the host's loopback server (baseline)", straight, {}),
    ("GET through the preview grant", via, {"host": boot.netloc, "cookie": cookie}),
]
times = {c[0]: [] for c in cases}
# Warm up: the server in the sandbox may still be starting.
for _ in range(200):
    for label, conn, headers in cases:
        try:
            call(conn, headers)
        except Exception:
            time.sleep(0.05)
for _ in range(10):
    for label, conn, headers in cases:
        for _ in range(500):
            status, n, ns = call(conn, headers)
            if status != 200 or n != 2048:
                sys.exit(f"{label}: HTTP {status}, {n} bytes")
            times[label].append(ns)

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] / 1000

base = pct(times[cases[0][0]], 50)
for label, *_ in cases:
    p50, p99 = pct(times[label], 50), pct(times[label], 99)
    print(f"{label:<52} p50 {p50:7.1f} us  p99 {p99:7.1f} us  (+{p50 - base:6.1f} us p50 over the baseline)")
PY

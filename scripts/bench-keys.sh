#!/usr/bin/env bash
# API key checks (issue #16), against a baseline in the same run (run as
# root; a release build). One keep-alive client, 5,000 requests each,
# interleaved in rounds of 500:
#  - GET /healthz, which takes no key (the floor);
#  - GET /api-keys/current with the admin key, and with a developer key
#    made by `sandstone key create` (a cached verification, plus the small
#    handler);
#  - the same with a key the daemon does not know (a store read on every
#    request, as every request's check was before the cache: 401);
#  - GET /api/v1/sandboxes/{id}/status with the admin key, and with a
#    developer key of another team (the team check, from its cache: 404,
#    before any handler).
# Bounded: a minute or so; everything it started is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-keys-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT

port=$(( 20000 + RANDOM % 20000 ))
start_daemon keys "$port" --pool-gib 4 -- --warm-pool 0
key_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'; }
dev="$(on keys key create --name bench --role developer | key_of)"
on keys team create other >/dev/null
other="$(on keys key create --name other --team other | key_of)"
sb="$(on keys create --template host)"
echo "== API key checks; $(nproc) CPUs"
timeout --kill-after=10 300 python3 - "$port" "$(cat "$work/keys/admin.token")" "$dev" "$other" "$sb" <<'PY'
import http.client, socket, sys, time
port, admin, dev, other, sb = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", port)
conn.connect()
conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def call(path, key):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    t = time.perf_counter_ns()
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status, time.perf_counter_ns() - t

cases = [
    ("GET /healthz, no key (baseline)", "/healthz", None, 200),
    ("GET /api-keys/current, admin key", "/api-keys/current", admin, 200),
    ("GET /api-keys/current, developer key", "/api-keys/current", dev, 200),
    ("GET /api-keys/current, unknown key (store read, 401)", "/api-keys/current", "s0_local_" + "0" * 48, 401),
    ("GET /sandboxes/{id}/status, admin key", f"/api/v1/sandboxes/{sb}/status", admin, 200),
    ("GET /sandboxes/{id}/status, other team's key (404)", f"/api/v1/sandboxes/{sb}/status", other, 404),
]
times = {c[0]: [] for c in cases}
for _ in range(100):
    for label, path, key, want in cases:
        call(path, key)
for _ in range(10):
    for label, path, key, want in cases:
        for _ in range(500):
            status, ns = call(path, key)
            if status != want:
                sys.exit(f"{label}: HTTP {status}")
            times[label].append(ns)

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] / 1000

base = pct(times[cases[0][0]], 50)
for label, *_ in cases:
    p50, p99 = pct(times[label], 50), pct(times[label], 99)
    print(f"{label:<56} p50 {p50:7.1f} us  p99 {p99:7.1f} us  (+{p50 - base:6.1f} us p50 over the baseline)")
PY

#!/usr/bin/env bash
# Sandbox volumes (issue #21), each row with its baseline in the same run
# (run as root; a release build; one daemon on a btrfs pool, no warm pool,
# so every claim takes the same cold path):
#  - volume create, snapshot and fork, p50 of 30 each, on a volume holding
#    10 MiB and on one holding 1 GiB, interleaved (flat: the second against
#    the first);
#  - a claim with a volume mounted vs a claim without, interleaved, p50;
#  - a file written then read (4 KiB and 1 MiB) through the volume files API
#    (no sandbox) vs the sandbox files API, interleaved, p50.
# Bounded: a few minutes; everything it started is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-volumes-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT

port=$(( 20000 + RANDOM % 20000 ))
start_daemon vol "$port" --pool-gib 16 -- --warm-pool 0
echo "== sandbox volumes; $(nproc) CPUs"
PORT="$port" TOKEN="$(cat "$work/vol/admin.token")" timeout --kill-after=10 900 python3 - <<'PY'
import http.client, json, os, statistics, time

port, token = int(os.environ["PORT"]), os.environ["TOKEN"]
conn = http.client.HTTPConnection("127.0.0.1", port)

def call(method, path, body=None, raw=None):
    headers = {"authorization": f"Bearer {token}"}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    payload = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {payload[:300]!r}")
    return payload

def timed(f):
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1000

def p50(xs):
    return statistics.median(xs)

def new_volume(**kw):
    return json.loads(call("POST", "/api/v1/sandboxvolumes", kw))["data"]["id"]

def claim(mounts=()):
    body = {"template": "host", "mounts": list(mounts)}
    return json.loads(call("POST", "/api/v1/sandboxes", body))["data"]["sandbox_id"]

def sh(sb, script):
    body = {"type": "cmd", "cmd": {"command": ["sh", "-c", script]}, "wait_until_done": True, "timeout_sec": 600}
    return json.loads(call("POST", f"/api/v1/sandboxes/{sb}/contexts", body))["data"]

# Volumes holding 10 MiB and 1 GiB, filled from a sandbox.
filled = {}
for label, mib in (("10 MiB", 10), ("1 GiB", 1024)):
    vol = new_volume(size="4Gi")
    sb = claim([{"sandboxvolume_id": vol, "mount_point": "/data"}])
    sh(sb, f"head -c {mib}M /dev/urandom > /data/blob && sync")
    call("DELETE", f"/api/v1/sandboxes/{sb}")
    filled[label] = vol

creates = [timed(lambda: new_volume()) for _ in range(30)]
print(f"volume create (empty)                 p50 {p50(creates):7.2f} ms")
# Interleaved, so both sizes see the same number of subvolumes on the pool
# (a btrfs commit costs a little more with each).
snaps = {label: [] for label in filled}
forks = {label: [] for label in filled}
for _ in range(30):
    for label, vol in filled.items():
        snaps[label].append(timed(lambda: call("POST", f"/api/v1/sandboxvolumes/{vol}/snapshots", {"name": "b"})))
        forks[label].append(timed(lambda: call("POST", f"/api/v1/sandboxvolumes/{vol}/fork", {})))
rows = {label: (p50(snaps[label]), p50(forks[label])) for label in filled}
for label in filled:
    print(f"snapshot, volume of {label:7s}          p50 {rows[label][0]:7.2f} ms")
    print(f"fork, volume of {label:7s}              p50 {rows[label][1]:7.2f} ms")
small, big = rows["10 MiB"], rows["1 GiB"]
print(f"1 GiB vs 10 MiB: snapshot {big[0] / small[0]:.2f}x, fork {big[1] / small[1]:.2f}x")

# Claims with and without a mounted volume (RWX: mountable again and again).
shared = new_volume(access_mode="RWX")
plain, mounted = [], []
for _ in range(30):
    for kind, mounts, acc in (("plain", [], plain),
                              ("mounted", [{"sandboxvolume_id": shared, "mount_point": "/data"}], mounted)):
        ids = []
        acc.append(timed(lambda: ids.append(claim(mounts))))
        call("DELETE", f"/api/v1/sandboxes/{ids[0]}")
print(f"claim without a volume (baseline)     p50 {p50(plain):7.2f} ms")
print(f"claim with a volume mounted           p50 {p50(mounted):7.2f} ms  ({p50(mounted) - p50(plain):+.2f} ms)")

# Files: the volume files API vs the sandbox files API.
sb = claim()
vol = new_volume()
for size_label, size in (("4 KiB", 4096), ("1 MiB", 1 << 20)):
    data = os.urandom(size)
    box, volume = [], []
    for i in range(200):
        for target, acc in ((f"/api/v1/sandboxes/{sb}/files", box), (f"/api/v1/sandboxvolumes/{vol}/files", volume)):
            def rw():
                call("POST", f"{target}?path=f{i % 4}", raw=data)
                got = call("GET", f"{target}?path=f{i % 4}")
                assert got == data
            acc.append(timed(rw))
    print(f"write+read {size_label}, sandbox files API   p50 {p50(box):7.2f} ms (baseline)")
    print(f"write+read {size_label}, volume files API    p50 {p50(volume):7.2f} ms  ({p50(volume) / p50(box):.2f}x)")
PY

#!/usr/bin/env bash
# Several nodes (#13), each figure beside its baseline measured in the same
# run (release build, root):
#   1. a sandbox call through a node that forwards it vs straight to its
#      owner (p50/p95 of files/stat, keep-alive clients);
#   2. a create through a node that places it elsewhere vs a create on a
#      node alone (p50 of 20 cold creates each);
#   3. checkpoints against moto: after changing 10 MiB of a 1 GiB tree vs a
#      plain PUT of 10 MiB; a cold restore vs a plain download of the bytes
#      (sandstone-checkpoint's bench example). BENCH_CKPT_MIB sets the size.
# Usage: sudo scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(scripts/build.sh release)"
s="$out/sandstone"
export SANDSTONE_INIT="$out/sandstone-init"
work="$(mktemp -d /var/tmp/sandstone-bench-cluster.XXXXXX)"
pids=()
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
admin_url="$(scripts/postgres.sh)"
db="sst_bench_$RANDOM$RANDOM"
psql -q "$admin_url" -c "CREATE DATABASE $db"
db_url="${admin_url%/*}/$db"
cleanup() {
  bench_cleanup
  psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT
export SANDSTONE_SECRET_KEY="$(openssl rand -hex 32)"
base=$((20000 + RANDOM % 20000))
# A node alone (its own SQLite), and two nodes sharing PostgreSQL.
start_daemon alone $((base)) --no-pool -- --warm-pool 0
start_daemon n1 $((base + 1)) --no-pool -- --warm-pool 0 --database-url "$db_url" --node-id node-1
start_daemon n2 $((base + 2)) --no-pool -- --warm-pool 0 --database-url "$db_url" --node-id node-2
sleep 1
token() { cat "$work/$1/admin.token"; }

python3 - "$base" "$(token alone)" "$(token n1)" <<'PY'
import http.client, json, statistics, sys, time
base, alone_token, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def conn(port):
    return http.client.HTTPConnection("127.0.0.1", port)

def call(c, tok, method, path, body=None):
    h = {"authorization": f"Bearer {tok}"}
    if body is not None:
        h["content-type"] = "application/json"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    assert r.status < 300, (r.status, data)
    return json.loads(data) if data else None

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]

# 1. Forwarded vs direct: the sandbox lands on node-1 (lowest id, both empty).
c1, c2 = conn(base + 1), conn(base + 2)
sid = call(c1, token, "POST", "/api/v1/sandboxes", {})["data"]["sandbox_id"]
path = f"/api/v1/sandboxes/{sid}/files/stat?path=/workspace"
for c in (c1, c2):
    for _ in range(50):
        call(c, token, "GET", path)
direct, forwarded = [], []
for _ in range(10):  # interleaved rounds: the machine's noise hits both alike
    for c, out in ((c1, direct), (c2, forwarded)):
        for _ in range(50):
            t = time.perf_counter()
            call(c, token, "GET", path)
            out.append((time.perf_counter() - t) * 1000)
print("| call (files/stat, 500 each) | p50 ms | p95 ms |")
print("|---|---|---|")
print(f"| direct to its node | {pct(direct, .5):.3f} | {pct(direct, .95):.3f} |")
print(f"| through another node | {pct(forwarded, .5):.3f} | {pct(forwarded, .95):.3f} |")
print(f"| forwarding adds (p50) | {pct(forwarded, .5) - pct(direct, .5):+.3f} | |")
call(c1, token, "DELETE", f"/api/v1/sandboxes/{sid}")

# 2. Creates: alone vs through node-2 placed on node-1. Node-1 holds the
# fewest (node-2 is given two to hold), so node-2 forwards each create.
ca = conn(base)
hold = [call(c2, token, "POST", "/api/v1/sandboxes", {})["data"]["sandbox_id"] for _ in range(2)]
time.sleep(6)  # node-2's announcement shows them
alone, placed, made = [], [], []
for _ in range(20):
    for c, tok, out in ((ca, alone_token, alone), (c2, token, placed)):
        t = time.perf_counter()
        r = call(c, tok, "POST", "/api/v1/sandboxes", {})
        out.append((time.perf_counter() - t) * 1000)
        made.append((c, tok, r["data"]["sandbox_id"]))
        if c is c2:
            # Deleted at once: node-1 stays the least loaded.
            call(c2, token, "DELETE", f"/api/v1/sandboxes/{r['data']['sandbox_id']}")
print()
print("| create (20 each, cold) | p50 ms |")
print("|---|---|")
print(f"| on a node alone | {pct(alone, .5):.1f} |")
print(f"| through node-2, placed on node-1 | {pct(placed, .5):.1f} |")
print(f"| placement and forwarding add (p50) | {pct(placed, .5) - pct(alone, .5):+.1f} |")
for c, tok, sid in made:
    if c is ca:
        call(ca, alone_token, "DELETE", f"/api/v1/sandboxes/{sid}")
for sid in hold:
    call(c2, token, "DELETE", f"/api/v1/sandboxes/{sid}")
PY

# 3. Checkpoints against moto.
port=$((base + 10))
moto_pid="$(scripts/s3-server.sh start "$port")"
pids+=("$moto_pid")
curl -fsS -X PUT "http://127.0.0.1:$port/bench" >/dev/null
echo
AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_REGION=us-east-1 \
  cargo run --quiet --release -p sandstone-checkpoint --example bench -- s3://bench/run "${BENCH_CKPT_MIB:-1024}"

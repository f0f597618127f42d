#!/usr/bin/env bash
# Egress benchmark (run as root): builds a fake internet (a network
# namespace with an HTTP server and DNS), starts a daemon with egress on,
# and measures in one run, each against a direct baseline on this machine:
#  - an HTTP/1.1 keep-alive request through the proxy vs direct;
#  - a new connection + request through the proxy vs direct, with 1 and
#    with 200 sandboxes (and their policies) loaded;
#  - a cached DNS answer from the policy resolver;
#  - sandbox create with networking vs without.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-egress-bench-XXXXXX)"
ns="fibench$$"
pids=()
cleanup() {
  for d in "$work"/*/; do
    [ -f "$d/port" ] || continue
    port=$(cat "$d/port")
    ids=$(SANDSTONE_DATA_DIR="$d" SANDSTONE_URL="http://127.0.0.1:$port" "$s" ls --json 2>/dev/null \
      | python3 -c 'import json,sys; print(" ".join(x["id"] for x in json.load(sys.stdin)["sandboxes"]))' || true)
    [ -n "$ids" ] && SANDSTONE_DATA_DIR="$d" SANDSTONE_URL="http://127.0.0.1:$port" "$s" rm $ids >/dev/null 2>&1 || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  for d in "$work"/*/pool; do umount -l "$d" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# The fake internet: 10.98.0.2 serves HTTP and DNS (web.test -> 10.98.0.2).
ip netns add "$ns"
ip link add "fibh$$" type veth peer name eth0 netns "$ns"
ip addr add 10.98.0.1/24 dev "fibh$$"; ip link set "fibh$$" up
ip -n "$ns" addr add 10.98.0.2/24 dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
ip netns exec "$ns" python3 tests/fake_internet/servers.py 10.98.0.2 10.98.0.2 >/dev/null &
pids+=($!)
for _ in $(seq 50); do curl -fsS -m 1 -H 'Host: web.test' http://10.98.0.2/ >/dev/null 2>&1 && break; sleep 0.1; done
start() { # name port serve-args...
  local name=$1 port=$2; shift 2
  "$s" setup --no-debian --data-dir "$work/$name" --pool-gib 16 >/dev/null 2>&1
  echo "$port" > "$work/$name/port"
  SANDSTONE_LOG=warn "$s" serve --data-dir "$work/$name" --listen "127.0.0.1:$port" --warm-pool 0 "$@" &
  pids+=($!)
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "daemon $name did not start" >&2; exit 1
}
port=$(( 20000 + RANDOM % 20000 ))
start net "$port" --egress-pool 10.97.0.0/16 --dns-upstream 10.98.0.2:53
start plain "$((port + 1))"
cli() { local name=$1 port=$2; shift 2; SANDSTONE_DATA_DIR="$work/$name" SANDSTONE_URL="http://127.0.0.1:$port" "$s" "$@"; }
id=$(cli net "$port" create)
cli net "$port" policy set "$id" --allow web.test --allow 10.98.0.0/24 >/dev/null
py="$(cat tests/fake_internet/latency.py)"
inside() { cli net "$port" exec "$id" -- python3 -c "$py" "$@"; }
direct() { python3 tests/fake_internet/latency.py "$@"; }
row() { printf '%-46s p50 %8s ms  p99 %8s ms\n' "$1" $2; }
echo "== egress (proxy) vs direct, same machine"
row "keep-alive request, direct" "$(direct keepalive web.test 10.98.0.2 1000)"
row "keep-alive request, through the proxy" "$(inside keepalive web.test 10.98.0.2 1000)"
row "new connection + request, direct" "$(direct connect web.test 10.98.0.2 300)"
row "new connection + request, proxy (1 sandbox)" "$(inside connect web.test 10.98.0.2 300)"
row "DNS answer from the resolver (cached)" "$(inside dns web.test 1000)"
for _ in $(seq 199); do
  other=$(cli net "$port" create)
  cli net "$port" policy set "$other" --allow web.test --allow '*.example.com' --allow 10.98.0.0/24 >/dev/null
done
row "new connection + request, proxy (200 sandboxes)" "$(inside connect web.test 10.98.0.2 300)"
echo "== network setup cost on create (same runs, cold creates)"
cli net "$port" bench -i 30 --scale 1 | grep "create at N=1" | sed 's/^/with egress:    /'
cli plain "$((port + 1))" bench -i 30 --scale 1 | grep "create at N=1" | sed 's/^/without egress: /'

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
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-egress-bench-XXXXXX)"
ns="fibench$$"
pids=()
cleanup() {
  bench_cleanup
  ip netns del "$ns" 2>/dev/null || true
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
port=$(( 20000 + RANDOM % 20000 ))
start_daemon net "$port" --pool-gib 16 -- --warm-pool 0 --egress-pool 10.97.0.0/16 --dns-upstream 10.98.0.2:53
start_daemon plain "$((port + 1))" --pool-gib 16 -- --warm-pool 0
id=$(on net create)
on net policy set "$id" --allow web.test --allow 10.98.0.0/24 >/dev/null
py="$(cat tests/fake_internet/latency.py)"
inside() { on net exec "$id" -- python3 -c "$py" "$@"; }
direct() { python3 tests/fake_internet/latency.py "$@"; }
row() { printf '%-46s p50 %8s ms  p99 %8s ms\n' "$1" $2; }
echo "== egress (proxy) vs direct, same machine"
row "keep-alive request, direct" "$(direct keepalive web.test 10.98.0.2 1000)"
row "keep-alive request, through the proxy" "$(inside keepalive web.test 10.98.0.2 1000)"
row "new connection + request, direct" "$(direct connect web.test 10.98.0.2 300)"
row "new connection + request, proxy (1 sandbox)" "$(inside connect web.test 10.98.0.2 300)"
row "DNS answer from the resolver (cached)" "$(inside dns web.test 1000)"
for _ in $(seq 199); do
  other=$(on net create)
  on net policy set "$other" --allow web.test --allow '*.example.com' --allow 10.98.0.0/24 >/dev/null
done
row "new connection + request, proxy (200 sandboxes)" "$(inside connect web.test 10.98.0.2 300)"
echo "== network setup cost on create (same runs, cold creates)"
on net bench -i 30 --scale 1 | grep "create at N=1" | sed 's/^/with egress:    /'
on plain bench -i 30 --scale 1 | grep "create at N=1" | sed 's/^/without egress: /'

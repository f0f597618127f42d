#!/usr/bin/env bash
# Benchmarks in one run (release build; run as root):
#  1. the foundation figures (create, exec, REPL, files, 200 sandboxes) on a
#     btrfs pool, with the `unshare` baseline measured by the same program;
#  2. the durable operations on the btrfs pool;
#  3. the durable operations on the `dir` driver, for comparison.
# Extra arguments go to the foundation run (e.g. -i 100 --scale 200).
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-bench-XXXXXX)"
pids=()
cleanup() {
  # Delete what the runs left, then stop the daemons (which empties their
  # warm pools), then remove the pools.
  for d in "$work"/*/; do
    [ -f "$d/admin.token" ] || continue
    port=$(cat "$d/port")
    ids=$(SANDSTONE_DATA_DIR="$d" SANDSTONE_URL="http://127.0.0.1:$port" "$s" ls --json 2>/dev/null \
      | python3 -c 'import json,sys; print(" ".join(x["id"] for x in json.load(sys.stdin)["sandboxes"]))' || true)
    [ -n "$ids" ] && SANDSTONE_DATA_DIR="$d" SANDSTONE_URL="http://127.0.0.1:$port" "$s" rm $ids >/dev/null 2>&1 || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for d in "$work"/*/pool; do umount -l "$d" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
start() { # name port setup-args... -- serve-args...
  local name=$1 port=$2; shift 2
  local setup=() serve=()
  while [ "$1" != "--" ]; do setup+=("$1"); shift; done; shift
  serve=("$@")
  "$s" setup --no-debian --data-dir "$work/$name" "${setup[@]}" >/dev/null 2>&1
  echo "$port" > "$work/$name/port"
  SANDSTONE_LOG=warn "$s" serve --data-dir "$work/$name" --listen "127.0.0.1:$port" "${serve[@]}" &
  pids+=($!)
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "daemon $name did not start" >&2; exit 1
}
port=$(( 20000 + RANDOM % 20000 ))
# Cold creates are measured without a warm pool; the durable runs use one.
start cold "$port" --pool-gib 32 -- --warm-pool 0
start btrfs "$((port + 1))" --pool-gib 32 -- --warm-pool 2
start dir "$((port + 2))" --no-pool -- --pool dir --warm-pool 2
on() { SANDSTONE_DATA_DIR="$work/$1" SANDSTONE_URL="http://127.0.0.1:$2" "$s" bench "${@:3}"; }
echo "== foundation (btrfs pool, cold creates)"
on cold "$port" "$@"
echo "== durable operations, btrfs pool"
on btrfs "$((port + 1))" --durable -i 20 --paused 1000
echo "== durable operations, dir driver"
on dir "$((port + 2))" --durable -i 5 --paused 100

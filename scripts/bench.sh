#!/usr/bin/env bash
# Benchmarks in one run (release build; run as root):
#  1. the foundation figures (create, exec, REPL, files, 200 sandboxes) on a
#     btrfs pool, with the `unshare` baseline measured by the same program;
#  2. the durable operations on the btrfs pool;
#  3. the durable operations on the `dir` driver, for comparison.
# Extra arguments go to the foundation run (e.g. -i 100 --scale 200).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))
# Cold creates are measured without a warm pool; the durable runs use one.
start_daemon cold "$port" --pool-gib 32 -- --warm-pool 0
# A pause with memory writes it to disk on the btrfs daemon (with the CRIU
# scripts/test.sh's setup unpacked, when there is one) and keeps it frozen
# in place on the dir daemon (none).
start_daemon btrfs "$((port + 1))" --pool-gib 32 -- --warm-pool 2 --criu "${SANDSTONE_CACHE:-/var/cache/sandstone}/setup/criu"
start_daemon dir "$((port + 2))" --no-pool -- --pool dir --warm-pool 2
echo "== foundation (btrfs pool, cold creates)"
on cold bench "$@"
echo "== durable operations, btrfs pool"
on btrfs bench --durable -i 20 --paused 1000
echo "== durable operations, dir driver"
on dir bench --durable -i 5 --paused 100

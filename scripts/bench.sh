#!/usr/bin/env bash
# Starts a throw-away daemon (release build) and runs `sandstone bench`
# against it. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(scripts/build.sh release)"
data="$(mktemp -d /var/tmp/sandstone-bench-XXXXXX)"
port=$(( 20000 + RANDOM % 20000 ))
export SANDSTONE_DATA_DIR="$data" SANDSTONE_URL="http://127.0.0.1:$port" SANDSTONE_LOG=warn
"$out/sandstone" serve --listen "127.0.0.1:$port" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -fsS "$SANDSTONE_URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
"$out/sandstone" bench "$@"

#!/usr/bin/env bash
# Builds Sandstone, prepares the host, starts the daemon with its embedded
# defaults (SQLite and local storage in /var/lib/sandstone) and runs a first
# command in a new sandbox. Run as root. The daemon keeps running; its log is
# in $DATA_DIR/daemon.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export SANDSTONE_DATA_DIR="${SANDSTONE_DATA_DIR:-/var/lib/sandstone}"
export SANDSTONE_URL="${SANDSTONE_URL:-http://127.0.0.1:7700}"
out="$(scripts/build.sh release)"
sandstone="$out/sandstone"
"$sandstone" setup
if ! curl -fsS "$SANDSTONE_URL/healthz" >/dev/null 2>&1; then
  mkdir -p "$SANDSTONE_DATA_DIR"
  nohup "$sandstone" serve >"$SANDSTONE_DATA_DIR/daemon.log" 2>&1 &
  for _ in $(seq 100); do curl -fsS "$SANDSTONE_URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
fi
id="$("$sandstone" create)"
echo "created sandbox $id"
"$sandstone" exec "$id" -- sh -c 'echo "hello from $(hostname): $(id -un) in $(pwd)"; uname -sr'
echo "try: $sandstone shell $id    $sandstone exec $id -- cat /etc/os-release    $sandstone rm $id"

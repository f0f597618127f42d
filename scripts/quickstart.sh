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
# Networking is on and default-deny; the python preset opens PyPI only.
id="$("$sandstone" create --allow python)"
echo "created sandbox $id (egress: PyPI only)"
"$sandstone" exec "$id" -- sh -c 'echo "hello from $(hostname): $(id -un) in $(pwd)"; uname -sr'
"$sandstone" exec "$id" -- sh -c 'pip install --quiet --disable-pip-version-check six && python3 -c "import six; print(\"pip install works: six\", six.__version__)"' \
  || echo "pip install failed: is PyPI reachable from this host? $sandstone audit $id --denied says what was denied"
"$sandstone" exec "$id" -- curl -sS --max-time 5 https://example.com >/dev/null 2>&1 \
  || echo "example.com is denied, as it should be: $sandstone audit $id --denied"
echo "try: $sandstone shell $id    $sandstone exec $id -- cat /etc/os-release    $sandstone rm $id"

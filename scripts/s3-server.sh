#!/usr/bin/env bash
# An S3-compatible server for tests and benchmarks: moto's, from PyPI, in its
# own virtualenv (installed once, then reused).
#
#   scripts/s3-server.sh install         installs it; prints the binary's path
#   scripts/s3-server.sh start PORT      installs it if needed, starts it on
#                                        127.0.0.1:PORT in the background,
#                                        waits until it answers; prints its pid
#
# The checkpoint tests (crates/sandstone-checkpoint/tests/s3.rs) start their
# own server from the same binary: SANDSTONE_MOTO_SERVER, else
# $SANDSTONE_MOTO_VENV/bin/moto_server (default /opt/sandstone-moto).
set -euo pipefail
venv="${SANDSTONE_MOTO_VENV:-/opt/sandstone-moto}"
version="5.2.5"
bin="$venv/bin/moto_server"

install() {
  if [ -x "$bin" ] && "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$version')" 2>/dev/null; then
    return
  fi
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$version" >&2
}

case "${1:-}" in
  install)
    install
    echo "$bin"
    ;;
  start)
    port="${2:?usage: $0 start PORT}"
    install
    log="${TMPDIR:-/tmp}/sandstone-moto-$port.log"
    nohup "$bin" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      if curl -fsS -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null; then
        echo "$pid"
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    echo "moto_server did not start on port $port; see $log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  *)
    echo "usage: $0 install | start PORT" >&2
    exit 2
    ;;
esac

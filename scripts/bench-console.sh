#!/usr/bin/env bash
# The web console's targets (run as root): first load <= 300 KiB transferred
# (gzipped, as the daemon serves its embedded assets) and interactive
# <= 1 s in headless Chromium, against the same browser loading /healthz
# from the same daemon; a list of 1,000 sandboxes rendered <= 200 ms (from
# the list response's last byte to the frame showing its rows painted). The
# 1,000 sandboxes are real (`--no-network`, created through the API: about
# half a minute). tests/console/bench_console.py measures and prints the
# figures against the targets; it exits non-zero when one is missed.
#
# Needs Debian's chromium and the venv scripts/test.sh makes (Playwright).
# SANDSTONE_BIN names a daemon binary to use instead of a release build
# (its sandstone-init beside it, or SANDSTONE_INIT). Bounded: a few
# minutes; everything it started is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
python="${SANDSTONE_SDK_PYTHON:-${SANDSTONE_CACHE:-/var/cache/sandstone}/sdk-venv/bin/python}"
"$python" -c 'import playwright' 2>/dev/null || { echo "no Playwright in $python: run scripts/test.sh once" >&2; exit 1; }
if [ -n "${SANDSTONE_BIN:-}" ]; then
  s="$SANDSTONE_BIN"
else
  s="$(scripts/build.sh release)/sandstone"
fi
export SANDSTONE_INIT="${SANDSTONE_INIT:-$(dirname "$s")/sandstone-init}"
# The embedded assets, not a development directory.
unset SANDSTONE_CONSOLE_DIR
work="$(mktemp -d /var/tmp/sandstone-console-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT

port=$(( 20000 + RANDOM % 20000 ))
start_daemon console "$port" --pool-gib 4 -- --warm-pool 0 --capacity 1200
echo "== console bench; $(nproc) CPUs; $("$s" --version 2>/dev/null || echo sandstone)"
timeout --kill-after=10 900 "$python" tests/console/bench_console.py \
  "http://127.0.0.1:$port" "$(cat "$work/console/admin.token")"

#!/usr/bin/env bash
# Runs every test: unit, end-to-end (real daemon and sandboxes; needs root),
# security, CLI, the debian template, and the Sandbox0 Python SDK against the
# daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SANDSTONE_CACHE:-/var/cache/sandstone}"
venv="$cache/sdk-venv"
# The Sandbox0 SDK, and the official Anthropic SDK (client and
# EnvironmentWorker) for the Managed Agents tests.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sandbox0, anthropic' 2>/dev/null; then
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'sandbox0==0.10.4' 'anthropic==2.14.0'
fi
out="$(scripts/build.sh debug)"
export SANDSTONE_INIT="$out/sandstone-init"
# The default and debian templates (debootstrap, about 90 s each) are built
# once and cached.
"$out/sandstone" setup --no-pool --data-dir "$cache/setup" >&2
export SANDSTONE_TEST_DEBIAN="$cache/setup/templates/debian"
export SANDSTONE_TEST_DEFAULT="$cache/setup/templates/default"
export SANDSTONE_SDK_PYTHON="$venv/bin/python"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"

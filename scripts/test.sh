#!/usr/bin/env bash
# Runs every test: unit, end-to-end (real daemon and sandboxes; needs root),
# security, CLI, the debian template, and the Sandbox0 Python SDK against the
# daemon, the checkpoint store against an S3 server (scripts/s3-server.sh);
# then again with the metadata in PostgreSQL (scripts/postgres.sh installs
# and starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SANDSTONE_CACHE:-/var/cache/sandstone}"
venv="$cache/sdk-venv"
# The Sandbox0 SDK, the official Anthropic SDK (client and
# EnvironmentWorker) for the Managed Agents tests, Schemathesis for the
# contract test against Sandbox0's OpenAPI spec, the MCP SDK for the MCP
# server the agents' tests call, and Playwright (driving Debian's chromium)
# for the console's browser test.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sandbox0, anthropic, schemathesis, mcp, playwright' 2>/dev/null; then
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'sandbox0==0.10.4' 'anthropic==2.14.0' 'schemathesis==4.32.5' 'mcp==2.3.0' 'playwright==1.65.3'
fi
# An S3-compatible server (moto, from PyPI) for the checkpoint store's
# tests; they start their own from this binary.
export SANDSTONE_MOTO_SERVER="$(scripts/s3-server.sh install)"
out="$(scripts/build.sh debug)"
export SANDSTONE_INIT="$out/sandstone-init"
# The default and debian templates (debootstrap, about 90 s each) are built
# once and cached.
"$out/sandstone" setup --no-pool --data-dir "$cache/setup" >&2
export SANDSTONE_TEST_DEBIAN="$cache/setup/templates/debian"
export SANDSTONE_TEST_DEFAULT="$cache/setup/templates/default"
# CRIU, which setup unpacks (Debian's package): the pause-with-memory tests.
export SANDSTONE_TEST_CRIU="$cache/setup/criu"
export SANDSTONE_SDK_PYTHON="$venv/bin/python"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# One closing line per pass (cargo prints one per test binary).
summary() {
  awk -v pass="$1" '/^test result:/ { p += $4; f += $6; s += $8 }
    END { printf "tests (%s): %d passed, %d failed, %d skipped\n", pass, p, f, s }' "$log"
}
start=$(date +%s)
# Pass 1: every store is SQLite in a data dir (one machine, no flags).
env -u SANDSTONE_TEST_DATABASE_URL cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
summary sqlite
echo "test.sh: the SQLite pass took $(( $(date +%s) - start )) s"
# Pass 2: the same tests with every store in PostgreSQL (each test daemon,
# plane and store on a fresh database of its own), for the packages whose
# tests store anything: the database crate (both backends), the agents
# control plane and the daemon end to end. The other crates' tests open no
# database. SANDSTONE_TEST_POSTGRES=0 skips the pass.
if [ "${SANDSTONE_TEST_POSTGRES:-1}" != 0 ]; then
  start=$(date +%s)
  SANDSTONE_TEST_DATABASE_URL="$(scripts/postgres.sh)"
  export SANDSTONE_TEST_DATABASE_URL
  cargo test -p sandstone-db -p sandstone-agents -p sandstone --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
  summary postgres
  echo "test.sh: the PostgreSQL pass took $(( $(date +%s) - start )) s"
fi
exit "$status"

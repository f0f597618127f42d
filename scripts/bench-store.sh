#!/usr/bin/env bash
# The metadata store under busy Managed Agents sessions (issue #19; run as
# root, a release build): `sandstone bench --store` on a scratch SQLite
# database in a temporary directory, then on a scratch PostgreSQL database
# (scripts/postgres.sh starts the local one). Each run measures its own
# baseline first: one session appending alone. Bounded: about 25 s a run.
# Extra arguments go to both runs (e.g. --sessions 100).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-store-bench-XXXXXX)"
db="sandstone_bench_store_$$"
admin=""
cleanup() {
  [ -n "$admin" ] && psql --quiet --no-psqlrc "$admin" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
echo "== SQLite"
"$s" bench --store --data-dir "$work" "$@"
echo "== PostgreSQL"
admin="$(scripts/postgres.sh)"
psql --quiet --no-psqlrc "$admin" -c "CREATE DATABASE $db" >/dev/null
"$s" bench --store --database-url "${admin%/*}/$db" "$@"

#!/usr/bin/env bash
# A local PostgreSQL for the tests: installs Debian's package if it is
# missing, starts the newest cluster, makes (or keeps) a `sandstone` role
# that may create databases, and prints its admin URL — and nothing else —
# on stdout:
#   export SANDSTONE_TEST_DATABASE_URL="$(scripts/postgres.sh)"
# Idempotent. Needs root. The role's password is made once and kept in
# $SANDSTONE_CACHE (default /var/cache/sandstone), 0600.
set -euo pipefail
cache="${SANDSTONE_CACHE:-/var/cache/sandstone}"
if ! command -v pg_lsclusters >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
cluster() { pg_lsclusters --no-header | sort -V | tail -n 1; }
if [ -z "$(cluster)" ]; then
  pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -n 1)" main >&2
fi
read -r version name port status _ <<<"$(cluster)"
case "$status" in
  online*) ;;
  *) pg_ctlcluster "$version" "$name" start >&2 ;;
esac
mkdir -p "$cache"
secret="$cache/postgres.password"
if [ ! -s "$secret" ]; then
  (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$secret")
fi
password="$(cat "$secret")"
# Hex only: safe inside the quotes. CREATEDB: each test makes its own.
runuser -u postgres -- psql --quiet --no-psqlrc -v ON_ERROR_STOP=1 --port "$port" >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sandstone') THEN
    CREATE ROLE sandstone LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE sandstone LOGIN CREATEDB PASSWORD '$password';
SQL
echo "postgres://sandstone:$password@127.0.0.1:$port/postgres"

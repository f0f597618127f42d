#!/usr/bin/env bash
# Managed Agents control-plane benchmark (run as root): one daemon with the
# scripted fake model (tests/fake_model/server.py) behind its agent loop,
# measured from one client (tests/fake_model/bench_agents.py) against a
# baseline taken in the same run (GET /healthz on a keep-alive connection):
#  - poll -> ack -> heartbeat round trips over 300 queued sessions;
#  - a user.message sent -> its frame on an open SSE stream (300 sends);
#  - 1,000 idle long-pollers held for 10 s: the daemon's RSS before, during
#    and after, and that every poll answered 200 null;
#  - 100 sessions driven by the scripted model at once: wall time, errors,
#    per-session completion.
# Bounded: the client is killed after 10 minutes; everything it started
# (daemon, fake model, data dir, pool) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-agents-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT
# 1,000 pollers: as many sockets on each side (the daemon inherits this).
ulimit -n 4096

# The scripted model: a quick answer, one text block and end_turn, on
# every turn (one session takes many turns in the SSE run).
mkdir -p "$work/model"
python3 -c '
import json, sys
turn = {"content": [{"type": "text", "text": "pong"}], "stop_reason": "end_turn"}
json.dump({"turns": [turn] * 2000}, open(sys.argv[1], "w"))' "$work/model/quick.json"
start_fake_model "$work/model"

# BENCH_PG=1: the daemon keeps its state in PostgreSQL (a database of its
# own, dropped at the end) instead of SQLite.
db=()
if [ "${BENCH_PG:-}" = 1 ]; then
  admin_url="$(scripts/postgres.sh)"
  pg_db="bench_agents_$$"
  psql -q "$admin_url" -c "CREATE DATABASE $pg_db"
  db=(--database-url "${admin_url%/*}/$pg_db")
  drop_db() { bench_cleanup; psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" || true; }
  trap drop_db EXIT
fi

port=$(( 20000 + RANDOM % 20000 ))
start_daemon agents "$port" --pool-gib 16 -- --warm-pool 0 "${db[@]}" \
  --model-base-url "http://127.0.0.1:$model_port" --model-api-key-file "$work/model.key"
daemon_pid=${pids[-1]}

echo "== Managed Agents control plane (/v1), one daemon, same client; $(nproc) CPUs"
timeout --kill-after=10 600 python3 tests/fake_model/bench_agents.py \
  --url "http://127.0.0.1:$port" --token-file "$work/agents/admin.token" \
  --pid "$daemon_pid" --model scripted-quick --model-pid "$model_pid" "$@"

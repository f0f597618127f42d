#!/usr/bin/env bash
# Log ingestion (issue #17), against baselines in the same run (run as root;
# a release build). A process in a sandbox writes 256 MiB to stdout in
# 64 KiB writes and times itself; four ways, interleaved, 5 rounds:
#  - null: its stdout is /dev/null (no pipe at all: the writer's own speed);
#  - piped: its stdout is a pipe whose reader (cat) throws it away;
#  - unlogged: stdout is captured by init and sent to the caller (an
#    attached run), on a daemon with --log-retention-bytes 0;
#  - logged: the same with the sandbox's durable log (the default), so
#    logged / unlogged is the log's own cost.
# Reports MiB/s (median) and the ratios. Bounded: a few minutes at most.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
export SANDSTONE_INIT="$out/sandstone-init"
work="$(mktemp -d /var/tmp/sandstone-logs-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT

cat > "$work/writer.py" <<'PY'
import os, sys, time
chunk = (b"x" * 99 + b"\n") * 655
count = (256 << 20) // len(chunk)
started = time.perf_counter()
for _ in range(count):
    os.write(1, chunk)
elapsed = time.perf_counter() - started
open("/tmp/elapsed", "w").write(f"{count * len(chunk) / elapsed / (1 << 20):.1f}\n")
PY

port=$(( 20000 + RANDOM % 20000 ))
start_daemon logged "$port" --pool-gib 4 -- --warm-pool 0
start_daemon unlogged "$(( port + 1 ))" --pool-gib 4 -- --warm-pool 0 --log-retention-bytes 0
declare -A sb
for d in logged unlogged; do
  sb[$d]="$(on "$d" create --template host --memory 2Gi)"
  on "$d" cp "$work/writer.py" "${sb[$d]}:/tmp/writer.py"
done

# run DAEMON SCRIPT: MiB/s the writer measured, on DAEMON's sandbox.
run() {
  local d=$1 cmd=$2 p token
  p="$(cat "$work/$d/port")"
  token="$(cat "$work/$d/admin.token")"
  curl -fsS --max-time 120 -o /dev/null -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"type\":\"cmd\",\"cmd\":{\"command\":[\"sh\",\"-c\",\"$cmd\"]},\"wait_until_done\":true,\"timeout_sec\":100}" \
    "http://127.0.0.1:$p/api/v1/sandboxes/${sb[$d]}/contexts"
  curl -fsS --max-time 30 -H "authorization: Bearer $token" \
    "http://127.0.0.1:$p/api/v1/sandboxes/${sb[$d]}/files?path=/tmp/elapsed"
}

echo "== log ingestion: 256 MiB in 64 KiB writes, MiB/s the writer saw; $(nproc) CPUs"
declare -A got
for round in 1 2 3 4 5; do
  got[null]+="$(run logged 'python3 /tmp/writer.py > /dev/null') "
  got[piped]+="$(run logged 'python3 /tmp/writer.py | cat > /dev/null') "
  got[unlogged]+="$(run unlogged 'python3 /tmp/writer.py') "
  got[logged]+="$(run logged 'python3 /tmp/writer.py') "
done
python3 - "${got[null]}" "${got[piped]}" "${got[unlogged]}" "${got[logged]}" <<'PY'
import statistics, sys
names = ["null", "piped", "unlogged", "logged"]
med = {}
for name, text in zip(names, sys.argv[1:]):
    xs = [float(x) for x in text.split()]
    med[name] = statistics.median(xs)
    print(f"{name:>10}: median {med[name]:8.1f} MiB/s  (runs: {', '.join(f'{x:.0f}' for x in xs)})")
print(f"logged / unlogged: {med['logged'] / med['unlogged']:.3f}  (the log's own cost; target >= 0.90)")
print(f"logged / piped:    {med['logged'] / med['piped']:.3f}  (against a pipe nobody keeps)")
PY
du -sh "$work"/logged/pool/sandboxes/*/logs 2>/dev/null | sed 's/^/log on disk: /' || true

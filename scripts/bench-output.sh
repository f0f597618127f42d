#!/usr/bin/env bash
# Output flood: N parallel synchronous execs (POST .../contexts with
# wait_until_done) that each print SIZE bytes of NUL, against a daemon of its
# own. Reports the daemon's RSS before, its peak (VmHWM) during the flood,
# and the response sizes; every call is bounded by a timeout.
# Usage: scripts/bench-output.sh [debug|release] [PARALLEL] [SIZE]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
profile="${1:-release}" parallel="${2:-20}" size="${3:-100000000}"
out="$(scripts/build.sh "$profile")"
s="$out/sandstone"
export SANDSTONE_INIT="$out/sandstone-init"
work="$(mktemp -d /var/tmp/sandstone-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))
start_daemon flood "$port" --pool-gib 8 -- --warm-pool 0
daemon=${pids[0]}
url="http://127.0.0.1:$port"
token="$(cat "$work/flood/admin.token")"
id=$(on flood create --template host --memory 4Gi)
rss() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$daemon/status"; }
echo "== $parallel parallel synchronous execs of $size bytes of NUL ($profile build)"
echo "daemon RSS before: $(( $(rss VmRSS) / 1024 )) MiB"
body="{\"type\":\"cmd\",\"cmd\":{\"command\":[\"head\",\"-c\",\"$size\",\"/dev/zero\"]},\"wait_until_done\":true,\"timeout_sec\":120}"
started=$(date +%s.%N)
curls=()
for i in $(seq "$parallel"); do
  curl -sS --max-time 180 -o "$work/resp.$i" -w '%{http_code} %{size_download}\n' \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "$body" "$url/api/v1/sandboxes/$id/contexts" > "$work/code.$i" &
  curls+=($!)
done
for c in "${curls[@]}"; do wait "$c" || true; done
elapsed=$(echo "$(date +%s.%N) - $started" | bc)
echo "daemon peak RSS (VmHWM): $(( $(rss VmHWM) / 1024 )) MiB; RSS after: $(( $(rss VmRSS) / 1024 )) MiB"
printf 'wall time: %.1f s\n' "$elapsed"
echo "responses (HTTP status, bytes), counted:"
cat "$work"/code.* | sort | uniq -c
python3 - "$work" <<'EOF'
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/resp.*"))[:1]:
    try:
        d = json.load(open(f))["data"]
    except Exception as e:
        print("first response not JSON:", e)
        break
    print("first response: output_truncated=%s, chars: output_raw=%d stdout=%d stderr=%d" % (
        d.get("output_truncated"), len(d.get("output_raw") or ""), len(d.get("stdout") or ""),
        len(d.get("stderr") or "")))
EOF

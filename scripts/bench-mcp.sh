#!/usr/bin/env bash
# MCP tool-call overhead (run as root): one MCP server (the `mcp` SDK,
# tests/fake_internet/mcp_server.py, needing a bearer token) on loopback, one
# daemon with the scripted model. In one run, the same `echo` call is made
# directly from the host over one kept-alive MCP session (the baseline), and
# by the agent loop for a session whose model calls it 100 times, with the
# token from the session's vault (agent.mcp_tool_use -> agent.mcp_tool_result).
# Target: overhead <= +2 ms p50. Bounded: the driver stops after 5 minutes;
# everything started is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
py="${SANDSTONE_SDK_PYTHON:-/var/cache/sandstone/sdk-venv/bin/python}"
"$py" -c 'import mcp, httpx' 2>/dev/null || { echo "needs the SDK venv with mcp (scripts/test.sh makes it): $py" >&2; exit 1; }
work="$(mktemp -d /var/tmp/sandstone-mcp-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT
calls=100

# The model calls `echo` $calls times, then ends its turn.
mkdir -p "$work/scripts"
"$py" - "$calls" > "$work/scripts/bench_mcp.json" <<'PY'
import json, sys
call = {"content": [{"type": "tool_use", "name": "echo", "input": {"text": "hi"}}], "stop_reason": "tool_use"}
end = {"content": [{"type": "text", "text": "done"}], "stop_reason": "end_turn"}
print(json.dumps({"turns": [call] * int(sys.argv[1]) + [end]}))
PY
start_fake_model "$work/scripts"

mcp_port=$(( 20000 + RANDOM % 20000 ))
mcp_token="sst-bench-$RANDOM$RANDOM"
FAKE_TOKEN="$mcp_token" "$py" tests/fake_internet/mcp_server.py 127.0.0.1 "$mcp_port" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$mcp_port/mcp" && break; sleep 0.1; done

port=$(( 20000 + RANDOM % 20000 ))
start_daemon mcp "$port" -- \
  --model-base-url "http://127.0.0.1:$model_port" --model-api-key-file "$work/model.key"

echo "== MCP tool call: direct from the host vs the agent loop; $(nproc) CPUs"
MCP_URL="http://127.0.0.1:$mcp_port/mcp" MCP_TOKEN="$mcp_token" URL="http://127.0.0.1:$port" \
  TOKEN="$(cat "$work/mcp/admin.token")" CALLS="$calls" \
  timeout --kill-after=10 300 "$py" tests/fake_internet/bench_mcp.py

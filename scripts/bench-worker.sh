#!/usr/bin/env bash
# Environment-worker benchmark (run as root). One daemon (warm pool 8) with
# the scripted model behind its agent loop, one client
# (tests/sdk/worker_session.py) playing tests/fake_model/scripts/bench_tools
# (10 x write, read, bash `echo hi`), in one run:
#  1. the official Python SDK worker serves five sessions, one after
#     another (the baseline);
#  2. `sandstone worker` serves five such sessions: per-tool dispatch overhead
#     (tool use on the stream -> its result on the stream), ratio to 1;
#  3. poll -> sandbox ready (claimed from the warm pool) and, for a second
#     turn after the sandbox was paused, poll -> sandbox ready (resumed),
#     from the worker's log, beside the daemon's own claim and resume
#     latency measured directly in the same run;
#  4. one worker process serving 50 sessions at once (each model turn
#     paced at 400 ms): the same percentiles, and the worker's CPU time;
#  5. a second turn's message, 4 s after the first ended (the worker let
#     the item go and polls idle) -> its first tool running (it prints
#     the clock), the official SDK worker vs ours.
# Bounded: each client run is killed after 10 minutes; everything started is
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
py="${SANDSTONE_SDK_PYTHON:-/var/cache/sandstone/sdk-venv/bin/python}"
[ -x "$py" ] || { echo "needs the SDK venv (scripts/test.sh makes it): $py" >&2; exit 1; }
work="$(mktemp -d /var/tmp/sandstone-worker-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT

start_fake_model tests/fake_model/scripts

port=$(( 20000 + RANDOM % 20000 ))
start_daemon worker "$port" --pool-gib 16 -- --warm-pool 8 \
  --model-base-url "http://127.0.0.1:$model_port" --model-api-key-file "$work/model.key"
url="http://127.0.0.1:$port"
token="$(cat "$work/worker/admin.token")"
eval "$(on worker env create bench)"  # ANTHROPIC_ENVIRONMENT_ID and _KEY
env_id="$ANTHROPIC_ENVIRONMENT_ID" env_key="$ANTHROPIC_ENVIRONMENT_KEY"
unset ANTHROPIC_ENVIRONMENT_ID ANTHROPIC_ENVIRONMENT_KEY

session() { # WORKER SESSIONS TURNS OUTFILE [SCRIPT]
  SANDSTONE_ENV_ID="$env_id" SANDSTONE_ENV_KEY="$env_key" ANTHROPIC_BASE_URL="$url" \
  ANTHROPIC_API_KEY="$token" SCRIPT="${5:-bench_tools}" WORKER="$1" SESSIONS="$2" TURNS="$3" PAUSE="${PAUSE:-3}" \
  WORKDIR="$work/official" TIMEOUT=300 timeout --kill-after=10 600 "$py" tests/sdk/worker_session.py > "$4"
}

echo "== environment worker, one daemon, same client and script; $(nproc) CPUs"
mkdir -p "$work/official"
for i in 1 2 3 4 5; do session official 1 1 "$work/official-$i.json"; done
# A user message to a worker that let the session go and has been polling
# idle since (the second turn, 4 s after the first ended; both workers
# let an item go after 2 s at most): message sent -> the first tool
# running (it prints the clock).
for i in $(seq 10); do PAUSE=4 session official 1 2 "$work/official-first-$i.json" first_tool; done

SANDSTONE_TOKEN="$token" SANDSTONE_LOG=info "$s" worker poll --environment-id "$env_id" \
  --environment-key "$env_key" --base-url "$url" --sandstone-url "$url" --max-idle 1s \
  --status-listen off --log-format json 2> "$work/worker.log" &
worker_pid=$!
pids+=($worker_pid)
# Five sessions one after another, two turns each: five claims from the
# warm pool, five resumes of a paused sandbox, 150 tool calls.
for i in 1 2 3 4 5; do session external 1 2 "$work/ours-$i.json"; done
for i in $(seq 10); do PAUSE=4 session external 1 2 "$work/ours-first-$i.json" first_tool; done
# A cloud environment: the daemon serves its sessions itself, no worker
# process. Turn 1 includes the session's sandbox being claimed; turn 2
# (4 s later) finds the session still held (a cloud item idles 60 s).
cloud_env="$(curl -fsS "$url/v1/environments" -H "x-api-key: $token" \
  -H 'anthropic-beta: managed-agents-2026-04-01' -H 'content-type: application/json' \
  -d '{"name": "bench-cloud", "config": {"type": "cloud"}}' | "$py" -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
for i in $(seq 10); do env_id="$cloud_env" PAUSE=4 session external 1 2 "$work/cloud-first-$i.json" first_tool; done
# 50 sessions at once, each model turn taking 400 ms (about 120 tool calls
# a second in all): does one worker keep a session's latency flat?
mark=$(wc -l < "$work/worker.log")
cpu() { awk '{print $14 + $15}' "/proc/$worker_pid/stat"; }
cpu0=$(cpu)
session external 50 1 "$work/ours50.json" bench_tools_paced
cpu1=$(cpu)
echo "worker CPU for the 50-session run: $(( (cpu1 - cpu0) * 1000 / $(getconf CLK_TCK) )) ms"

python3 - "$work" "$url" "$token" "$mark" <<'EOF'
import json, sys, time, urllib.request
work, url, token = sys.argv[1:4]

def api(method, path, body=None):
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    t = time.monotonic()
    with urllib.request.urlopen(req) as r:
        v = json.load(r)
    return v, (time.monotonic() - t) * 1000

def calls(name):
    return [c for s in json.load(open(f"{work}/{name}.json"))["sessions"] for c in s["calls"]]

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")

# The first call of a session includes the worker claiming it (poll
# back-off, sandbox, session fetch): it is reported apart.
def later(cs):
    return cs[1:]

official = [c for i in range(1, 6) for c in later(calls(f"official-{i}"))]
ours = [c for i in range(1, 6) for c in later(calls(f"ours-{i}"))]
ours50 = [c for s in json.load(open(f"{work}/ours50.json"))["sessions"] for c in s["calls"][1:]]
log = [json.loads(l) for l in open(f"{work}/worker.log") if l.startswith("{")]
mark = int(sys.argv[4])
done = [r["fields"] for r in log if r["fields"].get("message") == "tool done"]
done1 = [r["fields"] for r in log[:mark] if r["fields"].get("message") == "tool done"]
done50 = [r["fields"] for r in log[mark:] if r["fields"].get("message") == "tool done"]
print("dispatch, client view: tool use on the client's stream -> its result there (ms)")
print(f"{'tool':6} {'official p50':>13} {'ours p50':>9} {'ratio':>6} {'ours p95':>9} {'50 sessions p50':>16} {'p95':>7}")
for tool in ("write", "read", "bash"):
    o = [c["ms"] for c in official if c["name"] == tool]
    m = [c["ms"] for c in ours if c["name"] == tool]
    f = [c["ms"] for c in ours50 if c["name"] == tool]
    print(f"{tool:6} {pct(o,50):13.2f} {pct(m,50):9.2f} {pct(m,50)/pct(o,50):6.2f} {pct(m,95):9.2f} {pct(f,50):16.2f} {pct(f,95):7.2f}   n={len(o)}/{len(m)}/{len(f)}")
print("dispatch, worker view: call reaches the worker -> result posted, and the tool's own run time (ms)")
print(f"{'tool':6} {'1 session p50':>14} {'p95':>7} {'run p50':>8} {'50 sessions p50':>16} {'p95':>7} {'run p50':>8}")
for tool in ("write", "read", "bash"):
    a = [r["total_us"] / 1000 for r in done1 if r["tool"] == tool]
    ar = [r["run_us"] / 1000 for r in done1 if r["tool"] == tool]
    b = [r["total_us"] / 1000 for r in done50 if r["tool"] == tool]
    br = [r["run_us"] / 1000 for r in done50 if r["tool"] == tool]
    print(f"{tool:6} {pct(a,50):14.2f} {pct(a,95):7.2f} {pct(ar,50):8.2f} {pct(b,50):16.2f} {pct(b,95):7.2f} {pct(br,50):8.2f}   n={len(a)}/{len(b)}")
errors = [c for c in official + ours + ours50 if c.get("is_error") or "ms" not in c]
print(f"calls with an error or no result: {len(errors)} of {len(official) + len(ours) + len(ours50)}")

# Message sent -> first tool running, the worker idle-polling before it.
def first_tool(name, turn=1):
    out = []
    for i in range(1, 11):
        c = calls(f"{name}-first-{i}")[turn]
        started = int(c["content"][0]["text"].strip())
        out.append((started - c["turn_sent_ns"]) / 1e6)
    return out
o, m = first_tool("official"), first_tool("ours")
print("user message -> first tool running, the worker idle-polling since it let the session go (ms, n=10 each)")
print(f"  official SDK worker (sleeps 1-3 s after an empty poll): p50 {pct(o,50):.1f} p99 {pct(o,99):.1f}")
print(f"  sandstone worker (Sandstone's long poll):              p50 {pct(m,50):.1f} p99 {pct(m,99):.1f}")
c1, c2 = first_tool("cloud", 0), first_tool("cloud")
print("user message -> first tool running in a cloud environment (no worker process; ms, n=10)")
print(f"  first turn (session start, its sandbox claimed): p50 {pct(c1,50):.1f} p99 {pct(c1,99):.1f}")
print(f"  second turn, the session held:                   p50 {pct(c2,50):.1f} p99 {pct(c2,99):.1f}")

ready = [r["fields"] for r in log if r["fields"].get("message") == "sandbox ready"]
claimed = [r["ms"] for r in ready[:10] if not r["resumed"]]
resumed = [r["ms"] for r in ready[:10] if r["resumed"]]
claimed50 = [r["ms"] for r in ready[10:]]
print(f"poll -> sandbox ready: warm-pool claim p50 {pct(claimed,50)} ms (n={len(claimed)}), "
      f"paused sandbox resumed p50 {pct(resumed,50)} ms (n={len(resumed)}); "
      f"50 at once (pool of 8 exhausted) p50 {pct(claimed50,50)} ms")
# The daemon alone, same run: claims (the warm pool refilled by now) and
# resumes of paused sandboxes, straight through the REST API.
ids, claim_ms, resume_ms = [], [], []
for _ in range(8):
    v, ms = api("POST", "/api/v1/sandboxes", {"template": "default"})
    ids.append(v["data"]["sandbox_id"]); claim_ms.append(ms)
for i in ids:
    api("POST", f"/api/v1/sandboxes/{i}/pause")
    resume_ms.append(api("POST", f"/api/v1/sandboxes/{i}/resume")[1])
    api("DELETE", f"/api/v1/sandboxes/{i}")
print(f"daemon alone (REST, same run): claim p50 {pct(claim_ms,50):.1f} ms, resume p50 {pct(resume_ms,50):.1f} ms (n={len(ids)})")
EOF

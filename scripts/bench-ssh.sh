#!/usr/bin/env bash
# The SSH gateway (issue #20, `serve --ssh-listen`), each row against a
# baseline in the same run (run as root; a release build):
#  - a command (`true`) over a new SSH connection (handshake, key check,
#    context start, exit) and over one multiplexed connection (OpenSSH's
#    ControlMaster: a channel per command), vs `sandstone exec` (the CLI
#    over HTTP);
#  - 100 MiB uploaded and downloaded with sftp vs `sandstone cp` (the
#    files API).
# Interleaved rounds, medians; bounded (a few minutes); everything it
# started is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-ssh-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT

port=$(( 20000 + RANDOM % 20000 ))
ssh_port=$(( port + 1 ))
start_daemon ssh "$port" --pool-gib 4 -- --warm-pool 0 --ssh-listen "127.0.0.1:$ssh_port"
sb="$(on ssh create --template host)"
token="$(cat "$work/ssh/admin.token")"
ssh-keygen -q -t ed25519 -N '' -C bench -f "$work/key"
python3 - "$port" "$token" "$work/key.pub" <<'PY'
import json, sys, urllib.request
port, token, pub = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
req = urllib.request.Request(f"http://127.0.0.1:{port}/users/me/ssh-keys",
    data=json.dumps({"name": "bench", "public_key": pub}).encode(),
    headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
urllib.request.urlopen(req).read()
PY
head -c 100M /dev/urandom > "$work/blob"
echo "== SSH gateway; $(nproc) CPUs"
SSH_PORT="$ssh_port" SB="$sb" WORK="$work" SANDSTONE="$s" \
SANDSTONE_URL="http://127.0.0.1:$port" SANDSTONE_DATA_DIR="$work/ssh" \
  timeout --kill-after=10 600 python3 - <<'PY'
import os, statistics, subprocess, time
port, sb, work, cli = os.environ["SSH_PORT"], os.environ["SB"], os.environ["WORK"], os.environ["SANDSTONE"]
opts = ["-i", f"{work}/key", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={work}/known_hosts", "-o", "LogLevel=ERROR"]
mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={work}/mux", "-o", "ControlPersist=120"]
dest = f"{sb}@127.0.0.1"

def timed(argv):
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000

rows = {"sandstone exec true (baseline)": lambda: timed([cli, "exec", sb, "--", "true"]),
        "ssh true, new connection": lambda: timed(["ssh", "-p", port, *opts, dest, "true"]),
        "ssh true, multiplexed connection": lambda: timed(["ssh", "-p", port, *opts, *mux, dest, "true"])}
timed(["ssh", "-p", port, *opts, *mux, dest, "true"])  # opens the master
times = {k: [] for k in rows}
for _ in range(10):
    for k, f in rows.items():
        for _ in range(5):
            times[k].append(f())
base = statistics.median(times["sandstone exec true (baseline)"])
for k, v in times.items():
    m = statistics.median(v)
    print(f"{k:40s} p50 {m:7.2f} ms  ({m / base:.2f}x the baseline, n={len(v)})")

size = os.path.getsize(f"{work}/blob") / 2**20
def sftp(batch):
    with open(f"{work}/batch", "w") as f:
        f.write(batch)
    return timed(["sftp", "-P", port, *opts, "-b", f"{work}/batch", dest])
copies = {
    "upload, sandstone cp (baseline)": lambda: timed([cli, "cp", f"{work}/blob", f"{sb}:/workspace/blob-cp"]),
    "upload, sftp put": lambda: sftp(f"put {work}/blob /workspace/blob-sftp\n"),
    "download, sandstone cp (baseline)": lambda: timed([cli, "cp", f"{sb}:/workspace/blob-cp", f"{work}/back-cp"]),
    "download, sftp get": lambda: sftp(f"get /workspace/blob-sftp {work}/back-sftp\n"),
}
spent = {k: [] for k in copies}
for _ in range(5):
    for k, f in copies.items():
        spent[k].append(f())
for a, b in [("upload, sandstone cp (baseline)", "upload, sftp put"),
             ("download, sandstone cp (baseline)", "download, sftp get")]:
    ra = size / (statistics.median(spent[a]) / 1000)
    rb = size / (statistics.median(spent[b]) / 1000)
    print(f"{a:40s} {ra:7.1f} MiB/s")
    print(f"{b:40s} {rb:7.1f} MiB/s  ({rb / ra:.2f}x the baseline)")
same = subprocess.run(["cmp", f"{work}/blob", f"{work}/back-sftp"]).returncode == 0
print(f"round trip intact: {same}")
PY

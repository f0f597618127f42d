#!/usr/bin/env bash
# Templates from images (issue #14), against baselines in the same run
# (run as root):
#  - import of a ~200 MiB image (busybox + 3 gzipped layers of files) vs
#    `tar -xzf` of the same layers into a fresh directory;
#  - the same image imported again under another name (every layer here),
#    and pulled again from a registry (tests/registry/server.py);
#  - templates captured from a running sandbox with a 1 GiB workspace vs an
#    empty one (btrfs pool);
#  - creates from the image template vs from `host` (cold: no warm pool;
#    20 each, interleaved), and warm (a warm pool of one per template);
#  - a Sandstonefile (three RUN, one COPY) built from scratch vs built
#    again with every step cached.
# Bounded: a few minutes; everything it started is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "needs /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-templates-bench-XXXXXX)"
pids=()
trap bench_cleanup EXIT
MIB="${BENCH_IMAGE_MIB:-200}"

# The image: an OCI layout archive built with Python's tarfile.
python3 - "$work/image" "$MIB" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
dest, mib = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{dest}/layers")
def tar_of(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data, mode, kind in entries:
            ti = tarfile.TarInfo(name); ti.mode = mode; ti.mtime = 1700000000
            if kind == "dir":
                ti.type = tarfile.DIRTYPE; t.addfile(ti)
            elif kind == "link":
                ti.type = tarfile.SYMTYPE; ti.linkname = data; t.addfile(ti)
            else:
                ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()
busybox = open("/bin/busybox", "rb").read()
layers = [tar_of([("bin", b"", 0o755, "dir"), ("bin/busybox", busybox, 0o755, "file")]
                 + [(f"bin/{t}", "busybox", 0o777, "link") for t in ("sh", "cat", "ls", "true")])]
# Three layers of 64 KiB-to-1 MiB files; half random, half text (compressible).
rnd = 0
for l in range(3):
    entries = [(f"data{l}", b"", 0o755, "dir")]
    size, i = 0, 0
    while size < mib * (1 << 20) // 3:
        n = (64 << 10) << (i % 5)
        data = os.urandom(n // 2) + (b"line of text %d\n" % i) * (n // 32)
        entries.append((f"data{l}/f{i:05}", data, 0o644, "file"))
        size += len(data); i += 1
    layers.append(tar_of(entries))
blobs = {}
def add(data):
    d = hashlib.sha256(data).hexdigest(); blobs[d] = data; return f"sha256:{d}", len(data)
descs = []
for i, t in enumerate(layers):
    gz = gzip.compress(t, compresslevel=1)
    open(f"{dest}/layers/{i}.tar.gz", "wb").write(gz)
    d, n = add(gz)
    descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
config = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin"]},
          "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layers]}}
cd, cn = add(json.dumps(config).encode())
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
            "layers": descs}
md, mn = add(json.dumps(manifest).encode())
index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": md, "size": mn, "platform": {"architecture": arch, "os": "linux"}}]}
with tarfile.open(f"{dest}/image.tar", "w") as t:
    for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", json.dumps(index).encode())] + \
            [(f"blobs/sha256/{d}", b) for d, b in blobs.items()]:
        ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
print(f"image: {sum(len(t) for t in layers) >> 20} MiB in {len(layers)} layers, "
      f"{os.path.getsize(dest + '/image.tar') >> 20} MiB archive")
PY

port=$((20000 + RANDOM % 20000))
start_daemon img "$port" --no-pool -- --warm-pool 0
ms() { python3 -c 'import sys,time; print(f"{(time.time()-float(sys.argv[1]))*1000:.0f}")' "$1"; }
now() { python3 -c 'import time; print(time.time())'; }
drop() { sync; }

echo "| run | tar -xzf of the layers (ms) | import (ms) | ratio |"
echo "|---|---|---|---|"
for run in 1 2 3; do
  rm -rf "$work/x"; mkdir "$work/x"; drop
  t=$(now); for l in "$work"/image/layers/*.tar.gz; do tar -xzf "$l" -C "$work/x"; done; tar_ms=$(ms "$t")
  drop
  t=$(now); on img template import "app$run" "$work/image/image.tar" >/dev/null; imp_ms=$(ms "$t")
  # Each run after the first finds every layer here: remove them so the
  # three runs measure the same work.
  [ "$run" = 3 ] || rm -rf "$work/img/layers"/* "$work/img/templates/app$run"
  echo "| $run | $tar_ms | $imp_ms | $(python3 -c "print(f'{$imp_ms/$tar_ms:.2f}')") |"
done
echo
for run in 1 2 3; do
  t=$(now); on img template import "again$run" "$work/image/image.tar" >/dev/null; echo "import again (every layer here), run $run: $(ms "$t") ms"
done

# The same image pulled from a registry (tests/registry/server.py) while
# every layer is here: the manifest and config only, then the template.
mkdir -p "$work/registry/bench/app"
tar -xf "$work/image/image.tar" -C "$work/registry/bench/app"
python3 - "$work/registry/bench/app/index.json" <<'PY'
import json, sys
index = json.load(open(sys.argv[1]))
index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
json.dump(index, open(sys.argv[1], "w"))
PY
python3 tests/registry/server.py --root "$work/registry" > "$work/registry.out" &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/registry.out" 2>/dev/null && break; sleep 0.1; done
reg_port=$(awk '/listening/ {print $2}' "$work/registry.out")
python3 - "$port" "$(cat "$work/img/admin.token")" "$reg_port" <<'PY'
import http.client, json, sys, time
port, token, reg = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port)
print()
for run in (1, 2, 3):
    body = {"template_id": f"pulled{run}", "spec": {"mainContainer": {
        "image": f"127.0.0.1:{reg}/bench/app:v1", "resources": {"memory": "1Gi"}}}}
    s = time.perf_counter()
    c.request("POST", "/api/v1/templates", body=json.dumps(body),
              headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status == 201, (r.status, data)
    print(f"pull again (every layer here), run {run}: {(time.perf_counter() - s) * 1000:.0f} ms")
PY

# Templates captured from a running sandbox, on a btrfs pool: with a 1 GiB
# workspace against an empty one (the capture should not grow with size).
cap_port=$((port + 1))
start_daemon cap "$cap_port" --pool-gib 8 -- --warm-pool 0
python3 - "$cap_port" "$(cat "$work/cap/admin.token")" <<'PY'
import http.client, json, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body=None, want=300):
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status < want, (r.status, data)
    return json.loads(data)
def sandbox(script):
    sid = call("POST", "/api/v1/sandboxes", {"template": "host"})["data"]["sandbox_id"]
    call("POST", f"/api/v1/sandboxes/{sid}/contexts", {"type": "cmd", "wait_until_done": True,
         "cmd": {"command": ["sh", "-c", script]}})
    return sid
empty = sandbox("true")
big = sandbox("dd if=/dev/zero of=/workspace/big bs=1M count=1024 status=none; sync")
print()
print("| run | capture, empty workspace (ms) | capture, 1 GiB workspace (ms) |")
print("|---|---|---|")
for run in (1, 2, 3):
    times = []
    for name, sid in (("empty", empty), ("big", big)):
        s = time.perf_counter()
        call("POST", "/api/v1/templates/from-sandbox", {"template_id": f"{name}{run}", "sandbox_id": sid})
        times.append((time.perf_counter() - s) * 1000)
    print(f"| {run} | {times[0]:.1f} | {times[1]:.1f} |")
for sid in (empty, big):
    call("DELETE", f"/api/v1/sandboxes/{sid}")
PY

python3 - "$port" "$(cat "$work/img/admin.token")" <<'PY'
import http.client, json, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body=None):
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status < 300, (r.status, data)
    return json.loads(data)
times = {"host": [], "app3": []}
made = []
for _ in range(20):
    for t in times:
        s = time.perf_counter()
        sid = call("POST", "/api/v1/sandboxes", {"template": t})["data"]["sandbox_id"]
        times[t].append((time.perf_counter() - s) * 1000)
        made.append(sid)
for sid in made:
    call("DELETE", f"/api/v1/sandboxes/{sid}")
p50 = lambda xs: sorted(xs)[len(xs) // 2]
print()
print("| create, cold (20 each) | p50 ms |")
print("|---|---|")
for t, xs in times.items():
    print(f"| from {t} | {p50(xs):.1f} |")
PY

# Warm claims: a pool of one member per template, refilled between claims.
warm_port=$((port + 2))
start_daemon warm "$warm_port" --no-pool -- --warm-pool 1
on warm template import app "$work/image/image.tar" >/dev/null
python3 - "$warm_port" "$(cat "$work/warm/admin.token")" <<'PY'
import http.client, json, re, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body=None):
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status < 300, (r.status, data)
    return data
def ready():
    m = re.search(rb"sandstone_warm_pool_ready (\d+)", call("GET", "/metrics"))
    return int(m.group(1)) if m else 0
def wait_full():
    for _ in range(200):
        if ready() >= 2:
            return
        time.sleep(0.05)
    raise SystemExit("the warm pool did not refill")
times = {"host": [], "app": []}
made = []
for _ in range(20):
    for t in times:
        wait_full()
        s = time.perf_counter()
        sid = json.loads(call("POST", "/api/v1/sandboxes", {"template": t}))["data"]["sandbox_id"]
        times[t].append((time.perf_counter() - s) * 1000)
        made.append(sid)
for sid in made:
    call("DELETE", f"/api/v1/sandboxes/{sid}")
p50 = lambda xs: sorted(xs)[len(xs) // 2]
print()
print("| create, warm (20 each) | p50 ms |")
print("|---|---|")
for t, xs in times.items():
    print(f"| from {t} | {p50(xs):.1f} |")
PY

# Builds, on the btrfs daemon: the same Sandstonefile from scratch (its
# first step changed each run, so nothing below it is cached) and then
# again with every step cached.
mkdir -p "$work/ctx"
head -c 1048576 /dev/urandom > "$work/ctx/data.bin"
echo
echo "| run | build, nothing cached (ms) | build again, all cached (ms) | ratio |"
echo "|---|---|---|---|"
for run in 1 2 3; do
  cat > "$work/ctx/Sandstonefile" <<FILE
FROM host
RUN mkdir -p /srv/app && echo $run > /srv/app/run
ENV MODE=bench
RUN seq 1 1000 > /srv/app/numbers
WORKDIR /srv/app
COPY data.bin .
RUN sha256sum data.bin > sum
FILE
  t=$(now); on cap template build "built$run" -f "$work/ctx/Sandstonefile" >/dev/null; full_ms=$(ms "$t")
  t=$(now); on cap template build "built$run" -f "$work/ctx/Sandstonefile" >/dev/null; cached_ms=$(ms "$t")
  echo "| $run | $full_ms | $cached_ms | $(python3 -c "print(f'{$cached_ms/$full_ms:.2f}')") |"
done

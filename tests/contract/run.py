"""Sandbox0's OpenAPI document, checked against a Sandstone daemon.

Run by crates/sandstone/tests/contract.rs with SANDBOX0_SPEC (the spec
file), SANDBOX0_BASE_URL and SANDBOX0_TOKEN. Two parts:

1. Coverage: every operation of the spec is either served by the daemon
   (its /openapi.json lists it) or named in unimplemented.txt beside this
   file, the reviewed list of what is not served yet. A route that appears
   or disappears without the list changing fails the run.
2. Conformance: Schemathesis generates requests for every served operation
   (valid and invalid, with real ids for the path parameters) and checks
   that no response is a server error, that every response matches the
   spec's schema and content type, and (hooks.py) that no field or value
   the spec defines is refused as unknown.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
BASE = os.environ["SANDBOX0_BASE_URL"].rstrip("/")
TOKEN = os.environ["SANDBOX0_TOKEN"]
SPEC = os.environ["SANDBOX0_SPEC"]
METHODS = ("get", "post", "put", "delete", "patch")


def op_key(method, path):
    """`GET /api/v1/sandboxes/{}`: parameter names differ between the spec
    and the daemon's router, their places do not."""
    return f"{method.upper()} {re.sub(r'{[^}]*}', '{}', path)}"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req) as r:
        raw = r.read()
    return json.loads(raw)["data"] if raw else None


spec = yaml.safe_load(open(SPEC))
spec_ops = {
    op_key(m, p): f"{m.upper()} {p}"
    for p, item in spec["paths"].items()
    for m in item
    if m in METHODS
}
# The daemon's own document (not an envelope) lists every route it serves.
with urllib.request.urlopen(BASE + "/openapi.json") as r:
    served = {op_key(m, p) for p, item in json.load(r)["paths"].items() for m in item if m in METHODS}

reviewed = {
    op_key(*line.split(" ", 1))
    for line in (HERE / "unimplemented.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
unimplemented = set(spec_ops) - served
problems = []
for k in sorted(unimplemented - reviewed):
    problems.append(f"not served and not in unimplemented.txt: {spec_ops[k]}")
for k in sorted(reviewed - unimplemented):
    why = "now served" if k in served else "not in the spec"
    problems.append(f"in unimplemented.txt but {why}: {k}")
if problems:
    sys.exit("operation coverage changed:\n  " + "\n  ".join(problems))
implemented = sorted(spec_ops[k] for k in set(spec_ops) & served)
print(f"{len(implemented)} of {len(spec_ops)} spec operations served; {len(unimplemented)} reviewed as not yet")

# Real resources for the path parameters. Operations that destroy or stop
# what they are given get resources of their own, so the rest keep theirs.
main = call("POST", "/api/v1/sandboxes", {"template": "default"})["sandbox_id"]
spare = call("POST", "/api/v1/sandboxes", {"template": "default"})["sandbox_id"]
doomed = call("POST", "/api/v1/sandboxes", {"template": "default"})["sandbox_id"]
for path in ("/workspace/a.txt", "/workspace/doomed"):
    req = urllib.request.Request(f"{BASE}/api/v1/sandboxes/{main}/files?path={path}", data=b"contract", method="POST")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    urllib.request.urlopen(req).read()


def context(sandbox, command):
    return call("POST", f"/api/v1/sandboxes/{sandbox}/contexts", {"type": "cmd", "cmd": {"command": command}})["id"]


ctx = context(main, ["sleep", "600"])
doomed_ctx = context(main, ["sleep", "600"])


def session(sandbox):
    return call("POST", f"/api/v1/sandboxes/{sandbox}/sessions", {"command": ["sleep", "600"]})["id"]


ses, doomed_ses = session(main), session(main)
snap = call("POST", f"/api/v1/sandboxes/{main}/snapshots", {})["id"]
doomed_snap = call("POST", f"/api/v1/sandboxes/{main}/snapshots", {})["id"]


def source(name):
    call("POST", "/api/v1/credential-sources", {"name": name, "resolverKind": "static_headers",
                                                 "spec": {"staticHeaders": {"values": {"x-key": "v"}}}})
    return name


# Named after the sandbox, so a run against a daemon used before works.
cred, doomed_cred = source(f"contract-{main}"), source(f"contract-doomed-{main}")


def toml(v):
    return json.dumps(v)


def params(**kv):
    return "{ " + ", ".join(f"{toml(k)} = {toml(v)}" for k, v in kv.items()) + " }"


own = {
    # Ends the sandbox.
    "DELETE /api/v1/sandboxes/{id}": params(**{"path.id": doomed}),
    # Pause, resume, restore and ttl changes stop or replace the sandbox.
    "POST /api/v1/sandboxes/{id}/pause": params(**{"path.id": spare}),
    "POST /api/v1/sandboxes/{id}/resume": params(**{"path.id": spare}),
    "POST /api/v1/sandboxes/{id}/rootfs/restore": params(**{"path.id": spare}),
    "PUT /api/v1/sandboxes/{id}": params(**{"path.id": spare}),
    "DELETE /api/v1/sandboxes/{id}/contexts/{ctx_id}": params(**{"path.id": main, "path.ctx_id": doomed_ctx}),
    "DELETE /api/v1/sandboxes/{id}/sessions/{session_id}": params(**{"path.id": main, "path.session_id": doomed_ses}),
    "DELETE /api/v1/sandbox-rootfs-snapshots/{snapshot_id}": params(**{"path.snapshot_id": doomed_snap}),
    "DELETE /api/v1/credential-sources/{name}": params(**{"path.name": doomed_cred}),
    "DELETE /api/v1/sandboxes/{id}/files": params(**{"path.id": main, "query.path": "/workspace/doomed"}),
    # A watch streams until the client leaves; the checks read whole bodies
    # (the SDK test covers watching).
    "GET /api/v1/sandboxes/{id}/observability/events": params(**{"path.id": main, "query.watch": False}),
    "GET /api/v1/sandboxes/{id}/observability/logs": params(**{"path.id": main, "query.watch": False}),
}
config = [
    "[parameters]",
    f'"path.id" = {toml(main)}',
    f'"path.ctx_id" = {toml(ctx)}',
    f'"path.session_id" = {toml(ses)}',
    f'"path.snapshot_id" = {toml(snap)}',
    f'"path.name" = {toml(cred)}',
    '"query.path" = "/workspace/a.txt"',
]
for name, p in own.items():
    assert name in implemented, name
    config += ["", "[[operations]]", f"include-name = {toml(name)}", f"parameters = {p}"]

with tempfile.TemporaryDirectory() as tmp:
    (Path(tmp) / "schemathesis.toml").write_text("\n".join(config) + "\n")
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run", SPEC,
        "--url", BASE,
        "-H", f"Authorization: Bearer {TOKEN}",
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance,spec_fields_are_known",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", os.environ.get("SANDBOX0_CONTRACT_EXAMPLES", "15"),
        "--seed", os.environ.get("SANDBOX0_CONTRACT_SEED", "1"),
        "--request-timeout", "30",
        "--no-color",
        "--output-truncate", "false",
    ]
    # An event stream follows until the client leaves, and the checks read
    # whole bodies: the SDK test covers it.
    following = {"GET /api/v1/sandboxes/{id}/sessions/{session_id}/events/stream"}
    assert following <= set(implemented), following
    for name in implemented:
        if name not in following:
            cmd += ["--include-name", name]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="hooks", PYTHONPATH=str(HERE))
    run = subprocess.run(cmd, cwd=tmp, env=env)
print(f"contract: schemathesis exited {run.returncode}")
sys.exit(run.returncode)

"""The Sandbox0 Python SDK (pip install sandbox0) against a Sandstone daemon.

Run by crates/sandstone/tests/sdk.rs with SANDBOX0_BASE_URL and SANDBOX0_TOKEN.
Every step asserts what the SDK hands back to its user.
"""
import atexit
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

from sandbox0 import Client
from sandbox0.client_templates import CreateTemplateFromSandboxOptions
from sandbox0.sandbox_observability import SandboxObservabilityEventOptions
from sandbox0.apispec.models.create_context_request import CreateContextRequest
from sandbox0.apispec.models.create_cmd_context_request import CreateCMDContextRequest
from sandbox0.apispec.models.credential_source_write_request import CredentialSourceWriteRequest
from sandbox0.apispec.models.fork_sandbox_request import ForkSandboxRequest
from sandbox0.apispec.models.process_type import ProcessType
from sandbox0.apispec.models.pty_size import PTYSize
from sandbox0.apispec.models.restore_sandbox_root_fs_request import RestoreSandboxRootFSRequest
from sandbox0.apispec.models.sandbox_network_policy import SandboxNetworkPolicy
from sandbox0.apispec.models.sandbox_observability_event_type import SandboxObservabilityEventType
from sandbox0.apispec.models.sandbox_observability_outcome import SandboxObservabilityOutcome
from sandbox0.apispec.models.sandbox_update_request import SandboxUpdateRequest
from sandbox0.apispec.models.template_create_request import TemplateCreateRequest
from sandbox0.apispec.models.template_from_sandbox_create_request import TemplateFromSandboxCreateRequest
from sandbox0.apispec.models.template_update_request import TemplateUpdateRequest
from sandbox0.apispec.api.registry import post_api_v1_registry_credentials
from sandbox0.apispec.models.registry_credentials_request import RegistryCredentialsRequest

def registry_image():
    """An image (a static busybox and /etc/from-registry) served by
    tests/registry/server.py: its reference and the server process."""
    def tar_of(entries):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
            for name, data, mode, link in entries:
                info = tarfile.TarInfo(name)
                info.mode, info.mtime = mode, 1700000000
                if link:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    t.addfile(info)
                elif data is None:
                    info.type = tarfile.DIRTYPE
                    t.addfile(info)
                else:
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        return buf.getvalue()
    layer = tar_of([("bin", None, 0o755, None), ("bin/busybox", open("/bin/busybox", "rb").read(), 0o755, None),
                    ("bin/sh", None, 0o777, "busybox"), ("bin/cat", None, 0o777, "busybox"),
                    ("etc", None, 0o755, None), ("etc/from-registry", b"pulled\n", 0o644, None)])
    root = tempfile.mkdtemp()
    repo = os.path.join(root, "sdk/app")
    os.makedirs(os.path.join(repo, "blobs/sha256"))
    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(repo, "blobs/sha256", digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = blob(json.dumps({"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin"]},
                              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]}}).encode())
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                            **blob(gzip.compress(layer))}]}).encode())
    with open(os.path.join(repo, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
                   "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "registry", "server.py")
    # Its stderr is not ours: the test reads ours to its end.
    proc = subprocess.Popen([sys.executable, server, "--root", root], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    atexit.register(proc.kill)
    port = proc.stdout.readline().split()[1]
    return f"127.0.0.1:{port}/sdk/app:v1", proc


client = Client(token=os.environ["SANDBOX0_TOKEN"], base_url=os.environ["SANDBOX0_BASE_URL"])

sandbox = client.sandboxes.claim("default")
assert sandbox.id.startswith("sb-"), sandbox.id

r = sandbox.cmd("echo hi")
assert r.stdout == "hi\n" and r.exit_code == 0, (r.stdout, r.exit_code)

r = sandbox.cmd("sh -c 'exit 5'")
assert r.exit_code == 5, r.exit_code

sandbox.run("python", "x = 20")
r = sandbox.run("python", "print(x + 22)")
assert r.output_raw == "42\n", repr(r.output_raw)

# Lifecycle calls on the sandbox.
assert client.sandboxes.get(sandbox.id).id == sandbox.id
assert sandbox.id in [s.id for s in client.sandboxes.list()]
assert str(client.sandboxes.status(sandbox.id).status) in ("running", "SandboxLifecycleStatus.RUNNING"), client.sandboxes.status(sandbox.id)
updated = client.sandboxes.update(sandbox.id, SandboxUpdateRequest.from_dict({"config": {"ttl": 3600}}))
assert updated.id == sandbox.id
client.sandboxes.refresh(sandbox.id)

# Files: write, read, list, stat, mkdir, move, delete, and a watch that
# sees a write.
watch = sandbox.watch_files("/workspace", recursive=True)
sandbox.write_file("/workspace/a.txt", b"hello sdk")
assert sandbox.read_file("/workspace/a.txt") == b"hello sdk"
names = [f.name for f in sandbox.list_files("/workspace")]
assert "a.txt" in names, names
assert sandbox.stat_file("/workspace/a.txt").size == 9
event = next(iter(watch.iter_events()))
assert "a.txt" in str(event.path), event
watch.close()
sandbox.mkdir("/workspace/d/e", recursive=True)
sandbox.move_file("/workspace/a.txt", "/workspace/d/e/b.txt")
assert sandbox.read_file("/workspace/d/e/b.txt") == b"hello sdk"
sandbox.delete_file("/workspace/d")
assert [f.name for f in sandbox.list_files("/workspace")] == [], sandbox.list_files("/workspace")
sandbox.write_file("/workspace/a.txt", b"hello sdk")

# Contexts: create, list, get, input, resize, signal, restart, delete; a
# streamed command and a WebSocket connection to a running context.
ctx = sandbox.create_context(CreateContextRequest(
    type_=ProcessType.CMD, cmd=CreateCMDContextRequest(command=["cat"]), pty_size=PTYSize(rows=24, cols=80)))
assert ctx.id in [c.id for c in sandbox.list_contexts()]
assert sandbox.get_context(ctx.id).id == ctx.id
stream = sandbox.connect_ws_context(ctx.id)
sandbox.context_input(ctx.id, "echoed\n")
seen = ""
for out in stream.iter_outputs():
    seen += out.data
    if "echoed" in seen:
        break
assert "echoed" in seen, seen
stream.close()
sandbox.context_resize(ctx.id, 30, 100)
sandbox.context_signal(ctx.id, "SIGTERM")
sandbox.restart_context(ctx.id)
sandbox.delete_context(ctx.id)
assert ctx.id not in [c.id for c in sandbox.list_contexts()]
stream = sandbox.cmd_stream("sh -c 'echo streamed; exit 3'")
out = "".join(o.data for o in stream.iter_outputs())
done = stream.wait()
assert "streamed" in out and done.exit_code == 3, (out, done)

# Network: read the policy, send the whole model back (empty legacy
# lists and all), then a block-all policy in the legacy shape.
policy = sandbox.get_network_policy()
sandbox.update_network_policy(policy)
legacy = SandboxNetworkPolicy.from_dict({
    "mode": "block-all",
    "egress": {"allowedDomains": ["example.com"], "allowedCidrs": [], "allowedPorts": [{"port": 443}],
               "deniedPorts": [], "protocolRules": []},
    "credentialBindings": [],
})
got = sandbox.update_network_policy(legacy)
assert str(got.mode) in ("block-all", "SandboxNetworkPolicyMode.BLOCK_ALL"), got
rules = got.egress.traffic_rules
assert [r.domains for r in rules] == [["example.com"]] and rules[0].ports[0].port == 443, got.to_dict()
# Protocol rules, in the SDK's own model, round-trip; one naming no host is
# refused, naming the field.
ruled = SandboxNetworkPolicy.from_dict({"mode": "block-all", "egress": {
    "trafficRules": [{"name": "api", "action": "allow", "domains": ["api.example.com"]}],
    "protocolRules": [{"name": "reads", "protocol": "http", "domains": ["api.example.com"],
                       "http": {"methods": {"denied": ["DELETE"]}}}]}})
got = sandbox.update_network_policy(ruled).to_dict()
assert got["egress"]["protocolRules"][0]["http"]["methods"]["denied"] == ["DELETE"], got
try:
    sandbox.update_network_policy(SandboxNetworkPolicy.from_dict(
        {"mode": "block-all", "egress": {"protocolRules": [{"protocol": "http"}]}}))
except Exception as e:
    assert "protocolRules[0]" in str(e) and "domains" in str(e), e
else:
    sys.exit("a protocol rule naming no host was accepted")

# Observability: a lookup the policy denies is a network_audit event, seen
# by a watch as it happens, then listed, filtered and found by its id.
watch = sandbox.watch_observability_events()
sandbox.cmd("getent hosts denied.test")
line = next(l for l in watch.iter_lines() if str(l.type_) in ("event", "SandboxObservabilityWatchLineType.EVENT"))
watch.close()
seen = line.data
assert seen.action == "egress.dns" and seen.sandbox_id == sandbox.id, seen.to_dict()
assert seen.attributes["dest_name"] == "denied.test", seen.to_dict()
denied = sandbox.list_observability_events(SandboxObservabilityEventOptions(
    outcome=SandboxObservabilityOutcome.DENIED, event_type=SandboxObservabilityEventType.NETWORK_AUDIT)).events
assert seen.event_id in [e.event_id for e in denied], [e.to_dict() for e in denied]
assert all(str(e.outcome) in ("denied", "SandboxObservabilityOutcome.DENIED") for e in denied)
exact = sandbox.list_observability_events(SandboxObservabilityEventOptions(event_id=seen.event_id)).events
assert [e.event_id for e in exact] == [seen.event_id], exact
assert sandbox.list_observability_events(SandboxObservabilityEventOptions(
    event_type=SandboxObservabilityEventType.LIFECYCLE)).events == []

# Credential sources: create, list, get, update, delete; values never
# come back.
src = client.create_credential_source(CredentialSourceWriteRequest.from_dict(
    {"name": "sdk-src", "resolverKind": "static_headers", "spec": {"staticHeaders": {"values": {"x-api-key": "s3cret-sdk"}}}}))
assert src.name == "sdk-src" and src.current_version == 1, src
assert "sdk-src" in [c.name for c in client.list_credential_sources()]
assert client.get_credential_source("sdk-src").name == "sdk-src"
again = client.update_credential_source("sdk-src", CredentialSourceWriteRequest.from_dict(
    {"name": "sdk-src", "resolverKind": "static_headers", "spec": {"staticHeaders": {"values": {"x-api-key": "rotated"}}}}))
assert again.current_version == 2, again
assert "s3cret" not in str(client.get_credential_source("sdk-src").to_dict())
client.delete_credential_source("sdk-src")
assert "sdk-src" not in [c.name for c in client.list_credential_sources()]

# Templates: one pulled from a registry (the test registry serving an
# image built here), one captured from the sandbox; claimed, listed, read
# and deleted through the SDK.
image, registry = registry_image()
pulled = client.create_template(TemplateCreateRequest.from_dict({"template_id": "sdk-pulled", "spec": {
    "mainContainer": {"image": image, "resources": {"memory": "256Mi"}}}}))
assert pulled.template_id == "sdk-pulled", pulled
assert client.get_template("sdk-pulled").spec.main_container.image == image
from_image = client.sandboxes.claim("sdk-pulled")
assert from_image.cmd("cat /etc/from-registry").stdout == "pulled\n"
# An update is a new version for new sandboxes; the one made keeps its own.
updated = client.update_template("sdk-pulled", TemplateUpdateRequest.from_dict({"spec": {
    "mainContainer": {"image": image, "resources": {"memory": "256Mi"}}, "envVars": {"GREETING": "v2"}}}))
assert updated.spec.env_vars.to_dict().get("GREETING") == "v2", updated
newer = client.sandboxes.claim("sdk-pulled")
assert newer.cmd("sh -c 'echo $GREETING'").stdout == "v2\n"
assert from_image.cmd("sh -c 'echo ${GREETING:-none}'").stdout == "none\n"
for s in (from_image, newer):
    client.sandboxes.delete(s.id)
sandbox.cmd("sh -c 'echo kept > /etc/sdk-marker'")
captured = client.create_template_from_sandbox(
    TemplateFromSandboxCreateRequest(template_id="sdk-captured", sandbox_id=sandbox.id),
    CreateTemplateFromSandboxOptions(wait=True, timeout_sec=30))
assert captured.template_id == "sdk-captured", captured
assert {"sdk-pulled", "sdk-captured"} <= {t.template_id for t in client.list_templates()}
from_sandbox = client.sandboxes.claim("sdk-captured")
assert from_sandbox.cmd("cat /etc/sdk-marker").stdout == "kept\n"
client.sandboxes.delete(from_sandbox.id)
for name in ("sdk-captured", "sdk-pulled"):
    # A sandbox's deletion may end after it answers; the template goes
    # once nothing uses it.
    for _ in range(100):
        try:
            client.delete_template(name)
            break
        except Exception as e:
            assert "409" in str(e) or "used by" in str(e), e
            time.sleep(0.1)
    else:
        sys.exit(f"template {name} was never deleted")
assert not {"sdk-pulled", "sdk-captured"} & {t.template_id for t in client.list_templates()}
registry.kill()
# A push login for the daemon's own registry, through the SDK's generated
# call (the SDK has no wrapper for it).
creds = post_api_v1_registry_credentials.sync(
    client=client._api, body=RegistryCredentialsRequest(target_image="sdk/app:v1"))
assert creds.success and creds.data.push_image.endswith("/sdk/app:v1"), creds
assert creds.data.username and creds.data.password and creds.data.expires_at, creds

snap = client.sandboxes.create_rootfs_snapshot(sandbox.id)
assert snap.sandbox_id == sandbox.id, snap
assert [s.id for s in client.sandboxes.list_rootfs_snapshots(sandbox.id)] == [snap.id]
assert client.sandboxes.get_rootfs_snapshot(snap.id).id == snap.id
client.sandboxes.delete_rootfs_snapshot(snap.id)
assert client.sandboxes.list_rootfs_snapshots(sandbox.id) == []

# Pause, restore a snapshot into the paused sandbox, resume: the files are
# the snapshot's again.
snap = client.sandboxes.create_rootfs_snapshot(sandbox.id)
sandbox.write_file("/workspace/a.txt", b"changed")
assert client.sandboxes.pause_and_wait(sandbox.id, timeout_sec=30).paused
client.sandboxes.restore_rootfs(sandbox.id, RestoreSandboxRootFSRequest(snapshot_id=snap.id))
resumed = client.sandboxes.resume_and_wait(sandbox.id, timeout_sec=30)
assert not resumed.paused, resumed
assert sandbox.read_file("/workspace/a.txt") == b"hello sdk"
client.sandboxes.delete_rootfs_snapshot(snap.id)

# Execution sessions: a pty session followed as server-sent events, then
# attached over a WebSocket that resizes it, types into it and signals it.
import base64
import signal as _signal

def _expire(*_):
    raise TimeoutError("no answer from the session in time")
_signal.signal(_signal.SIGALRM, _expire)
from sandbox0.sandbox_sessions import SessionEventStreamOptions, SessionWebSocketOptions
from sandbox0.apispec.models.execution_session_input_request import ExecutionSessionInputRequest
from sandbox0.apispec.models.execution_session_spec import ExecutionSessionSpec
from sandbox0.apispec.models.execution_session_terminal_resize_request import ExecutionSessionTerminalResizeRequest
from sandbox0.apispec.models.execution_session_web_socket_input import ExecutionSessionWebSocketInput
from sandbox0.apispec.models.execution_session_web_socket_resize import ExecutionSessionWebSocketResize
from sandbox0.apispec.models.execution_session_web_socket_signal import ExecutionSessionWebSocketSignal
ses = sandbox.create_session(ExecutionSessionSpec.from_dict({
    "command": ["sh", "-c", 'echo "term=$TERM"; stty size; while read l; do echo "got:$l"; stty size; done'],
    "io": {"mode": "pty", "terminal": {"rows": 30, "cols": 100}},
}))
_signal.alarm(20)
seen, last = b"", None
with sandbox.watch_session_events(ses.id) as stream:
    for e in stream.iter_events():
        assert e.session_id == ses.id and e.stream == "pty", e
        seen += base64.b64decode(e.data_base64)
        last = e.seq
        if b"30 100" in seen:
            break
assert b"term=xterm-256color" in seen, seen
# Resumed after the last event seen: nothing already read comes again.
with sandbox.watch_session_events(ses.id, SessionEventStreamOptions(last_event_id=str(last))) as stream:
    sandbox.resize_session_terminal(ses.id, ExecutionSessionTerminalResizeRequest(rows=35, cols=90))
    sandbox.write_session_input(ses.id, ExecutionSessionInputRequest(input_id="in-1", data_base64=base64.b64encode(b"one\n").decode()))
    again = b""
    for e in stream.iter_events():
        assert e.seq > last, (e.seq, last)
        again += base64.b64decode(e.data_base64)
        if b"35 90" in again:
            break
assert b"got:one" in again and b"30 100" not in again, again
with sandbox.connect_session(ses.id, SessionWebSocketOptions(after=last)) as conn:
    conn.send(ExecutionSessionWebSocketResize.from_dict({"type": "resize", "rows": 40, "cols": 120, "request_id": "r1"}))
    conn.send(ExecutionSessionWebSocketInput.from_dict({"type": "input", "input_id": "in-2", "data_base64": base64.b64encode(b"two\n").decode(), "request_id": "r2"}))
    conn.send(ExecutionSessionWebSocketSignal.from_dict({"type": "signal", "signal": "KILL", "expected_attempt_id": "not-this-one", "request_id": "r3"}))
    acks, errors, out = set(), {}, b""
    for m in conn.iter_messages():
        if m.type == "ack":
            acks.add(m.request_id)
        elif m.type == "error":
            errors[m.request_id] = m.error
        elif m.event.data_base64:
            out += base64.b64decode(m.event.data_base64)
        if {"r1", "r2"} <= acks and "r3" in errors and b"40 120" in out:
            break
    assert b"got:one" in out and b"got:two" in out, out
    assert "current attempt" in errors["r3"], errors
    conn.send(ExecutionSessionWebSocketSignal.from_dict({"type": "signal", "signal": "KILL", "request_id": "r4"}))
    for m in conn.iter_messages():
        if m.type == "event" and m.event.type_ == "exit":
            break
_signal.alarm(0)
sandbox.delete_session(ses.id)
assert sandbox.list_sessions() == []

child = client.sandboxes.fork(sandbox.id)
assert child.source_sandbox_id == sandbox.id, child
client.sandboxes.delete(child.sandbox.id)
try:
    client.sandboxes.fork(sandbox.id, ForkSandboxRequest(memory=True), idempotency_key="k1")
except Exception as e:
    assert "memory" in str(e), e
else:
    sys.exit("a memory fork was accepted although only files are forked")

client.sandboxes.delete(sandbox.id)
try:
    sandbox.cmd("true")
except Exception:
    pass
else:
    sys.exit("the deleted sandbox still runs commands")
print("sandbox0 SDK smoke: ok")

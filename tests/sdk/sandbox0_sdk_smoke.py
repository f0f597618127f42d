"""The Sandbox0 Python SDK (pip install sandbox0) against a Sandstone daemon.

Run by crates/sandstone/tests/sdk.rs with SANDBOX0_BASE_URL and SANDBOX0_TOKEN.
Every step asserts what the SDK hands back to its user.
"""
import os
import sys

from sandbox0 import Client
from sandbox0.apispec.models.fork_sandbox_request import ForkSandboxRequest

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

sandbox.write_file("/workspace/a.txt", b"hello sdk")
assert sandbox.read_file("/workspace/a.txt") == b"hello sdk"
names = [f.name for f in sandbox.list_files("/workspace")]
assert "a.txt" in names, names
assert sandbox.stat_file("/workspace/a.txt").size == 9

snap = client.sandboxes.create_rootfs_snapshot(sandbox.id)
assert snap.sandbox_id == sandbox.id, snap
assert [s.id for s in client.sandboxes.list_rootfs_snapshots(sandbox.id)] == [snap.id]
assert client.sandboxes.get_rootfs_snapshot(snap.id).id == snap.id
client.sandboxes.delete_rootfs_snapshot(snap.id)
assert client.sandboxes.list_rootfs_snapshots(sandbox.id) == []

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

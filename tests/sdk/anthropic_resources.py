"""The official SDK over the resources the session tests do not reach:
environments, agent versions, memory stores and memories (with content
hash preconditions), vaults and their credentials, files, session updates, work items as an operator and a
worker see them (list, stats, poll, ack, heartbeat, retrieve, update, stop),
and the API's error bodies (404, 409, 400).

Its exchanges, recorded (SANDSTONE_RECORD_DIR, see _record.py), are the
fixture crates/sandstone-agents-api/tests/fixtures/sdk-resources.json.

Environment: ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, SANDSTONE_ENV_ID,
SANDSTONE_ENV_KEY. Prints {"ok": true} when every call did what it should.
"""
import os

import anthropic

import _record  # noqa: F401  (records the exchanges when SANDSTONE_RECORD_DIR is set)

# Strict: a response that does not parse into the SDK's model is an error.
c = anthropic.Anthropic(max_retries=0, _strict_response_validation=True)
env_id = os.environ["SANDSTONE_ENV_ID"]
wc = anthropic.Anthropic(max_retries=0, api_key=None, auth_token=os.environ["SANDSTONE_ENV_KEY"],
                         _strict_response_validation=True)


def expect_error(status, f):
    try:
        f()
    except anthropic.APIStatusError as e:
        if e.status_code != status:
            raise SystemExit(f"expected HTTP {status}, got {e.status_code}: {e}")
        return
    raise SystemExit(f"expected HTTP {status}")


e = c.beta.environments.create(name="rec", description="recorded", metadata={"a": "1", "b": "2"})
c.beta.environments.retrieve(e.id)
c.beta.environments.update(e.id, metadata={"a": None, "c": "3"}, description="changed")
c.beta.environments.list()
c.beta.environments.archive(e.id)
gone = c.beta.environments.create(name="gone")
c.beta.environments.delete(gone.id)
expect_error(404, lambda: c.beta.environments.retrieve("env_missing"))
# A cloud environment, in the SDK's own models both ways.
cloud = c.beta.environments.create(name="cloud", config={
    "type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]},
    "packages": {"type": "packages", "pip": []}})
assert cloud.config.type == "cloud" and cloud.config.networking.allowed_hosts == ["api.example.com"], cloud
assert cloud.config.networking.allow_package_managers is False, cloud
cloud = c.beta.environments.update(cloud.id, config={"type": "cloud", "networking": {"type": "unrestricted"}})
assert cloud.config.networking.type == "unrestricted" and cloud.config.packages.pip == [], cloud
expect_error(400, lambda: c.beta.environments.create(
    name="bad", config={"type": "cloud", "packages": {"pip": ["x; rm -rf /"]}}))
c.beta.environments.delete(cloud.id)

agent = c.beta.agents.create(name="rec", model="scripted-e2e",
    tools=[{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}},
            "configs": [{"name": "bash", "enabled": True, "permission_policy": {"type": "always_allow"}}]},
           {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}}],
    metadata={"k": "v"})
a2 = c.beta.agents.update(agent.id, version=agent.version, system="be brief", metadata={"k": None})
c.beta.agents.versions.list(agent.id)
expect_error(409, lambda: c.beta.agents.update(agent.id, version=1, system="stale"))

store = c.beta.memory_stores.create(name="Rec Store", description="d", metadata={"x": "y"})
c.beta.memory_stores.retrieve(store.id)
c.beta.memory_stores.update(store.id, description="d2", metadata={"x": None})
c.beta.memory_stores.list()
m1 = c.beta.memory_stores.memories.create(store.id, path="/a/b.md", content="hello")
c.beta.memory_stores.memories.create(store.id, path="/c.md", content="")
c.beta.memory_stores.memories.list(store.id)
c.beta.memory_stores.memories.list(store.id, view="full", depth=1)
c.beta.memory_stores.memories.retrieve(m1.id, memory_store_id=store.id)
m1b = c.beta.memory_stores.memories.update(m1.id, memory_store_id=store.id, content="hello again",
    precondition={"type": "content_sha256", "content_sha256": m1.content_sha256})
expect_error(409, lambda: c.beta.memory_stores.memories.update(m1.id, memory_store_id=store.id, content="x",
    precondition={"type": "content_sha256", "content_sha256": m1.content_sha256}))
c.beta.memory_stores.memories.delete(m1.id, memory_store_id=store.id, expected_content_sha256=m1b.content_sha256)

s = c.beta.sessions.create(agent={"type": "agent", "id": agent.id, "version": 1}, environment_id=env_id,
    title="rec", metadata={"m": "1"},
    resources=[{"type": "memory_store", "memory_store_id": store.id, "access": "read_only", "instructions": "i"}])
c.beta.sessions.update(s.id, title="renamed", metadata={"m": None, "n": "2"})
# Its resources, as the SDK lists them; a self-hosted session takes no
# files, and has no repository to retrieve.
listed = c.beta.sessions.resources.list(s.id)
assert [r.type for r in listed.data] == ["memory_store"], listed
expect_error(400, lambda: c.beta.sessions.resources.add(s.id, type="file", file_id="file_x"))
expect_error(404, lambda: c.beta.sessions.resources.retrieve("sesrsc_missing", session_id=s.id))
expect_error(404, lambda: c.beta.sessions.resources.delete("sesrsc_missing", session_id=s.id))
c.beta.sessions.list(agent_id=agent.id)
c.beta.sessions.events.list(s.id)
expect_error(400, lambda: c.beta.sessions.events.send(s.id, events=[{"type": "user.tool_result", "tool_use_id": "sevt_missing", "content": []}]))
work = wc.beta.environments.work.list(env_id)
wc.beta.environments.work.stats(env_id)
w = work.data[0]
# The worker's own calls, one by one: poll, ack, heartbeat.
polled = wc.beta.environments.work.poll(env_id, block_ms=500)
if polled is None or polled.id != w.id:
    raise SystemExit(f"poll: {polled}")
wc.beta.environments.work.ack(w.id, environment_id=env_id)
beat = wc.beta.environments.work.heartbeat(w.id, environment_id=env_id, desired_ttl_seconds=30,
                                            expected_last_heartbeat="NO_HEARTBEAT")
if not beat.lease_extended or not beat.last_heartbeat:
    raise SystemExit(f"heartbeat: {beat}")
c.beta.environments.work.retrieve(w.id, environment_id=env_id)
c.beta.environments.work.update(w.id, environment_id=env_id, metadata={"who": "rec"})
wc.beta.environments.work.stop(w.id, environment_id=env_id, force=True)
expect_error(409, lambda: wc.beta.environments.work.stop(w.id, environment_id=env_id, force=True))
c.beta.sessions.archive(s.id)
s2 = c.beta.sessions.create(agent=agent.id, environment_id=env_id)
c.beta.sessions.delete(s2.id)
c.beta.agents.archive(agent.id)
c.beta.memory_stores.archive(store.id)
c.beta.memory_stores.delete(store.id)
# Files: upload, metadata, list (all, and by id), download, delete.
up = c.beta.files.upload(file=("notes.txt", b"hello files", "text/plain"))
assert (up.filename, up.size_bytes, up.mime_type) == ("notes.txt", 11, "text/plain"), up
assert c.beta.files.retrieve_metadata(up.id).filename == "notes.txt"
assert c.beta.files.download(up.id).read() == b"hello files"
other = c.beta.files.upload(file=("b.bin", b"\x00\x01"))
assert other.mime_type == "application/octet-stream", other
assert {f.id for f in c.beta.files.list().data} >= {up.id, other.id}
assert [f.id for f in c.beta.files.list(ids=[up.id]).data] == [up.id]
assert c.beta.files.delete(up.id).id == up.id
expect_error(404, lambda: c.beta.files.retrieve_metadata(up.id))
expect_error(404, lambda: c.beta.files.download(up.id))
c.beta.files.delete(other.id)

# File resources of a cloud session: at their default mount path, added
# and deleted through sessions.resources.
cloud = c.beta.environments.create(
    name="files", config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": []}})
f_in = c.beta.files.upload(file=("in.txt", b"in", "text/plain"))
f_more = c.beta.files.upload(file=("more.txt", b"more", "text/plain"))
fa = c.beta.agents.create(name="files", model="scripted-e2e")
fs = c.beta.sessions.create(agent=fa.id, environment_id=cloud.id,
                            resources=[{"type": "file", "file_id": f_in.id}])
assert fs.resources[0].mount_path == f"/mnt/session/uploads/{f_in.id}", fs.resources
added = c.beta.sessions.resources.add(fs.id, type="file", file_id=f_more.id,
                                      mount_path="/workspace/more.txt")
assert (added.type, added.file_id, added.mount_path) == ("file", f_more.id, "/workspace/more.txt"), added
assert c.beta.sessions.resources.retrieve(added.id, session_id=fs.id).file_id == f_more.id
assert [r.type for r in c.beta.sessions.resources.list(fs.id).data] == ["file", "file"]
c.beta.sessions.resources.delete(added.id, session_id=fs.id)
expect_error(400, lambda: c.beta.sessions.resources.add(fs.id, type="file", file_id="file_missing"))
c.beta.sessions.delete(fs.id)

# Vaults and credentials: every kind parses into the SDK's models, and no
# answer carries a secret.
vault = c.beta.vaults.create(display_name="alice", metadata={"user": "alice"})
c.beta.vaults.retrieve(vault.id)
c.beta.vaults.update(vault.id, display_name="alice2", metadata={"user": None})
assert any(v.id == vault.id for v in c.beta.vaults.list().data)
bearer = c.beta.vaults.credentials.create(vault.id, display_name="mcp", auth={
    "type": "static_bearer", "mcp_server_url": "https://mcp.example.com/mcp", "token": "sdk-s3cret-1"})
oauth = c.beta.vaults.credentials.create(vault.id, auth={
    "type": "mcp_oauth", "mcp_server_url": "https://other.example.com/mcp", "access_token": "sdk-s3cret-2",
    "refresh": {"client_id": "cid", "refresh_token": "sdk-s3cret-3", "token_endpoint": "https://auth.example.com/t",
                "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": "sdk-s3cret-4"}}})
assert oauth.auth.refresh.token_endpoint_auth.type == "client_secret_basic", oauth
var = c.beta.vaults.credentials.create(vault.id, auth={
    "type": "environment_variable", "secret_name": "API_KEY", "secret_value": "sdk-s3cret-5",
    "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]}})
assert var.auth.networking.allowed_hosts == ["api.example.com"] and var.auth.injection_location.header, var
var = c.beta.vaults.credentials.update(var.id, vault_id=vault.id, auth={
    "type": "environment_variable", "secret_value": "sdk-s3cret-6", "injection_location": {"body": False}})
assert var.auth.injection_location.body is False, var
c.beta.vaults.credentials.retrieve(bearer.id, vault_id=vault.id)
listed = c.beta.vaults.credentials.list(vault.id)
assert "sdk-s3cret" not in listed.to_json() and len(listed.data) == 3, listed
# Validated live: nothing listens at its server, so the verdict is unknown.
probe = c.beta.vaults.credentials.create(vault.id, auth={
    "type": "mcp_oauth", "mcp_server_url": "http://127.0.0.1:9/mcp", "access_token": "sdk-s3cret-7"})
checked = c.beta.vaults.credentials.mcp_oauth_validate(probe.id, vault_id=vault.id)
assert (checked.status, checked.mcp_probe.method, checked.refresh) == ("unknown", "initialize", None), checked
c.beta.vaults.credentials.delete(probe.id, vault_id=vault.id)
c.beta.vaults.credentials.archive(oauth.id, vault_id=vault.id)
c.beta.vaults.credentials.delete(bearer.id, vault_id=vault.id)
expect_error(400, lambda: c.beta.vaults.credentials.create(vault.id, auth={
    "type": "static_bearer", "mcp_server_url": "not a url", "token": "t"}))
expect_error(404, lambda: c.beta.vaults.retrieve("vlt_missing"))
c.beta.vaults.archive(vault.id)
c.beta.vaults.delete(vault.id)
print('{"ok": true}')

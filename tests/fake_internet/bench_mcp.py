"""MCP tool-call overhead (scripts/bench-mcp.sh): the same `echo` call on
the same MCP server (mcp_server.py), made directly from the host over one
kept-alive session (the baseline), and made by Sandstone's agent loop for a
session whose model calls it CALLS times (agent.mcp_tool_use ->
agent.mcp_tool_result, from the events' processed_at). Prints one JSON line.

Environment: MCP_URL, MCP_TOKEN, URL (the daemon), TOKEN, CALLS.
"""
import json
import os
import statistics
import time
from datetime import datetime

import httpx

MCP_URL, MCP_TOKEN = os.environ["MCP_URL"], os.environ["MCP_TOKEN"]
URL, TOKEN, CALLS = os.environ["URL"], os.environ["TOKEN"], int(os.environ["CALLS"])


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 3)


def direct():
    h = {"authorization": "Bearer " + MCP_TOKEN, "accept": "application/json, text/event-stream"}
    with httpx.Client(headers=h) as c:
        r = c.post(MCP_URL, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
        r.raise_for_status()
        h2 = {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        c.post(MCP_URL, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h2)
        out = []
        for i in range(CALLS + 10):
            t = time.perf_counter()
            r = c.post(MCP_URL, headers=h2, json={"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                                                  "params": {"name": "echo", "arguments": {"text": "hi"}}})
            r.raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
        return out[10:]


def through_sandstone():
    h = {"x-api-key": TOKEN, "anthropic-beta": "managed-agents-2026-04-01"}
    with httpx.Client(base_url=URL + "/v1", headers=h, timeout=60) as c:
        def post(path, body):
            r = c.post(path, json=body)
            r.raise_for_status()
            return r.json()
        vault = post("/vaults", {"display_name": "bench"})
        post(f"/vaults/{vault['id']}/credentials", {"auth": {
            "type": "static_bearer", "mcp_server_url": MCP_URL, "token": MCP_TOKEN}})
        agent = post("/agents", {"name": "bench", "model": "scripted-bench_mcp",
                                 "mcp_servers": [{"type": "url", "name": "m", "url": MCP_URL}],
                                 "tools": [{"type": "mcp_toolset", "mcp_server_name": "m",
                                            "default_config": {"permission_policy": {"type": "always_allow"}}}]})
        env = post("/environments", {"name": "bench", "config": {"type": "self_hosted"}})
        s = post("/sessions", {"agent": agent["id"], "environment_id": env["id"], "vault_ids": [vault["id"]]})
        post(f"/sessions/{s['id']}/events", {"events": [
            {"type": "user.message", "content": [{"type": "text", "text": "go"}]}]})
        deadline = time.time() + 300
        while time.time() < deadline:
            evs = c.get(f"/sessions/{s['id']}/events", params={"limit": 1000}).json()["data"]
            if any(e["type"] == "session.status_idle" and e["stop_reason"]["type"] == "end_turn" for e in evs):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("the session did not end its turn")
        at = {e["id"]: datetime.fromisoformat(e["processed_at"].replace("Z", "+00:00"))
              for e in evs if e["type"] == "agent.mcp_tool_use"}
        out = [(datetime.fromisoformat(e["processed_at"].replace("Z", "+00:00")) - at[e["mcp_tool_use_id"]])
               .total_seconds() * 1000 for e in evs if e["type"] == "agent.mcp_tool_result"]
        errors = [e for e in evs if e["type"] == "agent.mcp_tool_result" and e["is_error"]]
        if len(out) != CALLS or errors:
            raise SystemExit(f"expected {CALLS} good results, got {len(out)} ({len(errors)} errors)")
        return out[5:]


d = direct()
s = through_sandstone()
print(json.dumps({"direct_p50_ms": pct(d, 0.5), "direct_p99_ms": pct(d, 0.99),
                  "sandstone_p50_ms": pct(s, 0.5), "sandstone_p99_ms": pct(s, 0.99),
                  "overhead_p50_ms": round(statistics.median(s) - statistics.median(d), 3)}))

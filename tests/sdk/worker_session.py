"""Runs one scripted session against a Sandstone daemon's Managed Agents API
and prints its tool calls, their results and how long each took, as JSON.

The agent's model is tests/fake_model/server.py playing the script SCRIPT
(model "scripted-<SCRIPT>"). The tools are served by:
  WORKER=official  the official SDK worker, in this process, with its tools
                   running in WORKDIR (the comparison baseline);
  WORKER=external  whatever worker polls the environment (`sandstone worker`).
This script is the client app: it answers the custom tool `lookup` and stops
at the session's first `end_turn`.

Environment: ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, SANDSTONE_ENV_ID,
SANDSTONE_ENV_KEY, SCRIPT, WORKER, WORKDIR (official only), TIMEOUT (s, 120),
SESSIONS (how many identical sessions to run at once, 1), TURNS (user
messages per session, 1; each after the previous end_turn and PAUSE seconds,
so the worker can let the item go and pause the sandbox in between).

Output (one line): {"sessions": [{"session_id", "calls": [{"name", "input",
"is_error", "content", "ms", "turn_sent_ns"}]}]} where `ms` is the time
from the tool use appearing on the event stream to its result appearing
there, and `turn_sent_ns` the wall clock when its turn's message was sent.
"""
import asyncio
import contextlib
import json
import os
import sys
import time

import anthropic

import _record  # noqa: F401  (records the exchanges when SANDSTONE_RECORD_DIR is set)

LOOKUP_TOOL = {
    "type": "custom",
    "name": "lookup",
    "description": "Look a word up",
    "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
}


async def converse(client, session_id: str, timeout: float, turns: int, pause: float) -> list:
    out = []
    for turn in range(turns):
        if turn:
            await asyncio.sleep(pause)
        out.extend(await one_turn(client, session_id, timeout))
    return out


async def one_turn(client, session_id: str, timeout: float) -> list:
    calls = {}  # tool use id -> record
    order = []
    stream = await client.beta.sessions.events.stream(session_id)
    async with stream:
        sent_ns = time.time_ns()
        await client.beta.sessions.events.send(
            session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "go"}]}]
        )
        deadline = time.monotonic() + timeout
        async for ev in stream:
            if time.monotonic() > deadline:
                raise SystemExit(f"session {session_id}: no end_turn within {timeout}s")
            now = time.monotonic()
            if ev.type in ("agent.tool_use", "agent.custom_tool_use"):
                calls[ev.id] = {"name": ev.name, "input": ev.input, "seen": now, "turn_sent_ns": sent_ns}
                order.append(ev.id)
                if ev.type == "agent.custom_tool_use" and ev.name == "lookup":
                    await client.beta.sessions.events.send(session_id, events=[{
                        "type": "user.custom_tool_result", "custom_tool_use_id": ev.id,
                        "content": [{"type": "text", "text": f"definition of {ev.input.get('word')}"}]}])
            elif ev.type in ("user.tool_result", "user.custom_tool_result"):
                use_id = ev.tool_use_id if ev.type == "user.tool_result" else ev.custom_tool_use_id
                rec = calls.get(use_id)
                if rec is not None and "ms" not in rec:
                    rec["ms"] = (now - rec["seen"]) * 1000.0
                    rec["is_error"] = bool(ev.is_error)
                    rec["content"] = [b.model_dump(exclude_none=True) for b in (ev.content or [])]
            elif ev.type == "session.status_idle" and ev.stop_reason.type == "end_turn":
                break
            elif ev.type in ("session.status_terminated", "session.deleted"):
                raise SystemExit(f"session {session_id} ended: {ev.type}")
    out = []
    for i in order:
        rec = calls[i]
        rec.pop("seen")
        out.append(rec)
    return out


async def official_worker(client, env_id: str, env_key: str, workdir: str):
    """Serves every item until cancelled (after the conversations end), as a
    worker process would: a later turn is a new item, polled for again."""
    worker = client.beta.environments.work.worker(
        environment_id=env_id, environment_key=env_key, workdir=workdir, max_idle=2.0)
    items = client.beta.environments.work.poller(environment_id=env_id, environment_key=env_key, auto_stop=False)
    tasks = []
    try:
        async with contextlib.aclosing(items):
            async for item in items:
                tasks.append(asyncio.create_task(worker.handle_item(
                    work_id=item.id, environment_id=item.environment_id, session_id=item.data.id,
                    work_secret=item.secret)))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def main() -> None:
    env_id, env_key = os.environ["SANDSTONE_ENV_ID"], os.environ["SANDSTONE_ENV_KEY"]
    script, mode = os.environ["SCRIPT"], os.environ.get("WORKER", "external")
    timeout = float(os.environ.get("TIMEOUT", "120"))
    n = int(os.environ.get("SESSIONS", "1"))
    turns, pause = int(os.environ.get("TURNS", "1")), float(os.environ.get("PAUSE", "0"))
    client = anthropic.AsyncAnthropic(timeout=60.0)
    agent = await client.beta.agents.create(
        name=f"worker-{script}", model=f"scripted-{script}", system="test",
        tools=[{"type": "agent_toolset_20260401"}, LOOKUP_TOOL])
    sessions = [await client.beta.sessions.create(agent=agent.id, environment_id=env_id) for _ in range(n)]
    worker = None
    if mode == "official":
        worker = asyncio.create_task(
            official_worker(client, env_id, env_key, os.environ["WORKDIR"]))
    try:
        results = await asyncio.gather(*(converse(client, s.id, timeout, turns, pause) for s in sessions))
    finally:
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(worker, timeout=30.0)
    print(json.dumps({"sessions": [{"session_id": s.id, "calls": r} for s, r in zip(sessions, results)]}))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except SystemExit as e:
        print(e, file=sys.stderr)
        sys.exit(1)

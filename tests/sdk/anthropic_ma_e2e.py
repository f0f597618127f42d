"""End-to-end test of Sandstone's Claude Managed Agents API (`sandstone serve`,
under /v1) with the official `anthropic` Python SDK (written against 2.14.0).

What it drives, all through public SDK entry points:
  * the sync client (`anthropic.Anthropic()`): agents create / retrieve / list,
    sessions create / retrieve, and the session's event history (events.list,
    auto-paginated);
  * the async client (`anthropic.AsyncAnthropic()`): the live event stream
    (events.stream), events.send, and the SDK's own self-hosted environment
    worker (`client.beta.environments.work.worker(...)`), which runs the
    `agent_toolset_20260401` tools (bash, read, write, edit, glob, grep) in
    WORKDIR and posts their `user.tool_result` events.

The model behind the agent is tests/fake_model/server.py playing
tests/fake_model/scripts/e2e.json (agent model "scripted-e2e"): one turn per
tool, then the custom tool `lookup`, which this script answers as the client
app, then a final message that echoes the lookup result.

Environment:
  ANTHROPIC_BASE_URL  the Sandstone daemon, e.g. http://127.0.0.1:7700
  ANTHROPIC_API_KEY   the server API key
  SANDSTONE_ENV_ID    a self_hosted environment created beforehand
  SANDSTONE_ENV_KEY   an environment key of that environment
  WORKDIR             an empty directory; the worker's tools run there
Optional:
  E2E_TIMEOUT         seconds for the conversation (default 60)
  E2E_WORKER_MODE     "poll" (default): the SDK poller claims the work item
                      and `EnvironmentWorker.handle_item` serves it, which
                      returns once the worker's idle watchdog ends the session
                      run (max_idle after end_turn) and the item is
                      force-stopped. "run": `EnvironmentWorker.run()`, the
                      forever poll loop, cancelled max_idle + a grace period
                      after end_turn.
  E2E_STRICT=0        do not validate our own responses strictly against the
                      SDK's pydantic models (the default does; the worker's
                      clients stay lenient)
  E2E_VERBOSE=1       echo the SDK's INFO logs (worker, poller, runner)

Prints one line of JSON on success and exits 0; on any failed expectation
prints the reason (plus the events and worker logs seen so far) to stderr and
exits 1.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import traceback

import anthropic

import _record  # noqa: F401  (records the exchanges when SANDSTONE_RECORD_DIR is set)

# ---------------------------------------------------------------- constants --

AGENT_NAME = "e2e"
MODEL = "scripted-e2e"
SYSTEM = "You are a test agent."
LOOKUP_TOOL = {
    "type": "custom",
    "name": "lookup",
    "description": "Look a word up",
    "input_schema": {
        "type": "object",
        "properties": {"word": {"type": "string"}},
        "required": ["word"],
    },
}
# The whole toolset, each tool with its default config (enabled, default
# permission policy), plus the custom tool that this script serves.
TOOLS = [{"type": "agent_toolset_20260401"}, LOOKUP_TOOL]
USER_TEXT = "run the script"

# What tests/fake_model/scripts/e2e.json makes the agent do, in order.
NOTES = "alpha beta\ngamma\n"
EXPECTED_TOOL_USES = [
    ("bash", {"command": "echo hello > hello.txt && cat hello.txt"}),
    ("write", {"file_path": "notes.txt", "content": NOTES}),
    ("read", {"file_path": "notes.txt"}),
    ("edit", {"file_path": "notes.txt", "old_string": "beta", "new_string": "BETA"}),
    ("glob", {"pattern": "*.txt"}),
    ("grep", {"pattern": "BETA"}),
]
LOOKUP_INPUT = {"word": "sandstone"}
FIRST_MESSAGE = "Running the script."
FINAL_MESSAGE = "done: definition of sandstone"

MAX_IDLE = 3.0  # the worker stops serving the session this long after end_turn
WORKER_ID = "sandstone-e2e-worker"
CLIENT_TIMEOUT = 30.0  # per HTTP request (and per read on the SSE streams)


class Failure(Exception):
    """A failed expectation."""


def check(ok: object, message: str) -> None:
    if not ok:
        raise Failure(message)


def require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise Failure(f"environment variable {name} is not set")
    return value


step = "start"  # what the script is doing; named in failure reports
stream_trail: list[list[str]] = []  # [type, summary] of every event streamed to us


def set_step(name: str) -> None:
    global step
    step = name


# ------------------------------------------------------------- formatting --


def text_of(content: object) -> str:
    """The concatenated text blocks of an event's `content` (None → "")."""
    return "".join(
        getattr(block, "text", "") or "" for block in (content or []) if getattr(block, "type", None) == "text"
    )


def clip(text: str, n: int = 80) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 3] + "..."


def summarize(ev: object) -> list[str]:
    """[type, short summary] of a session event, for the report."""
    kind = getattr(ev, "type", "?")
    summary = ""
    if kind in ("user.message", "agent.message"):
        summary = clip(text_of(getattr(ev, "content", None)))
    elif kind in ("agent.tool_use", "agent.custom_tool_use"):
        summary = f"{getattr(ev, 'name', '?')} {clip(json.dumps(getattr(ev, 'input', None)), 70)}"
        permission = getattr(ev, "evaluated_permission", None)
        if permission:
            summary += f" [{permission}]"
    elif kind in ("user.tool_result", "user.custom_tool_result"):
        target = getattr(ev, "tool_use_id", None) or getattr(ev, "custom_tool_use_id", None)
        error = "ERROR " if getattr(ev, "is_error", False) else ""
        summary = f"{target} {error}{clip(text_of(getattr(ev, 'content', None)), 60)}"
    elif kind == "session.status_idle":
        reason = getattr(ev, "stop_reason", None)
        summary = str(getattr(reason, "type", None))
        if getattr(reason, "event_ids", None):
            summary += f" {list(reason.event_ids)}"
    elif kind == "session.error":
        error = getattr(ev, "error", None)
        retry = getattr(getattr(error, "retry_status", None), "type", None)
        summary = f"{getattr(error, 'type', '?')}: {clip(str(getattr(error, 'message', '')), 60)} ({retry})"
    return [kind, summary]


# ----------------------------------------------------------- SDK log capture --


class LogCapture(logging.Handler):
    """Keeps the SDK helpers' log records (worker, poller, session tool runner).

    They are how the official worker reports trouble it does not raise: a
    failed work item (in `run` mode), a tool result it could not post, a
    rejected heartbeat, a failed force-stop.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int) -> list[str]:
        return [
            f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records if r.levelno >= level
        ]


def install_log_capture() -> LogCapture:
    capture = LogCapture()
    sdk_lib = logging.getLogger("anthropic.lib")
    sdk_lib.setLevel(logging.INFO)
    sdk_lib.addHandler(capture)
    if os.environ.get("E2E_VERBOSE") == "1":
        echo = logging.StreamHandler(sys.stderr)
        echo.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        sdk_lib.addHandler(echo)
    return capture


# -------------------------------------------------- step 1-2: agent, session --


def create_agent(client: anthropic.Anthropic):
    set_step("create agent")
    agent = client.beta.agents.create(name=AGENT_NAME, model=MODEL, system=SYSTEM, tools=TOOLS)
    check(agent.id, "agents.create returned no id")
    check(agent.type == "agent", f"agent.type is {agent.type!r}")
    check(agent.name == AGENT_NAME, f"agent.name is {agent.name!r}")
    check(agent.system == SYSTEM, f"agent.system is {agent.system!r}")
    check(agent.version >= 1, f"agent.version is {agent.version!r}")
    # The response resolves `model` into a model config object.
    check(getattr(agent.model, "id", None) == MODEL, f"agent.model is {agent.model!r}, want id {MODEL!r}")
    kinds = sorted(t.type for t in agent.tools)
    check(kinds == ["agent_toolset_20260401", "custom"], f"agent.tools types are {kinds}")
    toolset = next(t for t in agent.tools if t.type == "agent_toolset_20260401")
    # Every field comes back resolved: a toolset carries its default config.
    check(getattr(toolset, "default_config", None) is not None, "the toolset has no resolved default_config")
    lookup = next(t for t in agent.tools if t.type == "custom")
    check(lookup.name == "lookup", f"custom tool name is {lookup.name!r}")
    check(lookup.description == LOOKUP_TOOL["description"], f"custom tool description is {lookup.description!r}")
    schema = lookup.input_schema
    check(
        schema.type == "object" and schema.properties == LOOKUP_TOOL["input_schema"]["properties"]
        and schema.required == ["word"],
        f"custom tool input_schema is {schema!r}",
    )

    set_step("retrieve agent")
    got = client.beta.agents.retrieve(agent.id)
    check(
        (got.id, got.name, got.version, got.system) == (agent.id, agent.name, agent.version, agent.system),
        f"agents.retrieve returned {got.id} {got.name!r} v{got.version}, want {agent.id} {agent.name!r} v{agent.version}",
    )
    check([t.type for t in got.tools] == [t.type for t in agent.tools], "agents.retrieve returned other tools")

    set_step("list agents")
    listed = [a.id for a in client.beta.agents.list()]  # iterating auto-paginates
    check(agent.id in listed, f"agents.list does not include {agent.id} (listed {len(listed)} agents)")
    return agent


def create_session(client: anthropic.Anthropic, agent, env_id: str):
    set_step("create session")
    session = client.beta.sessions.create(agent=agent.id, environment_id=env_id, title="e2e")
    check(session.id, "sessions.create returned no id")
    check(session.type == "session", f"session.type is {session.type!r}")
    check(session.environment_id == env_id, f"session.environment_id is {session.environment_id!r}")
    check(session.title == "e2e", f"session.title is {session.title!r}")
    check(session.agent.id == agent.id, f"session.agent.id is {session.agent.id!r}")
    # A session created without initial_events starts idle.
    check(session.status == "idle", f"a new session's status is {session.status!r}, want 'idle'")
    # The worker reads these two before serving the session.
    check(isinstance(getattr(session, "resources", None), list), "session.resources is missing or not a list")
    check(
        isinstance(getattr(session.agent, "skills", None), list), "session.agent.skills is missing or not a list"
    )
    return session


# ---------------------------------------------- steps 3-5: worker + stream --


async def serve_with_poller(aclient: anthropic.AsyncAnthropic, worker, cfg: dict, session_id: str):
    """Claim work items with the SDK poller and serve each with the SDK worker
    until our session's item is done; returns that work item.

    `auto_stop=False` because `handle_item` force-stops the item itself, the
    same composition `EnvironmentWorker.run()` uses.
    """
    items = aclient.beta.environments.work.poller(
        environment_id=cfg["env_id"],
        environment_key=cfg["env_key"],
        worker_id=WORKER_ID,
        auto_stop=False,
    )
    async with contextlib.aclosing(items):
        async for item in items:
            data = item.data
            await worker.handle_item(
                work_id=item.id,
                environment_id=item.environment_id,
                session_id=data.id,
                work_secret=item.secret,
            )
            if data.type == "session" and data.id == session_id:
                return item
    raise Failure("the work poller ended without claiming the session's work item")


async def converse(aclient: anthropic.AsyncAnthropic, session_id: str) -> dict:
    """Open the event stream, send the user message, answer `lookup`, and
    return once the session goes idle with end_turn."""
    tool_uses: dict[str, object] = {}  # agent.tool_use / agent.custom_tool_use events by id
    answered: dict[str, str] = {}  # custom_tool_use id -> the text we sent
    set_step("open event stream")
    # Open the stream before sending: it is live only (no replay).
    stream = await aclient.beta.sessions.events.stream(session_id)
    async with stream:
        set_step("send user.message")
        sent = await aclient.beta.sessions.events.send(
            session_id,
            events=[{"type": "user.message", "content": [{"type": "text", "text": USER_TEXT}]}],
        )
        data = sent.data or []
        check(
            len(data) == 1 and data[0].type == "user.message" and data[0].id,
            f"events.send returned {[summarize(e) for e in data]}, want one user.message with an id",
        )

        set_step("consume event stream")
        async for ev in stream:
            stream_trail.append(summarize(ev))
            kind = ev.type
            if kind == "agent.custom_tool_use":
                tool_uses[ev.id] = ev
            elif kind == "agent.tool_use":
                tool_uses[ev.id] = ev
                permission = getattr(ev, "evaluated_permission", None)
                check(
                    permission in (None, "allow"),
                    f"agent.tool_use {ev.name} has evaluated_permission {permission!r}: with the default "
                    "policy it should run without a user.tool_confirmation",
                )
            elif kind == "session.status_idle":
                reason = ev.stop_reason
                if reason.type == "requires_action":
                    for event_id in reason.event_ids:
                        if event_id in answered:
                            continue
                        use = tool_uses.get(event_id) or await find_event(aclient, session_id, event_id)
                        if use is None:
                            raise Failure(f"requires_action names {event_id}, which is not in the session's events")
                        if use.type != "agent.custom_tool_use":
                            continue  # a toolset call: the worker's to answer
                        check(use.name == "lookup", f"agent.custom_tool_use for unknown tool {use.name!r}")
                        word = (use.input or {}).get("word")
                        text = f"definition of {word}"
                        set_step("send user.custom_tool_result")
                        await aclient.beta.sessions.events.send(
                            session_id,
                            events=[
                                {
                                    "type": "user.custom_tool_result",
                                    "custom_tool_use_id": event_id,
                                    "content": [{"type": "text", "text": text}],
                                }
                            ],
                        )
                        answered[event_id] = text
                        set_step("consume event stream")
                elif reason.type == "end_turn":
                    check(answered, "the session ended its turn without asking for the lookup tool")
                    return answered
                else:
                    raise Failure(f"the session went idle with stop_reason {reason.type!r}")
            elif kind in ("session.status_terminated", "session.deleted"):
                raise Failure(f"the session ended with {kind}")
            elif kind == "session.error":
                retry = getattr(getattr(ev.error, "retry_status", None), "type", None)
                if retry != "retrying":
                    raise Failure(f"session.error: {summarize(ev)[1]}")
    raise Failure("the event stream closed before the session went idle with end_turn")


async def find_event(aclient: anthropic.AsyncAnthropic, session_id: str, event_id: str):
    """An event by id from the session history (for an id the stream did not show us)."""
    async for ev in aclient.beta.sessions.events.list(session_id):
        if ev.id == event_id:
            return ev
    return None


async def drive_session(cfg: dict, session_id: str) -> dict:
    """Run the official worker and the conversation side by side."""
    aclient = anthropic.AsyncAnthropic(timeout=CLIENT_TIMEOUT, **cfg["client_kwargs"])
    worker = aclient.beta.environments.work.worker(
        environment_id=cfg["env_id"],
        environment_key=cfg["env_key"],
        workdir=cfg["workdir"],
        worker_id=WORKER_ID,
        max_idle=MAX_IDLE,
        # `tools` is left to its default, beta_agent_toolset_20260401(ctx):
        # the worker does not own `lookup`, so it leaves that call for us.
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg["timeout"]
    mode = cfg["worker_mode"]
    if mode == "poll":
        worker_task = asyncio.create_task(serve_with_poller(aclient, worker, cfg, session_id))
    else:
        worker_task = asyncio.create_task(worker.run())
    talk_task = asyncio.create_task(converse(aclient, session_id))
    try:
        # Wait for the conversation, failing at once if the worker dies first.
        done, _ = await asyncio.wait(
            {talk_task, worker_task}, timeout=cfg["timeout"], return_when=asyncio.FIRST_COMPLETED
        )
        if worker_task in done and not talk_task.done():
            exc = worker_task.exception()
            if exc is not None:
                conversation_step = step
                set_step("run worker")
                raise Failure(f"the worker failed (the conversation was at {conversation_step!r}): {exc!r}") from exc
            await asyncio.wait({talk_task}, timeout=max(0.0, deadline - loop.time()))
        if not talk_task.done():
            raise Failure(f"no session.status_idle with end_turn within {cfg['timeout']:g}s")
        answered = talk_task.result()

        # The worker's idle watchdog ends its session run MAX_IDLE after end_turn.
        set_step("wait for the worker to finish")
        grace = MAX_IDLE + 15.0
        work_item = None
        if mode == "poll":
            try:
                work_item = await asyncio.wait_for(worker_task, timeout=grace)
            except asyncio.TimeoutError:
                raise Failure(
                    f"the worker still served the session {grace:.0f}s after end_turn: its idle watchdog "
                    "never fired, so its own event stream did not deliver session.status_idle end_turn"
                ) from None
            except Exception as e:
                raise Failure(f"the worker failed after end_turn: {e!r}") from e
            check(
                work_item.data.type == "session" and work_item.data.id == session_id
                and work_item.environment_id == cfg["env_id"],
                f"unexpected work item {work_item!r}",
            )
        else:
            await asyncio.sleep(MAX_IDLE + 5.0)
            worker_task.cancel()  # the documented way to stop EnvironmentWorker.run()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(worker_task, timeout=30.0)
        return {"answered": answered, "work_id": getattr(work_item, "id", None)}
    finally:
        for task in (talk_task, worker_task):
            task.cancel()
        await asyncio.gather(talk_task, worker_task, return_exceptions=True)
        await aclient.close()


# ------------------------------------------------- step 6: verify the history --


def verify_history(client: anthropic.Anthropic, session, agent, cfg: dict) -> dict:
    set_step("list events")
    # A small page size so the auto-pagination follows next_page.
    events = list(client.beta.sessions.events.list(session.id, limit=10))
    ids = [e.id for e in events]
    check(all(ids), "an event in the history has no id")
    check(len(ids) == len(set(ids)), "the event history repeats an event id")
    position = {e.id: i for i, e in enumerate(events)}

    def of_type(kind: str) -> list:
        return [e for e in events if e.type == kind]

    set_step("verify events")
    errors = of_type("session.error")
    check(not errors, f"the history has session.error events: {[summarize(e) for e in errors]}")

    messages = of_type("user.message")
    check(
        [text_of(m.content) for m in messages] == [USER_TEXT],
        f"user.message events: {[summarize(m) for m in messages]}",
    )

    uses = of_type("agent.tool_use")
    got_uses = [(u.name, dict(u.input or {})) for u in uses]
    check(got_uses == EXPECTED_TOOL_USES, f"agent.tool_use events are {got_uses}, want {EXPECTED_TOOL_USES}")

    # Each toolset call has exactly one user.tool_result, posted by the worker.
    results = {}
    for use in uses:
        matching = [r for r in of_type("user.tool_result") if r.tool_use_id == use.id]
        check(len(matching) == 1, f"{len(matching)} user.tool_result events for {use.name} ({use.id}), want 1")
        result = matching[0]
        check(position[result.id] > position[use.id], f"the {use.name} result precedes its tool_use")
        text = text_of(result.content)
        check(not result.is_error, f"the {use.name} result is an error: {text!r}")
        results[use.name] = text
    check(
        len(of_type("user.tool_result")) == len(uses),
        f"{len(of_type('user.tool_result'))} user.tool_result events for {len(uses)} tool uses",
    )

    workdir = os.path.realpath(cfg["workdir"])
    check(results["bash"].strip() == "hello", f"bash result {results['bash']!r}, want 'hello'")
    check(
        results["write"] == f"wrote {len(NOTES)} bytes to notes.txt",
        f"write result {results['write']!r}, want 'wrote {len(NOTES)} bytes to notes.txt'",
    )
    # The SDK's read tool returns the file verbatim (no line numbers), so this
    # also checks the server kept the text, newlines included, byte for byte.
    check(results["read"] == NOTES, f"read result {results['read']!r}, want {NOTES!r}")
    check(
        results["edit"] == "edited notes.txt (1 replacement(s))",
        f"edit result {results['edit']!r}, want 'edited notes.txt (1 replacement(s))'",
    )
    globbed = sorted(results["glob"].splitlines())
    want_glob = sorted(os.path.join(workdir, n) for n in ("hello.txt", "notes.txt"))
    check(globbed == want_glob, f"glob result {results['glob']!r}, want the paths {want_glob}")
    grep_lines = results["grep"].splitlines()
    check(
        grep_lines == [f"{os.path.join(workdir, 'notes.txt')}:1:alpha BETA"],
        f"grep result {results['grep']!r}, want one match in notes.txt line 1",
    )

    customs = of_type("agent.custom_tool_use")
    check(
        [(c.name, dict(c.input or {})) for c in customs] == [("lookup", LOOKUP_INPUT)],
        f"agent.custom_tool_use events: {[summarize(c) for c in customs]}",
    )
    custom_results = of_type("user.custom_tool_result")
    check(
        [(r.custom_tool_use_id, text_of(r.content)) for r in custom_results]
        == [(customs[0].id, "definition of sandstone")],
        f"user.custom_tool_result events: {[summarize(r) for r in custom_results]}",
    )
    results["lookup"] = text_of(custom_results[0].content)
    check(position[custom_results[0].id] > position[customs[0].id], "the lookup result precedes its tool use")
    check(position[customs[0].id] > position[uses[-1].id], "lookup ran before the toolset calls finished")

    agent_messages = [text_of(m.content) for m in of_type("agent.message")]
    check(
        agent_messages == [FIRST_MESSAGE, FINAL_MESSAGE],
        f"agent.message texts are {agent_messages}, want {[FIRST_MESSAGE, FINAL_MESSAGE]}",
    )

    statuses = [e for e in events if e.type.startswith("session.status_")]
    check(statuses, "the history has no session.status_* events")
    last = statuses[-1]
    check(
        last.type == "session.status_idle" and last.stop_reason.type == "end_turn",
        f"the last status event is {summarize(last)}, want session.status_idle end_turn",
    )
    check(
        position[last.id] > position[of_type("agent.message")[-1].id],
        "the final session.status_idle precedes the final agent.message",
    )
    idles = of_type("session.status_idle")
    lookup_idle = [
        e for e in idles
        if e.stop_reason.type == "requires_action" and customs[0].id in (e.stop_reason.event_ids or [])
    ]
    check(lookup_idle, "no session.status_idle requires_action names the lookup call")

    set_step("retrieve session")
    final = client.beta.sessions.retrieve(session.id)
    check(final.id == session.id, f"sessions.retrieve returned {final.id}")
    check(final.status == "idle", f"the session's status is {final.status!r}, want 'idle'")
    check(final.agent.id == agent.id, f"the session's agent is {final.agent.id}")

    set_step("check the workdir")
    on_disk = {}
    for name in ("hello.txt", "notes.txt"):
        with open(os.path.join(workdir, name)) as f:
            on_disk[name] = f.read()
    check(
        on_disk == {"hello.txt": "hello\n", "notes.txt": "alpha BETA\ngamma\n"},
        f"files in WORKDIR: {on_disk}",
    )
    return {"events": events, "tool_results": results}


# ------------------------------------------------------------------- main --


def main() -> int:
    capture = install_log_capture()
    try:
        cfg = {
            "base_url": require_env("ANTHROPIC_BASE_URL"),
            "env_id": require_env("SANDSTONE_ENV_ID"),
            "env_key": require_env("SANDSTONE_ENV_KEY"),
            "workdir": require_env("WORKDIR"),
            "timeout": float(os.environ.get("E2E_TIMEOUT", "60")),
            "worker_mode": os.environ.get("E2E_WORKER_MODE", "poll"),
            "client_kwargs": {} if os.environ.get("E2E_STRICT") == "0" else {"_strict_response_validation": True},
        }
        require_env("ANTHROPIC_API_KEY")
        check(cfg["worker_mode"] in ("poll", "run"), f"E2E_WORKER_MODE must be poll or run, not {cfg['worker_mode']!r}")
        check(os.path.isdir(cfg["workdir"]), f"WORKDIR {cfg['workdir']} is not a directory")
        check(not os.listdir(cfg["workdir"]), f"WORKDIR {cfg['workdir']} is not empty")

        # Base URL and API key come from ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY.
        client = anthropic.Anthropic(timeout=CLIENT_TIMEOUT, **cfg["client_kwargs"])
        agent = create_agent(client)
        session = create_session(client, agent, cfg["env_id"])
        driven = asyncio.run(drive_session(cfg, session.id))

        # Trouble the worker logged but did not raise (a tool result it could
        # not post, a refused heartbeat, a failed force-stop, a failed item).
        worker_errors = capture.lines(logging.ERROR)
        check(not worker_errors, "the worker logged errors:\n  " + "\n  ".join(worker_errors))

        verified = verify_history(client, session, agent, cfg)
        client.close()
    except Failure as e:
        report_failure(f"FAIL ({step}): {e}", capture)
        return 1
    except anthropic.APIConnectionError as e:
        report_failure(f"FAIL ({step}): cannot reach {os.environ.get('ANTHROPIC_BASE_URL')}: {e!r}", capture)
        return 1
    except anthropic.APIStatusError as e:
        request = e.response.request
        report_failure(
            f"FAIL ({step}): {request.method} {request.url} -> HTTP {e.status_code}: {e.body!r}", capture
        )
        return 1
    except Exception:  # an SDK-side surprise, e.g. a response the models reject
        report_failure(f"FAIL ({step}): unexpected exception\n{traceback.format_exc()}", capture)
        return 1

    print(
        json.dumps(
            {
                "ok": True,
                "agent_id": agent.id,
                "session_id": session.id,
                "work_id": driven["work_id"],
                "worker_mode": cfg["worker_mode"],
                "events": [summarize(e) for e in verified["events"]],
                "tool_results": verified["tool_results"],
                "worker_warnings": capture.lines(logging.WARNING),
            }
        )
    )
    return 0


def report_failure(message: str, capture: LogCapture) -> None:
    print(message, file=sys.stderr)
    if stream_trail:
        print("events streamed so far:", file=sys.stderr)
        for kind, summary in stream_trail:
            print(f"  {kind} {summary}", file=sys.stderr)
    logs = capture.lines(logging.INFO)
    if logs:
        print("SDK worker logs:", file=sys.stderr)
        for line in logs[-60:]:
            print(f"  {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

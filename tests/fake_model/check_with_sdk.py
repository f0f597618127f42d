"""Checks the fake model (server.py) against the official `anthropic` SDK, so
the fake stays faithful to what real clients parse.

usage: <python with anthropic installed> check_with_sdk.py  (scripts/test.sh: $SANDSTONE_SDK_PYTHON)
  (any Python with the `anthropic` package installed)

Prints `fake model OK` and exits 0, or exits non-zero naming the mismatch.
"""
import atexit
import http.client
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import anthropic

KEY = "fake-model-test-key"
MODEL = "scripted-loop"
SYSTEM = "You are the agent loop under test."
TOOLS = [{
    "name": "bash",
    "description": "Run a shell command.",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
}]
SCRIPT = {
    "echo_tool_results": True,
    "turns": [
        {"content": [{"type": "text", "text": "Let me run a command for you, as asked."},
                     {"type": "tool_use", "name": "bash", "input": {"command": "echo hi"}}],
         "stop_reason": "tool_use", "fail_first": 1, "fail_status": 529},
        {"content": [{"type": "text", "text": "done: {{last_tool_result}}"}],
         "stop_reason": "end_turn"},
    ],
}
# The event names of SCRIPT's turn 0 streamed: its 39-character text comes in
# two 20-character deltas, its 22-character tool input JSON in an empty delta
# (as the real API opens) and two more.
SSE_SEQUENCE = (
    ["message_start", "ping"]
    + ["content_block_start"] + ["content_block_delta"] * 2 + ["content_block_stop"]
    + ["content_block_start"] + ["content_block_delta"] * 3 + ["content_block_stop"]
    + ["message_delta", "message_stop"]
)


def expect(what, got, want):
    if got != want:
        sys.exit(f"FAIL: {what}: got {got!r}, want {want!r}")


def start_server():
    """Runs server.py on a free port with SCRIPT as `loop`; returns its URL."""
    scripts = tempfile.mkdtemp(prefix="fake-model-scripts-")
    with open(os.path.join(scripts, "loop.json"), "w") as f:
        json.dump(SCRIPT, f)
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
    proc = subprocess.Popen(
        [sys.executable, server, "127.0.0.1", "0", scripts],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, FAKE_MODEL_KEY=KEY),
    )
    atexit.register(lambda: (proc.kill(), proc.wait()))
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        sys.exit(f"FAIL: server did not print `ready <port>`: {line!r}")
    return f"http://127.0.0.1:{line[1]}"


def first_turn(task):
    return [{"role": "user", "content": task}]


def second_turn(task, tool_use_id, result):
    return first_turn(task) + [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": tool_use_id, "name": "bash", "input": {"command": "echo hi"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use_id, "content": result}]},
    ]


def check_scripted_content(what, message, want_turn):
    """`message` (an SDK Message) carries the scripted blocks of turn `want_turn`."""
    want = SCRIPT["turns"][want_turn]
    got = [{k: v for k, v in block.model_dump().items() if k in ("type", "text", "name", "input")}
           for block in message.content]
    expect(f"{what}: content", got, want["content"])
    expect(f"{what}: stop_reason", message.stop_reason, want["stop_reason"])
    for block in message.content:
        if block.type == "tool_use" and not block.id.startswith("toolu_"):
            sys.exit(f"FAIL: {what}: tool_use id {block.id!r} lacks the toolu_ prefix")


def create(client, messages, **options):
    return client.messages.create(
        model=MODEL, max_tokens=1024, system=SYSTEM, tools=TOOLS, messages=messages, **options)


def check_create_retries_529(client):
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=1024, system=SYSTEM, tools=TOOLS, messages=first_turn("create"))
    expect("create: SDK retries of the scripted 529", raw.retries_taken, 1)
    message = raw.parse()
    check_scripted_content("create", message, 0)
    expect("create: usage.input_tokens > 0", message.usage.input_tokens > 0, True)
    return message.content[1].id


def check_stream_retries_529(client):
    deltas = []
    with client.messages.stream(model=MODEL, max_tokens=1024, system=SYSTEM, tools=TOOLS,
                                messages=first_turn("stream")) as stream:
        deltas.extend(stream.text_stream)
        message = stream.get_final_message()
    expect("stream: text deltas", "".join(deltas), SCRIPT["turns"][0]["content"][0]["text"])
    expect("stream: text arrives in several deltas", len(deltas) > 1, True)
    check_scripted_content("stream", message, 0)


def check_echoed_tool_result(client, tool_use_id):
    # The tool result once as a string and once as text blocks.
    for result in ("hi\n", [{"type": "text", "text": "hi"}, {"type": "text", "text": "\n"}]):
        message = create(client, second_turn("create", tool_use_id, result))
        expect("echo (create): text", message.content[0].text, "done: hi\n")
        with client.messages.stream(model=MODEL, max_tokens=1024, system=SYSTEM, tools=TOOLS,
                                    messages=second_turn("stream", tool_use_id, result)) as stream:
            message = stream.get_final_message()
        expect("echo (stream): text", message.content[0].text, "done: hi\n")
        expect("echo (stream): stop_reason", message.stop_reason, "end_turn")


def check_script_finished(client, tool_use_id):
    messages = second_turn("create", tool_use_id, "hi\n") + [
        {"role": "assistant", "content": "done: hi\n"}, {"role": "user", "content": "more?"}]
    expect("past the script's end", create(client, messages).content[0].text, "(script finished)")


def check_wrong_key(url):
    client = anthropic.Anthropic(base_url=url, api_key="wrong-key", max_retries=0)
    try:
        create(client, first_turn("wrong key"))
    except anthropic.AuthenticationError as e:
        expect("wrong key: error type", e.body["error"]["type"], "authentication_error")
        return
    sys.exit("FAIL: a wrong key did not raise anthropic.AuthenticationError")


def check_wire_format(url):
    """The raw SSE sequence and keep-alive, which the SDK hides: two streamed
    requests must complete over one connection."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"))
    body = json.dumps({"model": MODEL, "max_tokens": 1024, "stream": True,
                       "messages": first_turn("create")})
    for attempt in range(2):
        conn.request("POST", "/v1/messages?beta=true", body,
                     {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
        response = conn.getresponse()
        expect("raw stream: status", response.status, 200)
        expect("raw stream: content-type", response.getheader("content-type"), "text/event-stream")
        expect("raw stream: transfer-encoding", response.getheader("transfer-encoding"), "chunked")
        events = response.read().decode().split("\n\n")
        expect("raw stream: ends with a blank line", events.pop(), "")
        names = [event.split("\n")[0].removeprefix("event: ") for event in events]
        expect("raw stream: event sequence", names, SSE_SEQUENCE)
        for event in events:
            name, data = event.split("\n")
            expect("raw stream: data type", json.loads(data.removeprefix("data: "))["type"],
                   name.removeprefix("event: "))
    conn.close()


def check_recorded_requests(url):
    with urllib.request.urlopen(url + "/requests") as response:
        bodies = json.load(response)
    expect("/requests: every body has the system prompt",
           {body.get("system") for body in bodies if "tools" in body}, {SYSTEM})
    expect("/requests: the 529 and its retry are both recorded",
           sum(body["messages"] == first_turn("create") and not body.get("stream") for body in bodies), 2)
    tool_results = [block for body in bodies for message in body["messages"]
                    if isinstance(message["content"], list)
                    for block in message["content"] if block["type"] == "tool_result"]
    expect("/requests: tool_result blocks recorded", len(tool_results) > 0, True)
    expect("/requests: the wrong-key request is not recorded",
           any(body["messages"] == first_turn("wrong key") for body in bodies), False)


def main():
    url = start_server()
    with urllib.request.urlopen(url + "/healthz") as response:
        expect("/healthz", response.read(), b"ok")
    client = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=2)
    tool_use_id = check_create_retries_529(client)
    check_stream_retries_529(client)
    check_echoed_tool_result(client, tool_use_id)
    check_script_finished(client, tool_use_id)
    check_wrong_key(url)
    check_wire_format(url)
    check_recorded_requests(url)
    print("fake model OK")


if __name__ == "__main__":
    main()

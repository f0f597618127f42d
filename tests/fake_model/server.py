"""A scripted fake of the Anthropic Messages API, the model behind the agent
loop in end-to-end tests. Standard library only.

usage: server.py <listen-ip> <port> <scripts-dir>
  Prints `ready <port>` once listening (port 0 picks a free port) and runs
  until killed.

Endpoints:
  POST /v1/messages   a reply chosen from a script (JSON or SSE when "stream")
  GET  /requests      the last 1000 request bodies that passed the key check
                      (scripted failures included), oldest first
  GET  /healthz       "ok"

The request's `model`, less an optional `scripted-` prefix, names the script
<scripts-dir>/<name>.json (re-read on every request):

  {"echo_tool_results": false,          optional: fill {{last_tool_result}}
   "turns": [{"content": [{"type": "text", "text": "..."},
                          {"type": "tool_use", "name": "bash", "input": {}}],
              "stop_reason": "end_turn" | "tool_use",
              "fail_first": 0,          optional: fail the first N requests
              "fail_status": 529,       optional: 529, 429 or 500
              "delay_ms": 0}]}          optional: wait before replying

The turn played is the number of assistant messages in the request, so the
fake keeps no conversation state except the fail_first counters, which are
keyed by model + first user message text.

If FAKE_MODEL_KEY is set, requests must carry it as `x-api-key` or
`Authorization: Bearer`; otherwise either header, with any value, will do.
"""
import collections
import hashlib
import json
import os
import re
import secrets
import socket
import string
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SCRIPTS_DIR = None  # set by main()
API_KEY = os.environ.get("FAKE_MODEL_KEY")
SCRIPT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
CHUNK_CHARS = 20  # size of the streamed text and partial_json pieces
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

state_lock = threading.Lock()
recorded_requests = collections.deque(maxlen=1000)
failures_served = collections.Counter()  # (conversation, turn index) -> count


class ApiError(Exception):
    """An error reply in the API's own shape."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status = status
        self.headers = list(headers)

    def body(self):
        return {
            "type": "error",
            "error": {"type": ERROR_TYPES.get(self.status, "api_error"), "message": str(self)},
        }


def new_id(prefix):
    alphabet = string.ascii_letters + string.digits
    return prefix + "01" + "".join(secrets.choice(alphabet) for _ in range(22))


def content_text(content):
    """The text of a message or tool_result `content`: a string or blocks."""
    if isinstance(content, str):
        return content
    return "".join(
        block.get("text", "")
        for block in content or []
        if isinstance(block, dict) and block.get("type") == "text"
    )


def blocks_of(message):
    content = message.get("content")
    return content if isinstance(content, list) else []


def last_tool_result_text(messages):
    results = [
        block
        for message in messages
        for block in blocks_of(message)
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    return content_text(results[-1].get("content")) if results else ""


def conversation_key(body):
    first_user = next((m for m in body["messages"] if m.get("role") == "user"), {})
    text = content_text(first_user.get("content"))
    return hashlib.sha256(f"{body['model']}\0{text}".encode()).hexdigest()


def check_auth(headers):
    bearer = headers.get("authorization", "")
    offered = [headers.get("x-api-key")]
    if bearer.lower().startswith("bearer "):
        offered.append(bearer[len("bearer ") :].strip())
    offered = [key for key in offered if key]
    if not offered:
        raise ApiError(401, "x-api-key header is required")
    if API_KEY is not None and API_KEY not in offered:
        raise ApiError(401, "invalid x-api-key")


def parse_request(raw):
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}")
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    # The fields the real API rejects requests without.
    for field, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(body.get(field), kind):
            raise ApiError(400, f"{field}: Field required")
    return body


def load_script(model):
    name = model.removeprefix("scripted-")
    path = os.path.join(SCRIPTS_DIR, name + ".json")
    if not SCRIPT_NAME.match(name) or not os.path.isfile(path):
        raise ApiError(404, f"model: {model}")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        # 400 rather than 500 so clients fail at once instead of retrying.
        raise ApiError(400, f"fake model: script {path} is not valid JSON: {e}")


def pick_turn(script, body):
    """The script turn this request plays, or raises its scripted failure."""
    turns = script.get("turns", [])
    index = sum(1 for m in body["messages"] if m.get("role") == "assistant")
    if index >= len(turns):
        return {"content": [{"type": "text", "text": "(script finished)"}]}
    turn = turns[index]
    time.sleep(turn.get("delay_ms", 0) / 1000)
    counter = (conversation_key(body), index)
    with state_lock:
        failing = failures_served[counter] < turn.get("fail_first", 0)
        if failing:
            failures_served[counter] += 1
    if failing:
        status = turn.get("fail_status", 529)
        headers = [("retry-after", "0")] if status == 429 else []
        raise ApiError(status, f"scripted failure ({status})", headers)
    return turn


def reply_content(script, turn, body):
    """The turn's blocks as the API returns them: tool_use ids invented and,
    if the script asks, the last tool result echoed into the text."""
    tool_result = last_tool_result_text(body["messages"])
    content = []
    for block in turn["content"]:
        if block["type"] == "tool_use":
            block = {"type": "tool_use", "id": new_id("toolu_"),
                     "name": block["name"], "input": block.get("input", {})}
        elif script.get("echo_tool_results"):
            text = block["text"].replace("{{last_tool_result}}", tool_result)
            block = {"type": "text", "text": text}
        content.append(block)
    return content


def token_count(chars):
    """Deterministic stand-in for tokenizing: four characters a token."""
    return max(1, chars // 4)


def message(body, content, stop_reason, usage):
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def make_usage(input_tokens, output_tokens):
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def pieces(text):
    """`text` cut into CHUNK_CHARS pieces; an empty text is one empty piece."""
    return [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]


def block_events(index, block):
    """The SSE events that stream one content block."""
    if block["type"] == "text":
        yield "content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}
        for piece in pieces(block["text"]):
            yield "content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}}
    else:
        start = dict(block, input={})
        yield "content_block_start", {"index": index, "content_block": start}
        # Like the real API, open with an empty partial_json before the pieces.
        for piece in [""] + pieces(json.dumps(block["input"], ensure_ascii=False)):
            yield "content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}
    yield "content_block_stop", {"index": index}


def stream_events(body, content, stop_reason, input_tokens, output_tokens):
    """The real API's event sequence for a whole message."""
    start = message(body, [], None, make_usage(input_tokens, 1))
    yield "message_start", {"message": start}
    yield "ping", {}
    for index, block in enumerate(content):
        yield from block_events(index, block)
    yield "message_delta", {
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    yield "message_stop", {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "fake-model"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        # Silent: a test harness that pipes stderr without reading it would
        # otherwise stall the server once the pipe fills.
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.send_body(200, b"ok", "text/plain")
        elif path == "/requests":
            with state_lock:
                bodies = list(recorded_requests)
            self.send_json(200, bodies)
        else:
            self.send_error_reply(ApiError(404, f"no route for GET {path}"))

    def do_POST(self):
        # Read the body first so the connection stays usable after an error.
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        path = urlsplit(self.path).path
        try:
            if path != "/v1/messages":
                raise ApiError(404, f"no route for POST {path}")
            check_auth(self.headers)
            body = parse_request(raw)
            with state_lock:
                recorded_requests.append(body)
            self.reply(body, len(raw.decode("utf-8", "replace")))
        except ApiError as e:
            self.send_error_reply(e)

    def reply(self, body, request_chars):
        script = load_script(body["model"])
        try:
            turn = pick_turn(script, body)
            content = reply_content(script, turn, body)
        except (KeyError, TypeError, AttributeError) as e:
            # A malformed script: say so rather than drop the connection.
            raise ApiError(400, f"fake model: bad script for {body['model']}: {e!r}")
        stop_reason = turn.get("stop_reason", "end_turn")
        input_tokens = token_count(request_chars)
        output_tokens = token_count(len(json.dumps(content)))
        if body.get("stream"):
            self.send_stream(stream_events(body, content, stop_reason, input_tokens, output_tokens))
        else:
            usage = make_usage(input_tokens, output_tokens)
            self.send_json(200, message(body, content, stop_reason, usage))

    def send_error_reply(self, error):
        self.send_json(error.status, error.body(), error.headers)

    def send_json(self, status, value, headers=()):
        self.send_body(status, json.dumps(value).encode(), "application/json", headers)

    def send_body(self, status, data, content_type, headers=()):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", new_id("req_"))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, events):
        """Server-sent events, one HTTP chunk per event, so the connection
        can be kept alive after the stream ends."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", new_id("req_"))
        self.end_headers()
        for name, fields in events:
            data = json.dumps(dict(type=name, **fields), separators=(",", ":"))
            event = f"event: {name}\ndata: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # many agent loops may connect at once

    def handle_error(self, request, client_address):
        # A client hanging up (say, on a kept-alive connection at exit) is
        # routine; print only real faults.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    global SCRIPTS_DIR
    if len(sys.argv) != 4:
        sys.exit("usage: server.py <listen-ip> <port> <scripts-dir>")
    ip, port, SCRIPTS_DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if ":" in ip:
        Server.address_family = socket.AF_INET6
    server = Server((ip, port), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

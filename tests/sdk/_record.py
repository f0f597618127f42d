"""Records the SDK's JSON exchanges with the server when SANDSTONE_RECORD_DIR
is set: one file per request, {"method", "path", "query", "status",
"request", "response"}, the raw material of the wire model's round-trip
fixtures (crates/sandstone-agents-api/tests/fixtures/). Streams (SSE) and
non-JSON bodies (archives, multipart uploads) are recorded as null.

Imported for its effect by the SDK scripts; does nothing otherwise.
"""
import importlib
import itertools
import json
import os

_DIR = os.environ.get("SANDSTONE_RECORD_DIR")
_seq = itertools.count()


def _json(content_type, raw):
    if "application/json" not in (content_type or ""):
        return None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _write(request, response, body):
    name = f"{os.getpid()}-{next(_seq):05d}.json"
    record = {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query.decode(),
        "status": response.status_code,
        # A multipart upload's body is a stream, not read here.
        "request": _json(request.headers.get("content-type"), request.content)
        if "application/json" in request.headers.get("content-type", "")
        else None,
        "response": body,
    }
    with open(os.path.join(_DIR, name), "w") as f:
        json.dump(record, f)


def _patch(httpx):
    _send, _asend = httpx.Client.send, httpx.AsyncClient.send

    def send(self, request, **kw):
        response = _send(self, request, **kw)
        ct = response.headers.get("content-type")
        if "application/json" in (ct or ""):
            _write(request, response, _json(ct, response.read()))
        return response

    async def asend(self, request, **kw):
        response = await _asend(self, request, **kw)
        ct = response.headers.get("content-type")
        if "application/json" in (ct or ""):
            _write(request, response, _json(ct, await response.aread()))
        return response

    httpx.Client.send, httpx.AsyncClient.send = send, asend


if _DIR:
    # The SDK's transport is `httpx2` in recent releases, `httpx` before.
    for _name in ("httpx2", "httpx"):
        try:
            _patch(importlib.import_module(_name))
        except ImportError:
            pass

"""Checks every request tests/webhooks.rs's receiver recorded (in
$REQUESTS) with the Sandbox0 SDK's own helper: each signature verifies with
$SECRET over the raw body, and fails over a tampered body or with another
secret. Prints `verified <n>`."""

import base64
import json
import os

from sandbox0 import verify_webhook_signature

secret = os.environ["SECRET"]
n = 0
with open(os.environ["REQUESTS"]) as f:
    for line in f:
        r = json.loads(line)
        body = base64.b64decode(r["body"])
        sig = r["signature"]
        assert sig, f"unsigned: {body!r}"
        assert verify_webhook_signature(secret, body, sig), f"rejected: {body!r}"
        tampered = body.replace(b'"sandbox_id":"', b'"sandbox_id":"x', 1)
        assert tampered != body
        assert not verify_webhook_signature(secret, tampered, sig), "tampered body accepted"
        assert not verify_webhook_signature(secret + "x", body, sig), "wrong secret accepted"
        n += 1
assert n > 0, "no requests"
print(f"verified {n}")

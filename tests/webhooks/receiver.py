"""A webhook receiver for tests/webhooks.rs: listens on 127.0.0.1:<port>,
appends every POST to <dir>/requests.jsonl (the raw body as base64 and the
signature header), and answers with the status in <dir>/status (default
204); `hang` there makes it wait 30 s before answering. Stdlib only."""

import base64
import http.server
import json
import os
import sys
import time

PORT = int(sys.argv[1])
DIR = sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            with open(os.path.join(DIR, "status")) as f:
                mode = f.read().strip()
        except FileNotFoundError:
            mode = "204"
        record = {
            "path": self.path,
            "content_type": self.headers.get("Content-Type"),
            "signature": self.headers.get("X-Sandbox0-Signature"),
            "body": base64.b64encode(body).decode(),
            "answered": mode,
        }
        with open(os.path.join(DIR, "requests.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if mode == "hang":
            time.sleep(30)
            mode = "204"
        self.send_response(int(mode))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer.allow_reuse_address = True
server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("listening", flush=True)
server.serve_forever()

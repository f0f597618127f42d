#!/usr/bin/env python3
"""Minimal read-only OCI distribution registry for Sandstone's end-to-end tests.

Usage: python3 server.py --root DIR [--user USER --password PASS]

DIR holds one OCI image layout per repository: DIR/<name>/index.json and
DIR/<name>/blobs/sha256/<hex>, where <name> may contain slashes. Tags are the
org.opencontainers.image.ref.name annotations of index.json's manifests.
With --user/--password every /v2/ request needs a bearer token obtained from
/token with HTTP Basic auth (the Docker/OCI token flow). GET /_stats reports
how many times each blob was downloaded.

Prints "listening PORT" once bound, then serves until killed. Blobs are served
as stored, never verified, so tests can tamper with them to check the client.
"""

import argparse
import base64
import binascii
import hmac
import json
import os
import re
import secrets
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SERVICE = "test-registry"
DEFAULT_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
# Tag grammar from the distribution spec; it also excludes "." and "..".
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# <name> is greedy because repository names may themselves contain slashes.
ROUTE_RE = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")
RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")
CHUNK_SIZE = 1 << 16


def blob_path(repo, digest):
    """Path of `digest` inside layout `repo`, or None for a malformed digest.

    Only a validated hex string is joined, so a digest cannot escape the layout.
    """
    match = DIGEST_RE.fullmatch(digest)
    return os.path.join(repo, "blobs", "sha256", match[1]) if match else None


def read_file(path):
    if path is None or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


class Registry(ThreadingHTTPServer):
    """Holds the state shared by all request threads."""

    def __init__(self, root, credentials):
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = os.path.realpath(root)
        self.credentials = credentials  # (user, password), or None for no auth
        self.lock = threading.Lock()
        self.tokens = set()
        self.blob_gets = Counter()


class Handler(BaseHTTPRequestHandler):
    # Keep-alive like a real registry; every response sets Content-Length.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the
    # second waits for the client's (delayed) ACK of the first, 40 ms on
    # a kept-alive connection. Registries in the wild set TCP_NODELAY.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        # Silent: tests may pipe stderr without draining it, and a full pipe
        # would stall the server.
        pass

    def handle(self):
        # Clients may drop a connection mid-transfer (e.g. to test resumed
        # downloads); that is expected, not a server error worth a traceback.
        try:
            super().handle()
        except ConnectionError:
            pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/_stats":
            with self.server.lock:
                stats = dict(self.server.blob_gets)
            return self.send_json(200, {"blob_gets": stats})
        if path == "/token" and self.server.credentials is not None:
            return self.issue_token()
        if not path.startswith("/v2/"):
            return self.send_error_json(404, "UNSUPPORTED", "no such endpoint")
        route = ROUTE_RE.fullmatch(path)
        if not self.authorized():
            return self.challenge(route["name"] if route else None)
        if path == "/v2/":
            return self.send_json(200, {})
        if route is None:
            return self.send_error_json(404, "UNSUPPORTED", "no such endpoint")
        repo = self.repo_dir(route["name"])
        if route["kind"] == "manifests":
            self.serve_manifest(repo, route["ref"])
        else:
            self.serve_blob(repo, route["ref"])

    def authorized(self):
        if self.server.credentials is None:
            return True
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        with self.server.lock:
            return scheme.lower() == "bearer" and token.strip() in self.server.tokens

    def challenge(self, name):
        host, port = self.server.server_address[:2]
        value = f'Bearer realm="http://{host}:{port}/token",service="{SERVICE}"'
        if name:
            value += f',scope="repository:{name}:pull"'
        self.send_error_json(401, "UNAUTHORIZED", "authentication required",
                             {"WWW-Authenticate": value})

    def issue_token(self):
        user, password = self.server.credentials
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            given = b""
        # Compare bytes: compare_digest rejects non-ASCII str arguments.
        expected = f"{user}:{password}".encode()
        if scheme.lower() != "basic" or not hmac.compare_digest(given, expected):
            return self.send_error_json(401, "UNAUTHORIZED", "invalid credentials",
                                        {"WWW-Authenticate": f'Basic realm="{SERVICE}"'})
        token = secrets.token_urlsafe(32)
        with self.server.lock:
            self.server.tokens.add(token)
        self.send_json(200, {"token": token, "access_token": token, "expires_in": 300})

    def repo_dir(self, name):
        """Layout directory of repository `name`, or None if there is none.

        Rejects ".."/"."/empty components outright, then checks the resolved
        path (symlinks included) still lies under the root.
        """
        parts = name.split("/")
        if any(p in ("", ".", "..") or "\0" in p or "\\" in p for p in parts):
            return None
        root = self.server.root
        path = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, path]) != root:
            return None
        return path if os.path.isfile(os.path.join(path, "index.json")) else None

    def find_manifest(self, repo, reference):
        """Resolve a tag or digest to (digest, media type, bytes), or None."""
        if DIGEST_RE.fullmatch(reference):
            data = read_file(blob_path(repo, reference))
            if data is None:
                return None
            # A digest fetch has no descriptor, so the blob must describe itself.
            try:
                media_type = json.loads(data).get("mediaType")
            except (ValueError, AttributeError):
                media_type = None
            if not isinstance(media_type, str):
                media_type = DEFAULT_MANIFEST_TYPE
            return reference, media_type, data
        if not TAG_RE.fullmatch(reference):
            return None
        with open(os.path.join(repo, "index.json"), "rb") as f:
            index = json.load(f)
        for desc in index.get("manifests", []):
            if (desc.get("annotations") or {}).get(REF_NAME) == reference:
                data = read_file(blob_path(repo, desc.get("digest", "")))
                if data is None:
                    return None
                return desc["digest"], desc.get("mediaType", DEFAULT_MANIFEST_TYPE), data
        return None

    def serve_manifest(self, repo, reference):
        found = self.find_manifest(repo, reference) if repo else None
        if found is None:
            return self.send_error_json(404, "MANIFEST_UNKNOWN",
                                        f"manifest unknown: {reference}")
        digest, media_type, data = found
        self.send_bytes(200, data, {"Content-Type": media_type,
                                    "Docker-Content-Digest": digest})

    def serve_blob(self, repo, digest):
        path = blob_path(repo, digest) if repo else None
        if path is None or not os.path.isfile(path):
            return self.send_error_json(404, "BLOB_UNKNOWN", f"blob unknown: {digest}")
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        headers = {"Content-Type": "application/octet-stream",
                   "Docker-Content-Digest": digest,
                   "Accept-Ranges": "bytes"}
        # A single "bytes=N-" or "bytes=N-M" range lets clients resume.
        match = RANGE_RE.fullmatch(self.headers.get("Range", "").strip())
        if match:
            start = int(match[1])
            end = min(int(match[2]), size - 1) if match[2] else size - 1
            if start > end:
                return self.send_bytes(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        remaining = end - start + 1
        self.send_headers(status, remaining, headers)
        if self.command != "GET":
            return
        with self.server.lock:
            self.server.blob_gets[digest] += 1
        # Stream in chunks so large layers are not held in memory.
        with open(path, "rb") as f:
            f.seek(start)
            while remaining > 0:
                chunk = f.read(min(CHUNK_SIZE, remaining))
                if not chunk:  # file shrank underneath us
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def send_headers(self, status, length, headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def send_bytes(self, status, body, headers):
        self.send_headers(status, len(body), headers)
        if self.command == "GET":
            self.wfile.write(body)

    def send_json(self, status, value, headers=None):
        body = json.dumps(value).encode()
        self.send_bytes(status, body, {"Content-Type": "application/json", **(headers or {})})

    def send_error_json(self, status, code, message, headers=None):
        self.send_json(status, {"errors": [{"code": code, "message": message}]}, headers)


def main():
    parser = argparse.ArgumentParser(description="Read-only OCI registry for tests.")
    parser.add_argument("--root", required=True, help="directory of OCI layouts")
    parser.add_argument("--user", help="enable token auth with this user")
    parser.add_argument("--password", help="password for --user")
    args = parser.parse_args()
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password must be given together")
    credentials = None if args.user is None else (args.user, args.password)
    server = Registry(args.root, credentials)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""The fake internet's servers, run inside its network namespace by the
egress tests: a DNS server (A records from a fixed table, NXDOMAIN for the
rest) and web servers on port 80 and, when FAKE_TLS_DIR is set, 443 (with a
test CA of their own, written to $FAKE_TLS_DIR/ca.pem for the daemon to
trust). Paths:
  /                     "hello from <Host>"
  .../auth              whether the request carried $FAKE_TOKEN (Bearer
                        or x-access-token Basic Authorization, or X-Api-Key;
                        a POST, in its body too);
                        never echoes the token
  /redirect?to=URL      302 to URL
  /bulk?mib=N           N MiB of zeros
  /peer                 "peer <address>": the address the request came from
  /client               on mtls.test:8443 (a leaf of its own "internal CA",
                        $FAKE_TLS_DIR/internal-ca.pem): the CN of the client
                        certificate, which must be from
                        $FAKE_TLS_DIR/client-ca.pem; 403 without one.
                        The client's pair is $FAKE_TLS_DIR/client.{pem,key}
  git.test/repo.git/    a smart-HTTP git repository needing the token (any
                        other git.test/*.git: 404, as GitHub's missing ones)
  pypi.org/simple/sandstone-demo/ and files.pythonhosted.org/packages/...
                        a package index serving one pure-Python wheel

usage: servers.py <dns-ip> <http-ip> [<http-ip> ...]  (names map to argv[2])
"""
import base64
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DNS_IP, WEB_IPS = sys.argv[1], sys.argv[2:]
RECORDS = {
    "web.test": WEB_IPS[0],
    "other.test": WEB_IPS[0],
    "api.test": WEB_IPS[0],
    "git.test": WEB_IPS[0],
    "mtls.test": WEB_IPS[0],
    "mcp.test": WEB_IPS[0],
    "db.test": WEB_IPS[0],
    "cache.test": WEB_IPS[0],
    # .3 of the web server's /24: the SOCKS5 proxy's own address.
    "proxy.test": WEB_IPS[0].rsplit(".", 1)[0] + ".3",
    "pypi.org": WEB_IPS[0],
    "files.pythonhosted.org": WEB_IPS[0],
    "rebind.test": "127.0.0.1",
    # .50 of the web server's /24: the tests give it to the host later.
    "late.test": WEB_IPS[0].rsplit(".", 1)[0] + ".50",
}


def dns_reply(q):
    qid, flags, qd = struct.unpack(">HHH", q[:6])
    at, labels = 12, []
    while q[at]:
        labels.append(q[at + 1 : at + 1 + q[at]].decode().lower())
        at += 1 + q[at]
    question = q[12 : at + 5]
    ip = RECORDS.get(".".join(labels))
    if ip is None:
        return struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton(ip)
    return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


def serve_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((DNS_IP, 53))
    while True:
        q, peer = s.recvfrom(4096)
        try:
            s.sendto(dns_reply(q), peer)
        except Exception:
            pass


TOKEN = os.environ.get("FAKE_TOKEN", "")
TLS_DIR = os.environ.get("FAKE_TLS_DIR")
NAMES = ["web.test", "other.test", "api.test", "git.test", "db.test", "pypi.org", "files.pythonhosted.org"]


def demo_wheel():
    """sandstone_demo 1.0: a module whose answer() is 42, as a wheel."""
    import base64, hashlib, io, zipfile
    name = "sandstone_demo-1.0.dist-info"
    files = {
        "sandstone_demo.py": b"def answer():\n    return 42\n",
        name + "/METADATA": b"Metadata-Version: 2.1\nName: sandstone-demo\nVersion: 1.0\n",
        name + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: fake\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        "%s,sha256=%s,%d\n" % (path, base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode(), len(body))
        for path, body in files.items()
    ) + name + "/RECORD,,\n"
    files[name + "/RECORD"] = record.encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for path, body in files.items():
            z.writestr(path, body)
    return out.getvalue()


WHEEL = demo_wheel()
WHEEL_NAME = "sandstone_demo-1.0-py3-none-any.whl"
CHUNK = bytes(1 << 20)


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, for the latency benchmark

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle
        # and delayed ACKs add 40 ms to every keep-alive response.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        # GitHub's ways: a bearer token, or HTTP Basic with the token as
        # the password of x-access-token (git's own).
        basic = "Basic " + base64.b64encode(("x-access-token:" + TOKEN).encode()).decode()
        return TOKEN and (
            self.headers.get("Authorization") in ("Bearer " + TOKEN, basic)
            or self.headers.get("X-Api-Key") == TOKEN
        )

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        host = self.headers.get("Host", "?")
        if url.path == "/client":
            peer = self.request.getpeercert() if hasattr(self.request, "getpeercert") else None
            if not peer:
                return self.reply(403, b"client certificate required\n")
            cn = dict(x[0] for x in peer["subject"]).get("commonName", "")
            return self.reply(200, ("client: %s\n" % cn).encode())
        if host.startswith("git.test") and url.path.startswith("/repo.git/"):
            return self.git()
        if host.startswith("git.test") and ".git/" in url.path:
            # As GitHub answers for a repository that does not exist.
            return self.reply(404, b"Repository not found.\n")
        if url.path.endswith("/auth"):
            if self.authorized():
                return self.reply(200, b"authorized\n")
            seen = "authorization=%r x-api-key=%r\n" % (
                self.headers.get("Authorization"),
                self.headers.get("X-Api-Key"),
            )
            return self.reply(401, ("unauthorized: " + seen).encode())
        if host.startswith("pypi.org") and url.path in ("/simple/sandstone-demo/", "/simple/sandstone_demo/"):
            import hashlib
            link = '<a href="https://files.pythonhosted.org/packages/%s#sha256=%s">%s</a>' % (
                WHEEL_NAME, hashlib.sha256(WHEEL).hexdigest(), WHEEL_NAME)
            return self.reply(200, ("<html><body>%s</body></html>" % link).encode(), [("content-type", "text/html")])
        if host.startswith("files.pythonhosted.org") and url.path == "/packages/" + WHEEL_NAME:
            return self.reply(200, WHEEL, [("content-type", "application/octet-stream")])
        if url.path == "/redirect":
            return self.reply(302, b"", [("location", query["to"][0])])
        if url.path == "/peer":
            return self.reply(200, ("peer %s\n" % self.client_address[0]).encode())
        if url.path == "/bulk":
            n = int(query.get("mib", ["1"])[0])
            self.send_response(200)
            self.send_header("content-length", str(n << 20))
            self.end_headers()
            for _ in range(n):
                self.wfile.write(CHUNK)
            return
        self.reply(200, ("hello from %s\n" % host).encode())

    def do_POST(self):
        if self.path.startswith("/repo.git/"):
            return self.git()
        if urlsplit(self.path).path.endswith("/auth"):
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.authorized() or (TOKEN and TOKEN.encode() in body):
                return self.reply(200, b"authorized\n")
            return self.reply(401, b"unauthorized: body=" + body[:200] + b"\n")
        self.reply(404, b"")

    def git(self):
        """git http-backend as a CGI, behind a token check."""
        if not self.authorized():
            return self.reply(401, b"token required\n", [("www-authenticate", 'Basic realm="git"')])
        url = urlsplit(self.path)
        env = dict(
            os.environ,
            GIT_PROJECT_ROOT=os.path.join(TLS_DIR, "git"),
            GIT_HTTP_EXPORT_ALL="1",
            PATH_INFO=url.path,
            QUERY_STRING=url.query,
            REQUEST_METHOD=self.command,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""),
            HTTP_GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
            REMOTE_ADDR=self.client_address[0],
        )
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.reply(status, payload, headers)

    def log_message(self, *a):
        pass


def make_tls(d):
    """A test CA and one leaf for every fake name, made with openssl."""
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fake internet CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=web.test")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=" + ",".join("DNS:" + n for n in NAMES) + "\n")
    run("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "san.ext")
    repo = os.path.join(d, "git", "repo.git")
    work = os.path.join(d, "work")
    git = ["git", "-c", "user.name=fake", "-c", "user.email=fake@test", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q", work], check=True)
    with open(os.path.join(work, "README"), "w") as f:
        f.write("cloned through the egress proxy\n")
    subprocess.run(git + ["-C", work, "add", "README"], check=True)
    subprocess.run(git + ["-C", work, "commit", "-qm", "first"], check=True)
    subprocess.run(git + ["clone", "-q", "--bare", work, repo], check=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.path.join(d, "leaf.pem"), os.path.join(d, "leaf.key"))
    return ctx


def make_mtls(d):
    """mtls.test's leaf from an internal CA no one trusts by default, and a
    client CA with one client pair: a server that asks for a client
    certificate and answers /client with its CN."""
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("internal-ca", "client-ca"):
        run("openssl", "req", "-x509", *ec, "-keyout", ca + ".key", "-out", ca + ".pem",
            "-days", "2", "-subj", "/CN=fake " + ca)
    for name, ca, cn, ext in (("mtls", "internal-ca", "mtls.test", "subjectAltName=DNS:mtls.test"),
                              ("client", "client-ca", "sandstone-test-client", "extendedKeyUsage=clientAuth")):
        run("openssl", "req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn)
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext + "\n")
        run("openssl", "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.path.join(d, "mtls.pem"), os.path.join(d, "mtls.key"))
    ctx.load_verify_locations(os.path.join(d, "client-ca.pem"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


threading.Thread(target=serve_dns, daemon=True).start()
class TlsServer(ThreadingHTTPServer):
    """Handshakes in the connection's thread, not the accepting one."""

    def finish_request(self, request, client_address):
        request = self.context.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # clients the tests make fail on purpose


tls = make_tls(TLS_DIR) if TLS_DIR else None
mtls = make_mtls(TLS_DIR) if TLS_DIR else None
for ip in WEB_IPS:
    srv = ThreadingHTTPServer((ip, 80), Hello)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    if tls:
        srv = TlsServer((ip, 443), Hello)
        srv.context = tls
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        srv = TlsServer((ip, 8443), Hello)
        srv.context = mtls
        threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()

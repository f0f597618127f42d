"""The fake internet's servers, run inside its network namespace by the
egress tests: a DNS server (A records from a fixed table, NXDOMAIN for the
rest) and plain HTTP servers that answer with the Host they were asked for.

usage: servers.py <dns-ip> <http-ip> [<http-ip> ...]  (names map to argv[2])
"""
import socket
import socketserver
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DNS_IP, WEB_IPS = sys.argv[1], sys.argv[2:]
RECORDS = {
    "web.test": WEB_IPS[0],
    "other.test": WEB_IPS[0],
    "rebind.test": "127.0.0.1",
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


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, for the latency benchmark

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle
        # and delayed ACKs add 40 ms to every keep-alive response.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        body = ("hello from %s\n" % self.headers.get("Host", "?")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


threading.Thread(target=serve_dns, daemon=True).start()
for ip in WEB_IPS:
    srv = ThreadingHTTPServer((ip, 80), Hello)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()

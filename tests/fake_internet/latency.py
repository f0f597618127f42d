"""Egress benchmark client: run inside a sandbox (through the proxy) and on
the host (direct) against the fake internet; prints p50/p99 in ms.

usage: latency.py keepalive HOST IP N | connect HOST IP N | dns NAME N
                  | tls HOST IP N CAFILE [PORT] | bulk HOST IP MIB CAFILE
(CAFILE "-": the default trust, i.e. the sandbox's bundle; bulk prints MiB/s)
"""
import http.client
import socket
import ssl
import struct
import sys
import time


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p)))] * 1000


def keepalive(host, ip, n):
    c = http.client.HTTPConnection(ip, 80)
    out = []
    for _ in range(n + 20):
        t = time.perf_counter()
        c.request("GET", "/", headers={"Host": host})
        c.getresponse().read()
        out.append(time.perf_counter() - t)
    return out[20:]


def connect(host, ip, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c = http.client.HTTPConnection(ip, 80)
        c.request("GET", "/", headers={"Host": host, "Connection": "close"})
        c.getresponse().read()
        c.close()
        out.append(time.perf_counter() - t)
    return out


CONTEXTS = {}


def tls_connection(host, ip, cafile, port=443):
    # One context per trust file, as a real client keeps: loading a bundle
    # of roots costs more than the handshake.
    if cafile not in CONTEXTS:
        CONTEXTS[cafile] = ssl.create_default_context(cafile=None if cafile == "-" else cafile)
    ctx = CONTEXTS[cafile]
    raw = socket.create_connection((ip, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = http.client.HTTPSConnection(host, port, context=ctx)
    c.sock = ctx.wrap_socket(raw, server_hostname=host)
    return c


def tls(host, ip, n, cafile, port=443):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c = tls_connection(host, ip, cafile, port)
        c.request("GET", "/", headers={"Connection": "close"})
        c.getresponse().read()
        c.close()
        out.append(time.perf_counter() - t)
    return out


def bulk(host, ip, mib, cafile):
    c = tls_connection(host, ip, cafile)
    t = time.perf_counter()
    c.request("GET", "/bulk?mib=%d" % mib)
    r, got = c.getresponse(), 0
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        got += len(b)
    assert got == mib << 20, got
    return (got / (1 << 20)) / (time.perf_counter() - t)


def dns(name, n):
    gw = [l.split()[2] for l in open("/proc/net/route") if l.split()[1] == "00000000"][0]
    gw = socket.inet_ntoa(bytes.fromhex(gw)[::-1])
    q = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    out = []
    for _ in range(n + 1):
        t = time.perf_counter()
        s.sendto(q, (gw, 53))
        s.recv(512)
        out.append(time.perf_counter() - t)
    return out[1:]  # the first answer fills the cache


mode = sys.argv[1]
if mode == "bulk":
    print("%.0f" % bulk(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    sys.exit()
if mode == "dns":
    xs = dns(sys.argv[2], int(sys.argv[3]))
elif mode == "tls":
    port = int(sys.argv[6]) if len(sys.argv) > 6 else 443
    xs = tls(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], port)
else:
    xs = {"keepalive": keepalive, "connect": connect}[mode](sys.argv[2], sys.argv[3], int(sys.argv[4]))
print("%.3f %.3f" % (pct(xs, 0.5), pct(xs, 0.99)))

"""The Managed Agents control plane under load, in one run against one
daemon, each figure beside a baseline measured in the same run from the
same client (`GET /healthz` on a keep-alive connection). Standard library
only; scripts/bench-agents.sh starts the daemon and the scripted model.

usage: bench_agents.py --url http://127.0.0.1:PORT --token-file ADMIN_TOKEN
                       --pid DAEMON_PID --model MODEL
                       [--sessions 300] [--sends 300] [--pollers 1000]
                       [--hold 10] [--concurrent 100]

  1. poll -> ack -> heartbeat round trips over N queued sessions;
  2. a user.message sent -> its frame on an open SSE stream;
  3. many idle long-polls held against an empty queue: the daemon's RSS;
  4. many sessions driven by the scripted model at once.

Prints a report; exits 1 if any check failed (the report says which).
"""
import argparse
import asyncio
import base64
import http.client
import json
import math
import os
import queue
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

BETA = "managed-agents-2026-04-01"
TIMEOUT = 60  # seconds, any single wait

failures = []  # what went wrong, for the report and the exit status


def fail(what):
    failures.append(what)
    print(f"  !! {what}", flush=True)


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(ns):
    return ns / 1e6


def row(label, values_ns, base=None):
    """One latency line: p50/p99 in ms and, given a baseline p50, the ratio."""
    p50, p99 = ms(pct(values_ns, 50)), ms(pct(values_ns, 99))
    ratio = f"  ({p50 / base:5.1f}x baseline p50)" if base else ""
    print(f"{label:<52} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms  n={len(values_ns)}{ratio}", flush=True)


def line(label, text):
    print(f"{label:<52} {text}", flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds the daemon (and the fake model) spent in a section."""

    def __init__(self, pid, model_pid):
        self.pids = [p for p in (pid, model_pid) if p]
        self.mark()

    def mark(self):
        self.start = [cpu_s(p) for p in self.pids]

    def report(self):
        used = [cpu_s(p) - s for p, s in zip(self.pids, self.start)]
        text = f"daemon {used[0]:6.2f} s"
        if len(used) > 1:
            text += f"   fake model {used[1]:6.2f} s"
        line("CPU used in this section", text)
        self.mark()


def mib(kib):
    return f"{kib / 1024:7.1f} MiB"


class Api:
    """One keep-alive HTTP/1.1 connection; counts reconnects so a figure
    that claims keep-alive really is."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.conn.sock
        self.reconnects = 0

    def call(self, method, path, key=None, body=None, beta=True):
        """(status, parsed body, elapsed ns): the time covers writing the
        request to reading the whole response, nothing else."""
        headers = {}
        if beta:
            headers["anthropic-beta"] = BETA
        if key:
            headers["authorization"] = f"Bearer {key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        t0 = time.perf_counter_ns()
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        t1 = time.perf_counter_ns()
        if self.conn.sock is not self.sock:
            self.reconnects += 1
            self.sock = self.conn.sock
            if self.sock is not None:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = raw.decode("utf-8", "replace")
        return resp.status, value, t1 - t0

    def ok(self, method, path, key=None, body=None):
        status, value, _ = self.call(method, path, key, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {value}")
        return value

    def close(self):
        self.conn.close()


class SseStream:
    """A raw-socket reader of `GET /v1/sessions/{id}/events/stream`: yields
    (arrival ns, event type, data) per frame; decodes chunked encoding."""

    def __init__(self, host, port, session, key):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(
            (
                f"GET /v1/sessions/{session}/events/stream HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
                f"anthropic-beta: {BETA}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        self.f = self.sock.makefile("rb")
        status = self.f.readline().decode()
        if not status.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"SSE stream of {session}: {status.strip()}")
        self.chunked = False
        while True:
            h = self.f.readline().decode().strip()
            if not h:
                break
            name, _, value = h.partition(":")
            if name.lower() == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True
        self.buf = ""
        self.frames = []

    def _more(self):
        if self.chunked:
            size = int(self.f.readline().split(b";")[0], 16)
            if size == 0:
                raise EOFError("SSE stream ended")
            data = self.f.read(size)
            self.f.readline()  # the chunk's CRLF
        else:
            data = self.f.read1(65536)
            if not data:
                raise EOFError("SSE stream ended")
        return data.decode()

    def next(self):
        """The next frame: (arrival ns, type, data), blocking."""
        while not self.frames:
            text = self._more()
            t = time.perf_counter_ns()
            self.buf += text.replace("\r\n", "\n")
            while "\n\n" in self.buf:
                frame, self.buf = self.buf.split("\n\n", 1)
                kind, data = None, []
                for l in frame.split("\n"):
                    if l.startswith("event:"):
                        kind = l[6:].strip()
                    elif l.startswith("data:"):
                        data.append(l[5:].lstrip())
                if kind or data:
                    try:
                        value = json.loads("\n".join(data)) if data else None
                    except ValueError:
                        value = "\n".join(data)
                    self.frames.append((t, kind, value))
        return self.frames.pop(0)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def sessions_token(item):
    secret = item["secret"]
    raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    return json.loads(raw)["sessions_token"]


def new_environment(api, admin, name):
    env = api.ok("POST", "/v1/environments", admin, {"name": name, "config": {"type": "self_hosted"}})
    key = api.ok("POST", f"/v1/environments/{env['id']}/keys", admin)["key"]
    return env["id"], key


# --- 0. baseline ---------------------------------------------------------

def baseline(api, n=2000):
    for _ in range(200):
        api.call("GET", "/healthz", beta=False)
    out = []
    for _ in range(n):
        status, body, t = api.call("GET", "/healthz", beta=False)
        if status != 200:
            fail(f"healthz: HTTP {status}")
        out.append(t)
    return out


# --- 1. poll -> ack -> heartbeat --------------------------------------------

def work_queue(api, admin, agent, n, base):
    env, key = new_environment(api, admin, "bench-work")
    sessions = set()
    for _ in range(n):
        s = api.ok("POST", "/v1/sessions", admin, {"agent": agent, "environment_id": env})
        sessions.add(s["id"])
    work = f"/v1/environments/{env}/work"
    polls, acks, beats, echoes = [], [], [], []
    claimed = set()
    for i in range(n):
        status, item, t = api.call("GET", f"{work}/poll?block_ms=1", key)
        polls.append(t)
        if status != 200 or not isinstance(item, dict):
            fail(f"poll {i}: HTTP {status}, {item!r} (an item was queued)")
            continue
        sid = item.get("data", {}).get("id")
        if sid not in sessions or sid in claimed:
            fail(f"poll {i}: unexpected item for session {sid}")
        claimed.add(sid)
        wid = item["id"]
        status, acked, t = api.call("POST", f"{work}/{wid}/ack", key)
        acks.append(t)
        if status != 200 or acked.get("state") != "starting":
            fail(f"ack {wid}: HTTP {status}: {acked}")
            continue
        token = sessions_token(item)
        status, beat, t = api.call(
            "POST", f"{work}/{wid}/heartbeat?expected_last_heartbeat=NO_HEARTBEAT", token
        )
        beats.append(t)
        if status != 200 or beat.get("lease_extended") is not True:
            fail(f"heartbeat {wid}: HTTP {status}: {beat}")
            continue
        status, beat, t = api.call(
            "POST", f"{work}/{wid}/heartbeat?expected_last_heartbeat={beat['last_heartbeat']}", token
        )
        echoes.append(t)
        if status != 200 or beat.get("lease_extended") is not True:
            fail(f"echoed heartbeat {wid}: HTTP {status}: {beat}")
    status, left, _ = api.call("GET", f"{work}/poll?block_ms=1", key)
    if (status, left) != (200, None):
        fail(f"poll after draining the queue: HTTP {status}, {left!r} (expected null)")
    print(f"== 1. work queue: {n} sessions queued up front, then per item poll(block_ms=1) -> ack -> heartbeat")
    row("poll (claims an item)", polls, base)
    row("ack", acks, base)
    row("heartbeat (expected NO_HEARTBEAT, sessions token)", beats, base)
    row("heartbeat (echoing last_heartbeat)", echoes, base)
    line("items claimed / expected", f"{len(claimed)} / {n}")


# --- 2. send -> visible on SSE ----------------------------------------------

def event_latency(api, host, port, admin, agent, n):
    env, _ = new_environment(api, admin, "bench-sse")
    sid = api.ok("POST", "/v1/sessions", admin, {"agent": agent, "environment_id": env})["id"]
    stream = SseStream(host, port, sid, admin)
    frames = queue.Queue()

    def read():
        try:
            while True:
                frames.put(stream.next())
        except Exception as e:  # the stream closing at the end is routine
            frames.put((time.perf_counter_ns(), "reader-ended", repr(e)))

    threading.Thread(target=read, daemon=True).start()

    def next_frame():
        try:
            t, kind, data = frames.get(timeout=TIMEOUT)
        except queue.Empty:
            raise RuntimeError("no SSE frame in time")
        if kind == "reader-ended":
            raise RuntimeError(f"SSE stream ended: {data}")
        return t, kind, data

    visible, posts, turns = [], [], []
    warmup = 10
    for i in range(warmup + n):
        msg = {"events": [{"type": "user.message", "content": [{"type": "text", "text": f"ping {i}"}]}]}
        t0 = time.perf_counter_ns()
        status, sent, t_post = api.call("POST", f"/v1/sessions/{sid}/events", admin, msg)
        if status != 200:
            fail(f"send {i}: HTTP {status}: {sent}")
            break
        eid = sent["data"][0]["id"]
        seen_at, idle, agent_msgs = None, None, 0
        while idle is None:
            t, kind, data = next_frame()
            if kind == "user.message" and isinstance(data, dict) and data.get("id") == eid:
                seen_at = t
            elif seen_at is not None and kind == "agent.message":
                agent_msgs += 1
            elif seen_at is not None and kind == "session.status_idle":
                idle = (t, data)
            elif kind == "session.error":
                fail(f"send {i}: session.error {data}")
        if (idle[1] or {}).get("stop_reason", {}).get("type") != "end_turn" or agent_msgs != 1:
            fail(f"send {i}: turn ended {idle[1]} with {agent_msgs} agent.message")
        if i >= warmup:
            visible.append(seen_at - t0)
            posts.append(t_post)
            turns.append(idle[0] - t0)
    stream.close()
    return visible, posts, turns


# --- 3. idle long-pollers -----------------------------------------------------

async def read_response(reader):
    status_line = await reader.readline()
    if not status_line:
        raise EOFError("connection closed")
    status = int(status_line.split()[1])
    length, chunked = None, False
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode().partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        body = await reader.readexactly(length or 0)
    return status, body


def raw_request(method, path, host, port, key, extra=""):
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"anthropic-beta: {BETA}\r\n{extra}\r\n"
    ).encode()


async def idle_pollers(host, port, env, key, pid, count, hold):
    path = f"/v1/environments/{env}/work/poll?block_ms=999"
    results = {"ok": 0, "bad": 0, "errors": 0, "durations": []}
    in_flight = 0
    connected = 0
    settled = 0  # connections made or failed
    stop = asyncio.Event()
    all_connected = asyncio.Event()
    connect_gate = asyncio.Semaphore(50)  # not a SYN flood at the listen backlog

    async def poller(i):
        nonlocal in_flight, connected, settled
        req = raw_request("GET", path, host, port, key, f"anthropic-worker-id: idle-poller-{i}\r\n")
        is_connected = False
        try:
            async with connect_gate:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
            is_connected = True
            connected += 1
            settled += 1
            if settled == count:
                all_connected.set()
            while not stop.is_set():
                in_flight += 1
                t0 = time.perf_counter_ns()
                writer.write(req)
                await writer.drain()
                status, body = await asyncio.wait_for(read_response(reader), TIMEOUT)
                in_flight -= 1
                results["durations"].append(time.perf_counter_ns() - t0)
                if status == 200 and body.strip() == b"null":
                    results["ok"] += 1
                else:
                    results["bad"] += 1
                    if results["bad"] <= 3:
                        fail(f"idle poll: HTTP {status}: {body[:200]!r}")
            writer.close()
            await writer.wait_closed()
        except Exception as e:
            results["errors"] += 1
            if results["errors"] <= 3:
                fail(f"idle poller {i}: {e!r}")
            if not is_connected:
                settled += 1
                if settled == count:
                    all_connected.set()

    # A keep-alive probe on the side: healthz and the queue stats.
    probe = {"healthz": [], "stats": None}

    async def prober():
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hz = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        stats = raw_request("GET", f"/v1/environments/{env}/work/stats", host, port, key)
        await all_connected.wait()
        await asyncio.sleep(1.5)
        writer.write(stats)
        _, body = await read_response(reader)
        probe["stats"] = json.loads(body)
        while not stop.is_set():
            t0 = time.perf_counter_ns()
            writer.write(hz)
            await read_response(reader)
            probe["healthz"].append(time.perf_counter_ns() - t0)
            await asyncio.sleep(0.01)
        writer.close()

    before = rss_kib(pid), fd_count(pid)
    t_start = time.monotonic()
    tasks = [asyncio.create_task(poller(i)) for i in range(count)]
    probe_task = asyncio.create_task(prober())
    await asyncio.wait_for(all_connected.wait(), TIMEOUT)
    ramp = time.monotonic() - t_start
    samples = []
    for _ in range(hold):
        await asyncio.sleep(1)
        samples.append((rss_kib(pid), fd_count(pid), in_flight))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    await asyncio.wait_for(probe_task, TIMEOUT)
    await asyncio.sleep(1)
    after1 = rss_kib(pid), fd_count(pid)
    await asyncio.sleep(4)
    after5 = rss_kib(pid), fd_count(pid)
    return before, samples, after1, after5, results, probe, ramp


# --- 4. concurrent sessions ---------------------------------------------------

def concurrent_sessions(api, host, port, admin, agent, n):
    env, _ = new_environment(api, admin, "bench-concurrent")
    sids = [
        api.ok("POST", "/v1/sessions", admin, {"agent": agent, "environment_id": env})["id"]
        for _ in range(n)
    ]
    barrier = threading.Barrier(n + 1)
    done = [None] * n  # per session: (t0, t1) or an error string
    lock = threading.Lock()

    def drive(i, sid):
        stream, conn = None, None
        try:
            stream = SseStream(host, port, sid, admin)
            conn = Api(host, port)
        except Exception as e:
            done[i] = f"setup: {e!r}"
            barrier.abort()
            return
        try:
            barrier.wait(TIMEOUT)
            t0 = time.perf_counter_ns()
            msg = {"events": [{"type": "user.message", "content": [{"type": "text", "text": f"session {i}"}]}]}
            status, sent, _ = conn.call("POST", f"/v1/sessions/{sid}/events", admin, msg)
            if status != 200:
                done[i] = f"send: HTTP {status}: {sent}"
                return
            eid = sent["data"][0]["id"]
            seen = False
            while True:
                t, kind, data = stream.next()
                if kind == "user.message" and data.get("id") == eid:
                    seen = True
                elif kind == "session.error":
                    done[i] = f"session.error {data}"
                    return
                elif seen and kind == "session.status_idle":
                    reason = (data.get("stop_reason") or {}).get("type")
                    if reason != "end_turn":
                        done[i] = f"idle with stop_reason {reason}"
                        return
                    with lock:
                        done[i] = (t0, t)
                    return
        except Exception as e:
            done[i] = f"{e!r}"
        finally:
            stream.close()
            conn.close()

    threads = [threading.Thread(target=drive, args=(i, s)) for i, s in enumerate(sids)]
    for t in threads:
        t.start()
    try:
        barrier.wait(TIMEOUT)
    except threading.BrokenBarrierError:
        pass
    go = time.perf_counter_ns()
    for t in threads:
        t.join(TIMEOUT * 2)
    errors = [(sids[i], d) for i, d in enumerate(done) if not isinstance(d, tuple)]
    finished = [d for d in done if isinstance(d, tuple)]
    wall = max((t1 for _, t1 in finished), default=go) - go
    # The record agrees: each session idle, its history ending in end_turn
    # after exactly one agent.message.
    for sid in sids:
        s = api.ok("GET", f"/v1/sessions/{sid}", admin)
        evs = api.ok("GET", f"/v1/sessions/{sid}/events?limit=1000", admin)["data"]
        kinds = [e["type"] for e in evs]
        last = evs[-1] if evs else {}
        if (
            s["status"] != "idle"
            or last.get("type") != "session.status_idle"
            or (last.get("stop_reason") or {}).get("type") != "end_turn"
            or kinds.count("agent.message") != 1
            or "session.error" in kinds
        ):
            errors.append((sid, f"record: status {s['status']}, events {kinds}"))
    return wall, [t1 - t0 for t0, t1 in finished], errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--model", required=True, help="the agent's model, scripted-<name>")
    ap.add_argument("--model-pid", type=int, help="the fake model's pid (for its CPU time)")
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--sends", type=int, default=300)
    ap.add_argument("--pollers", type=int, default=1000)
    ap.add_argument("--hold", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=100)
    a = ap.parse_args()
    u = urlsplit(a.url)
    host, port = u.hostname, u.port
    admin = open(a.token_file).read().strip()
    with open(f"/proc/{a.pid}/comm") as f:
        comm = f.read().strip()
    if comm != "sandstone":
        sys.exit(f"pid {a.pid} is {comm!r}, not the daemon")

    api = Api(host, port)
    cpu = Cpu(a.pid, a.model_pid)
    print("== baseline: the same client, one keep-alive connection")
    rss_start = rss_kib(a.pid)
    base_ns = baseline(api)
    base = ms(pct(base_ns, 50))
    row("GET /healthz (keep-alive)", base_ns)
    line("daemon RSS at start", mib(rss_start))

    agent = api.ok("POST", "/v1/agents", admin, {"name": "bench", "model": a.model})["id"]

    cpu.mark()
    work_queue(api, admin, agent, a.sessions, base)
    cpu.report()

    print(f"== 2. user.message sent -> its frame on an open SSE stream (one session, {a.sends} sends, 10 warm-up)")
    visible, posts, turns = event_latency(api, host, port, admin, agent, a.sends)
    row("send -> user.message frame on the stream", visible, base)
    row("  POST /events round trip (same sends)", posts, base)
    row("  send -> session.status_idle (whole turn)", turns)
    cpu.report()

    print(f"== 3. {a.pollers} idle long-pollers (block_ms=999, keep-alive, re-polling) for {a.hold} s, empty queue")
    env, key = new_environment(api, admin, "bench-idle")
    cpu.mark()
    before, samples, after1, after5, res, probe, ramp = asyncio.run(
        idle_pollers(host, port, env, key, a.pid, a.pollers, a.hold)
    )
    line("daemon RSS before (0 pollers)", f"{mib(before[0])}  fds {before[1]}")
    for i, (r, fds, inflight) in enumerate(samples):
        line(f"daemon RSS during, t+{i + 1}s", f"{mib(r)}  fds {fds}  polls in flight {inflight}")
    peak = max(r for r, _, _ in samples)
    line("daemon RSS during, peak", f"{mib(peak)}  (+{(peak - before[0]) / a.pollers:.1f} KiB a poller)")
    line("daemon RSS after (1 s / 5 s)", f"{mib(after1[0])} / {mib(after5[0])}  fds {after1[1]} / {after5[1]}")
    total = res["ok"] + res["bad"]
    line("polls answered 200 null / all answers", f"{res['ok']} / {total}  (connection errors {res['errors']})")
    line("connect ramp (all pollers connected in)", f"{ramp:.2f} s")
    if total:
        row("idle poll duration (block_ms=999)", res["durations"])
    stats = probe["stats"] or {}
    line("work/stats workers_polling during", f"{stats.get('workers_polling')} (expected {a.pollers})")
    if stats.get("workers_polling") != a.pollers:
        fail(f"workers_polling {stats.get('workers_polling')} with {a.pollers} pollers")
    if probe["healthz"]:
        row("GET /healthz while pollers wait (asyncio client)", probe["healthz"], base)
    if res["bad"] or res["errors"] or total == 0:
        fail(f"idle polls: {res['bad']} bad answers, {res['errors']} connection errors")
    cpu.report()

    print(f"== 4. {a.concurrent} sessions driven by the scripted model at once (one user.message each)")
    wall, per, errors = concurrent_sessions(api, host, port, admin, agent, a.concurrent)
    line("wall time, first send -> last session idle", f"{ms(wall):8.1f} ms")
    line("errors", f"{len(errors)}")
    for sid, e in errors[:5]:
        fail(f"session {sid}: {e}")
    if per:
        row("per-session send -> idle (end_turn)", per)
    cpu.report()

    print("== daemon")
    line("RSS at end", mib(rss_kib(a.pid)))
    line("keep-alive reconnects of the main client", f"{api.reconnects}")
    if api.reconnects:
        fail(f"the main client's keep-alive connection was reopened {api.reconnects} times")
    api.close()
    if failures:
        print(f"FAILED: {len(failures)} check(s)")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
